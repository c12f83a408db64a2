"""`loracle ask | compare`: one question through the engine, in one mode or in all four."""
from __future__ import annotations

import argparse
import json

from app.cliconfig import positive_int
from app.config import DEFAULT_ADAPTER, DEFAULT_INDEX, EngineConfig

AUTO = "auto"  # app.engine.AUTO (not imported here: `loracle --help` stays free of torch)


ENGINE_SKIP = ("adapters", "default_adapter", "k", "index", "passage_chars")  # per request, not per engine


def _common_arguments(p: argparse.ArgumentParser, rag_flag: bool) -> None:
    from app.cliconfig import add_arguments

    p.add_argument("question", help="the question, in quotes")
    p.add_argument("--adapter", default=None, help="adapter NAME, NAME@vN, folder, or 'auto' (routed per question)"
                   + ("" if rag_flag else f" (default: {DEFAULT_ADAPTER})"))
    if rag_flag:
        p.add_argument("--rag", action="store_true", help="retrieve passages and cite them")
    p.add_argument("--index", default=None, help=f"index for retrieval (default: the adapter card's, else "
                   f"{DEFAULT_INDEX})")
    p.add_argument("-k", type=positive_int, default=None, help="passages to retrieve (default: the adapter card's, else 3)")
    p.add_argument("--passage-chars", type=positive_int, default=None,
                   help="characters per passage (default: the adapter card's, else whole chunks)")
    p.add_argument("--decide", action=argparse.BooleanOptionalAction, default=None,
                   help="force a yes/no/maybe decision on (--decide) or off (--no-decide); default: detected "
                   "from the question's form")
    add_arguments(p, EngineConfig, skip=ENGINE_SKIP, unset_defaults=True)
    p.add_argument("--json", action="store_true", help="print the answer(s) as JSON for scripts")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="answer one question (adapter and retrieval switchable)")
    _common_arguments(p, rag_flag=True)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.set_defaults(func=_run_ask)
    p = sub.add_parser("compare", help="answer one question in all four modes (base, lora, rag, lora+rag)")
    _common_arguments(p, rag_flag=False)
    p.set_defaults(func=_run_compare)


def _engine_from(args, adapters: tuple[str, ...]):
    from app import registry
    from app.cliconfig import overrides
    from app.engine import Engine

    config = EngineConfig.from_env(**{**overrides(EngineConfig, args, skip=ENGINE_SKIP), "adapters": adapters})
    for spec in adapters:  # a typo or a missing version is reported before the base model loads
        registry.find(spec, config.adapters_dir)
    if args.index is not None and getattr(args, "rag", True):  # so is an index that is not there
        from ingest.index import Index
        from ingest.pipeline import SHIPPED_INDEXES

        if args.index not in SHIPPED_INDEXES:  # those are built on first use
            Index.open(args.index).close()
    return Engine(config)


def _request_options(args) -> dict:
    # a typed --max-new-tokens is this request's, so it wins over an adapter card's budget as -k and --index do
    return dict(k=args.k, index=args.index, passage_chars=args.passage_chars, decide=args.decide,
                max_new_tokens=getattr(args, "max_new_tokens", None), origin="cli")


def _answer_json(answer) -> dict:
    d = answer.to_dict()
    d["sources"] = [{"number": c.number, "doc_id": c.passage.doc_id, "location": c.passage.location}
                    for c in answer.citations if c.valid]
    d["invalid_citations"] = [c.number for c in answer.citations if not c.valid]
    return d


def _retrieval_part(answer) -> str:
    settings = answer.settings or {}
    where = f"index {settings['index']}, k={settings.get('k')}, " if settings.get("index") else ""
    return f" · retrieval ({where}{answer.timings.get('retrieval_s')} s)"


def _print_answer(answer, header: str | None = None, text: bool = True) -> None:
    t = answer.timings
    if header:
        print(f"== {header} ==")
    if answer.route:
        print(f"routed to: {answer.route['adapter'] or 'no adapter (out of scope)'} (score {answer.route['score']:.2f})")
    for note in answer.notes:
        print(f"note: {note}")
    d = answer.decision
    if d is not None:
        probs = " · ".join(f"{o} {p * 100:.0f}%" for o, p in d.probs.items()) if d.probs else "read from the text"
        print(f"decision: {d.label.upper()} ({probs}{'; calibrated: ' + d.calibration if d.calibration else ''})")
    if text:
        print(answer.text)
    print(f"[{answer.mode}{' · ' + answer.adapter if answer.adapter else ''} · {t.get('prompt_tokens')} prompt "
          f"tokens · {t.get('new_tokens')} new in {t.get('generation_s')} s ({t.get('tokens_per_s')} tok/s)"
          f"{_retrieval_part(answer) if answer.passages else ''}]")
    for c in answer.citations:
        if c.valid:
            loc = f", {c.passage.location}" if c.passage.location else ""
            print(f"  [{c.number}] {c.passage.doc_id}{loc}")
        else:
            print(f"  [{c.number}] flagged: no passage {c.number} was given to the model (not a source)")
    cited = {c.number for c in answer.citations if c.valid}
    unread = [f"[{i}] {p.doc_id}{', ' + p.location if p.location else ''}"
              for i, p in enumerate(answer.passages, 1) if i not in cited]
    if unread:
        print(f"  passages given{', not cited' if cited else ''}: {'; '.join(unread)}")


def _run_ask(args: argparse.Namespace) -> int:
    for flag, value in (("--index", args.index), ("-k", args.k), ("--passage-chars", args.passage_chars)):
        if value is not None and not args.rag:
            raise ValueError(f"{flag} {value} sets retrieval, which is off: add --rag, or drop {flag}")
    if args.stream and args.json:
        raise ValueError("--stream and --json do not go together: --json prints one object when the answer is done; "
                         "drop one of them")
    engine = _engine_from(args, (args.adapter,) if args.adapter and args.adapter != AUTO else ())
    kw = dict(adapter=args.adapter, retrieval=args.rag, **_request_options(args))
    if args.rag and args.index is None:
        engine.build_card_index(args.adapter)
    if args.stream:
        for item in engine.stream(args.question, **kw):
            if isinstance(item, str):
                print(item, end="", flush=True)
            else:
                print()
                _print_answer(item, text=False)
        return 0
    answer = engine.answer(args.question, **kw)
    if args.json:
        print(json.dumps(_answer_json(answer), indent=2, default=str))
    else:
        _print_answer(answer)
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    engine = _engine_from(args, () if args.adapter == AUTO else (args.adapter or DEFAULT_ADAPTER,))
    if args.index is None:
        engine.build_card_index(args.adapter or DEFAULT_ADAPTER)
    answers = engine.compare(args.question, adapter=args.adapter, **_request_options(args))
    if args.json:
        print(json.dumps({m: _answer_json(a) for m, a in answers.items()}, indent=2, default=str))
    else:
        for mode, answer in answers.items():
            _print_answer(answer, header=mode)
    return 0
