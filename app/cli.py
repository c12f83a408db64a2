"""`loracle` command line. Thin: every behaviour lives in a module that tests call directly.

Each command group is registered by its own function below; heavy imports happen inside handlers.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")


# --- ingest / index / search commands (owner: ingestion) -------------------------------------
def _ingest_commands(sub: argparse._SubParsersAction) -> None:
    from ingest.config import DEFAULT_EMBEDDER, ChunkConfig

    d = ChunkConfig()
    p = sub.add_parser("ingest", help="add files, folders or a JSONL corpus to an index (incremental)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (pdf, docx, html, md, txt, xml) "
                   "or a .jsonl corpus of {doc_id, text} records")
    p.add_argument("--index", default="pubmedqa", help="index name under indexes/ or a folder (default: pubmedqa)")
    p.add_argument("--remove", action="append", default=[], metavar="DOC", help="remove a document id (repeatable)")
    p.add_argument("--chunk-size", type=int, default=None, help=f"chunk size (default {d.size}; new index only "
                   "unless given, then unchanged files are re-chunked)")
    p.add_argument("--chunk-overlap", type=int, default=None, help=f"chunk overlap (default {d.overlap})")
    p.add_argument("--chunk-unit", choices=("char", "token"), default=None, help=f"chunk size unit (default {d.unit})")
    p.add_argument("--embedder", default=None, help=f"sentence-transformers folder or id (default {DEFAULT_EMBEDDER}; "
                   "must match the index's)")
    p.add_argument("--index-type", choices=("flat", "hnsw"), default="flat", help="FAISS index for a NEW index: "
                   "flat (exact; default) or hnsw (approximate, for 100k+ chunks; see benchmarks/search.py)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run_ingest)

    p = sub.add_parser("index", help="list, show or remove indexes")
    isub = p.add_subparsers(dest="index_command", required=True)
    q = isub.add_parser("list", help="list indexes with their counts")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_run_index)
    for cmd, help_ in (("show", "show an index's manifest and documents"), ("remove", "delete a whole index")):
        q = isub.add_parser(cmd, help=help_)
        q.add_argument("name", help="index name or folder")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=_run_index)

    p = sub.add_parser("search", help="retrieve passages for a question (or a JSONL file of questions)")
    p.add_argument("query", nargs="?", help="the question, in quotes")
    p.add_argument("--index", default="pubmedqa", help="index name or folder (default: pubmedqa)")
    p.add_argument("-k", type=int, default=5, help="passages (or, with --queries, documents) to return")
    p.add_argument("--hybrid", action="store_true", help="dense + BM25, fused by reciprocal rank fusion")
    p.add_argument("--reranker", default=None, help="local cross-encoder folder to rerank candidates")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--queries", default=None, metavar="FILE.jsonl", help="QA JSONL ({id, question, "
                   "context_doc_id?}); writes one JSON line per question and prints recall@k when gold ids exist")
    p.add_argument("--out", default=None, metavar="FILE", help="with --queries: write the lines here (default stdout)")
    p.set_defaults(func=_run_search)


def _run_ingest(args) -> int:
    import json

    from tqdm import tqdm

    from ingest.config import ChunkConfig, IngestConfig
    from ingest.index import index_path
    from ingest.pipeline import ingest_paths

    if not args.paths and not args.remove:
        raise ValueError("nothing to do: give files/folders to add, or --remove DOC")
    config = None
    if any(v is not None for v in (args.chunk_size, args.chunk_overlap, args.chunk_unit, args.embedder)):
        from ingest.config import DEFAULT_EMBEDDER
        from ingest.index import Index

        existing = index_path(args.index) / "manifest.json"
        base = Index.open(args.index) if existing.is_file() else None
        chunk = base.chunk_config if base else ChunkConfig()
        config = IngestConfig(
            embedder=args.embedder or (base.embedder if base else DEFAULT_EMBEDDER),
            chunk=ChunkConfig(size=args.chunk_size or chunk.size,
                              overlap=chunk.overlap if args.chunk_overlap is None else args.chunk_overlap,
                              unit=args.chunk_unit or chunk.unit))
        if base:
            base.close()
    if args.index_type != "flat" and not (index_path(args.index) / "manifest.json").is_file():
        from ingest.config import DEFAULT_EMBEDDER
        from ingest.index import Index

        Index.create(args.index, embedder=config.embedder if config else DEFAULT_EMBEDDER,
                     chunk=config.chunk if config else ChunkConfig(), index_type=args.index_type).close()
    bar = tqdm(total=0, unit="doc", desc=f"ingest -> {args.index}", disable=args.json or not args.paths)

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(name[-40:], refresh=True)

    try:
        report = ingest_paths(args.paths, index=args.index, config=config, progress=progress, remove=args.remove)
    finally:
        bar.close()
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(report), indent=1))
    else:
        print(f"index {report.index}: added {len(report.added)} ({len(report.replaced)} replaced, "
              f"{report.chunks_added} chunks), skipped {len(report.skipped)} unchanged, "
              f"removed {len(report.removed)}, rejected {len(report.rejected)}")
        for path, reason in report.rejected:
            print(f"  rejected {path}: {reason}")
    return 0 if report.added or report.removed or report.skipped or not report.rejected else 1


def _run_index(args) -> int:
    import json

    from ingest.index import Index, index_path, list_indexes, remove_index

    if args.index_command == "list":
        rows = []
        for name in list_indexes():
            m = json.loads((index_path(name) / "manifest.json").read_text())
            rows.append({"name": name, **m["counts"], "embedder": m["embedder"]["name"], "updated": m["updated"]})
        if args.json:
            print(json.dumps(rows, indent=1))
        for r in [] if args.json else rows:
            print(f"{r['name']:<24} {r['documents']:>6} docs {r['chunks']:>7} chunks  {r['embedder']}  {r['updated'][:19]}")
        if not rows and not args.json:
            print("no indexes yet: `loracle ingest PATH --index NAME`")
    elif args.index_command == "show":
        ix = Index.open(args.name)
        try:
            m, docs = ix.manifest, ix.documents()
        finally:
            ix.close()
        if args.json:
            print(json.dumps({**{k: v for k, v in m.items() if k != "documents"}, "documents": docs}, indent=1))
            return 0
        print(f"index {ix.path}\n  embedder {m['embedder']['name']} (dim {m['embedder']['dim']}), {m['index_type']} "
              f"FAISS, chunks {m['chunker']['size']}/{m['chunker']['overlap']} {m['chunker']['unit']}\n"
              f"  {m['counts']['documents']} documents, {m['counts']['chunks']} chunks, updated {m['updated'][:19]}")
        for d in docs:
            print(f"  {d['doc_id']:<32} {d['chunks']:>4} chunks  {d['format']:<5} {d['title'][:40]}  {d['source']}")
    else:
        path = remove_index(args.name)
        print(json.dumps({"removed": str(path)}) if args.json else f"removed index {path}")
    return 0


def _run_search(args) -> int:
    import json

    from app.retrieve import get_retriever, rank_documents, recall_at

    retriever = get_retriever(args.index, hybrid=args.hybrid, reranker=args.reranker)
    if args.queries:
        items = [json.loads(line) for line in open(args.queries, encoding="utf-8") if line.strip()]
        if any("question" not in it for it in items):
            raise ValueError(f"{args.queries}: every line needs a 'question' field (QA JSONL format)")
        results = retriever.search_many([it["question"] for it in items], k=3 * args.k)
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
        rows = []
        try:
            for it, ps in zip(items, results):
                docs = rank_documents(ps)[:args.k]
                row = {"id": it.get("id"), "question": it["question"], "context_doc_id": it.get("context_doc_id"),
                       "doc_ids": [d for d, _ in docs], "scores": [round(s, 5) for _, s in docs],
                       "chunk_ids": [p.chunk.chunk_id for p in ps[:args.k]]}
                rows.append(row)
                out.write(json.dumps(row) + "\n")
        finally:
            if args.out:
                out.close()
        gold = [r for r in rows if r["context_doc_id"]]
        if gold:
            ks = [k for k in (1, 5, 10) if k <= args.k]
            summary = recall_at([r["doc_ids"] for r in gold], [r["context_doc_id"] for r in gold], ks)
            print(f"{len(gold)} questions, {'hybrid' if args.hybrid else 'dense'}: "
                  + "  ".join(f"recall@{k}={v:.3f}" for k, v in summary.items()), file=sys.stderr)
        return 0
    if not args.query:
        raise ValueError("give a question, or --queries FILE.jsonl")
    passages = retriever.search(args.query, k=args.k)
    if args.json:
        print(json.dumps([{"rank": p.rank, "score": round(p.score, 5), "doc_id": p.doc_id, "location": p.location,
                           "title": p.chunk.metadata.get("title"), "source": p.chunk.metadata.get("source"),
                           "chunk_id": p.chunk.chunk_id, "text": p.chunk.text} for p in passages], indent=1))
        return 0
    for p in passages:
        where = ", ".join(x for x in (p.chunk.metadata.get("title"), p.location) if x)
        print(f"[{p.rank}] {p.score:.3f}  {p.doc_id}  ({where})  {p.chunk.metadata.get('source')}")
        print("    " + " ".join(p.chunk.text.split())[:300])
    return 0


# --- ask / compare / adapters / train commands (owner: engine) -------------------------------
def _engine_commands(sub: argparse._SubParsersAction) -> None:
    def common(p, rag_flag: bool):
        p.add_argument("question", help="the question, in quotes")
        p.add_argument("--adapter", default=None, help="adapter NAME, NAME@vN or folder"
                       + ("" if rag_flag else " (default: medical-pubmedqa)"))
        if rag_flag:
            p.add_argument("--rag", action="store_true", help="retrieve passages and cite them")
        p.add_argument("--index", default=None, help="index name or folder for retrieval (default: pubmedqa)")
        p.add_argument("-k", type=int, default=None, help="passages to retrieve (default 3, as the shipped adapter was trained)")
        p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default 128)")
        p.add_argument("--base-model", default=None, help="base model spec: smollm2-135m-instruct (default), "
                       "gemma3-270m, a local model folder or a hub id")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        p.add_argument("--json", action="store_true", help="print the answer(s) as JSON for scripts")

    p = sub.add_parser("ask", help="answer one question (adapter and retrieval switchable)")
    common(p, rag_flag=True)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.set_defaults(func=_run_ask)
    p = sub.add_parser("compare", help="answer one question in all four modes (base, lora, rag, lora+rag)")
    common(p, rag_flag=False)
    p.set_defaults(func=_run_compare)

    p = sub.add_parser("adapters", help="list, show or remove adapters in the registry")
    asub = p.add_subparsers(dest="adapters_command", required=True)
    for cmd, help_ in (("list", "list installed adapters"), ("show", "show an adapter's card"),
                       ("remove", "delete an adapter and all its versions")):
        q = asub.add_parser(cmd, help=help_)
        if cmd != "list":
            q.add_argument("name")
        if cmd == "remove":
            q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        q.add_argument("--root", default=None, help="registry folder (default: adapters/, env LORACLE_ADAPTERS)")
        q.add_argument("--json", action="store_true", help="JSON output")
        q.set_defaults(func=_run_adapters)

    # --- `loracle train` (owner: training) registers below this line --------------------------


def _engine_from(args, adapters: tuple[str, ...]):
    from app.config import EngineConfig
    from app.engine import Engine

    kw = {k: v for k, v in (("base_model", args.base_model), ("threads", args.threads),
                            ("max_new_tokens", args.max_new_tokens)) if v is not None}
    return Engine(EngineConfig(adapters=adapters, **kw))


def _answer_json(answer) -> dict:
    d = answer.to_dict()
    d["sources"] = [{"number": c.number, "doc_id": c.passage.doc_id, "location": c.passage.location}
                    for c in answer.citations if c.valid]
    d["invalid_citations"] = [c.number for c in answer.citations if not c.valid]
    return d


def _print_answer(answer, header: str | None = None, text: bool = True) -> None:
    t = answer.timings
    if header:
        print(f"== {header} ==")
    if text:
        print(answer.text)
    print(f"[{answer.mode}{' · ' + answer.adapter if answer.adapter else ''} · {t.get('prompt_tokens')} prompt "
          f"tokens · {t.get('new_tokens')} new in {t.get('generation_s')} s ({t.get('tokens_per_s')} tok/s)"
          f"{' · retrieval ' + str(t.get('retrieval_s')) + ' s' if answer.passages else ''}]")
    for c in answer.citations:
        if c.valid:
            loc = f", {c.passage.location}" if c.passage.location else ""
            print(f"  [{c.number}] {c.passage.doc_id}{loc}")
        else:
            print(f"  [{c.number}] flagged: no passage {c.number} was given to the model (not a source)")


def _run_ask(args: argparse.Namespace) -> int:
    import json

    engine = _engine_from(args, (args.adapter,) if args.adapter else ())
    kw = dict(adapter=args.adapter, retrieval=args.rag, k=args.k, index=args.index,
              max_new_tokens=args.max_new_tokens)
    if args.stream and not args.json:
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
    import json

    from app.config import DEFAULT_ADAPTER

    engine = _engine_from(args, (args.adapter or DEFAULT_ADAPTER,))
    answers = engine.compare(args.question, adapter=args.adapter, index=args.index, k=args.k,
                             max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({m: _answer_json(a) for m, a in answers.items()}, indent=2, default=str))
    else:
        for mode, answer in answers.items():
            _print_answer(answer, header=mode)
    return 0


def _run_adapters(args: argparse.Namespace) -> int:
    import json

    from app import registry

    if args.adapters_command == "list":
        good, bad = registry.scan(args.root)
        if args.json:
            print(json.dumps({"adapters": [{"name": a.name, "version": a.version, "base_model": a.base_model,
                                            "path": str(a.path)} for a in good],
                              "invalid": [{"path": str(p), "reason": r} for p, r in bad]}, indent=2))
            return 0
        if not good and not bad:
            print(f"no adapters in {registry.root_dir(args.root)}; train one with `loracle train`")
        for a in good:
            evals = a.card.get("evals", {}).get(f"v{a.version}", {})
            score = " ".join(f"{m}={v.get('accuracy')}" for m, v in evals.items()
                             if isinstance(v, dict) and "accuracy" in v)
            print(f"{a.label:32} base {a.base_model:40} {score}")
        for p, r in bad:
            print(f"INVALID {p.name}: {r}", file=sys.stderr)
        return 0
    if args.adapters_command == "show":
        info = registry.get(args.name, args.root)
        lineage = [v.label for v in registry.versions(args.name, args.root)]
        if args.json:
            print(json.dumps({"path": str(info.path), "lineage": lineage, "card": info.card}, indent=2))
        else:
            print(f"path: {info.path}\nlineage: {' -> '.join(lineage)}\n")
            print(registry.render_readme(info.card or {"name": info.name, "version": info.version}))
        return 0
    info = registry.get(args.name, args.root)
    if not args.yes and sys.stdin.isatty():
        if input(f"delete {info.path} and its {info.version} version(s)? [y/N] ").strip().lower() != "y":
            print("kept")
            return 1
    print(f"removed {registry.remove(args.name, args.root)}")
    return 0


# --- train command (owner: training) ------------------------------------------------------------
def _train_command(sub: argparse._SubParsersAction) -> None:
    from app.train import add_arguments

    p = sub.add_parser("train", help="train a LoRA adapter on a QA JSONL file and install it in the registry")
    add_arguments(p)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from app.train import config_from_args, train

    info = train(config_from_args(args))
    card = info.card
    val = card.get("val_loss_curve") or [[0, float("nan")]]
    print(f"installed {info.label} at {info.path}\ntrain loss {card['loss_curve'][-1][1]:.3f}, "
          f"val loss {val[-1][1]:.3f}, {card['training_time_s']:.0f} s")
    return 0


# --- eval commands (owner: evaluation) --------------------------------------------------------
def _eval_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a question set in the four modes; write results, metrics, charts",
        description="Run every question of a QA JSONL file in every mode (batched across modes) and write "
        "results.jsonl, summary.json, summary.md and PNG charts into --out. With --compare A B, report "
        "which questions got worse/better from A to B; A and B are results folders or adapters "
        "(NAME, NAME@vN or a folder) evaluated now on --data.")
    p.add_argument("--data", help="QA JSONL file (id, question, optional context_doc_id, final_decision, "
                   "long_answer)")
    p.add_argument("--modes", default=None, help="comma-separated modes (default: base,lora,rag,lora+rag; "
                   "lora,lora+rag when --compare evaluates adapters)")
    p.add_argument("--adapter", default=None, help="adapter NAME, NAME@vN or folder (default: medical-pubmedqa)")
    p.add_argument("--index", default=None, help="index name or folder for rag modes (default: pubmedqa)")
    p.add_argument("-k", type=int, default=3, help="passages retrieved per question (default 3)")
    p.add_argument("--out", default=None, help="output folder (default runs/eval-<UTC time>)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    p.add_argument("--max-new-tokens", type=int, default=48, help="generation budget per answer (default 48)")
    p.add_argument("--questions-per-batch", type=int, default=1,
                   help="questions per generate() batch, each in all its modes (default 1)")
    p.add_argument("--split-by-retrieval", action=argparse.BooleanOptionalAction, default=True,
                   help="send the rows with passages as a batch of their own: less padding, faster on CPU, "
                   "per-mode latency (default on)")
    p.add_argument("--base-model", default=None, help="base model spec (default smollm2-135m-instruct)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--save-to-card", action="store_true",
                   help="store the summary in the adapter's card.json under its version")
    p.add_argument("--judge", nargs="?", const="default", default=None, metavar="MODEL",
                   help="score faithfulness of rag answers with a local judge model (default: the base model)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="regression report of B against A (results folders or adapters)")
    p.add_argument("--resume", action="store_true",
                   help="keep the modes already complete in --out and run only the missing ones")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.evaluate import EvalConfig, run_compare, run_eval
    from app.types import MODES

    compare_runs = args.compare and not all((Path(s) / "results.jsonl").is_file() for s in args.compare)
    if not args.data and (not args.compare or compare_runs):
        raise ValueError("--data FILE.jsonl is required (unless --compare names two results folders)")
    modes = args.modes.split(",") if args.modes else (["lora", "lora+rag"] if compare_runs else list(MODES))
    cfg = EvalConfig(data=args.data, modes=tuple(modes), adapter=args.adapter, index=args.index, k=args.k,
                     out=args.out, limit=args.limit, max_new_tokens=args.max_new_tokens,
                     questions_per_batch=args.questions_per_batch,
                     split_by_retrieval=args.split_by_retrieval, base_model=args.base_model,
                     judge=args.judge, save_to_card=args.save_to_card, resume=args.resume,
                     n_resamples=args.resamples,
                     seed=args.seed, threads=args.threads)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        from tqdm import tqdm

        if bar is None or bar.total != total or done < bar.n:
            bar = tqdm(total=total, unit="answer", desc="eval", file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    if args.compare:
        report = run_compare(cfg, args.compare[0], args.compare[1], progress=progress)
        print(report["markdown"])
        print(f"written: {report['out']}/compare.md, compare.json")
        return 0
    result = run_eval(cfg, progress=progress)
    from app.eval_report import summary_markdown

    print(summary_markdown(result.summary))
    print(f"written: {', '.join(result.extra['written'])}")
    if result.extra.get("card"):
        print(f"stored in the card of {result.extra['card']}")
    return 0


# --- ui command (owner: UI) ---------------------------------------------------------------------
def _ui_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="start the web UI (Streamlit) and print its local URL")
    p.add_argument("--port", type=int, default=8501, help="port to listen on (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--index", default=None, help="index preselected for retrieval (default: pubmedqa)")
    p.add_argument("--no-build", action="store_true", help="do not build the default index when it is missing")
    p.set_defaults(func=_run_ui)


def _run_ui(args: argparse.Namespace) -> int:
    from pathlib import Path

    if not args.no_build:
        try:
            from ingest.pipeline import ensure_default_index
        except ImportError:
            ensure_default_index = None
        if ensure_default_index is not None:
            print("checking the default index (built once from data/pubmedqa when missing)...", flush=True)
            ensure_default_index()
    env = dict(os.environ)
    if args.index:
        env["LORACLE_INDEX"] = args.index
    home = Path(__file__).resolve().parent / "ui" / "Home.py"
    from ingest.safety import SafetyLimits

    upload_mb = max(1, -(-SafetyLimits.from_env().max_file_bytes // (1024 * 1024)))  # the ingest size limit, rounded up
    cmd = [sys.executable, "-m", "streamlit", "run", str(home), "--server.headless=true",
           f"--server.port={args.port}", f"--server.address={args.host}", f"--server.maxUploadSize={upload_mb}",
           "--browser.gatherUsageStats=false", "--client.toolbarMode=viewer"]
    shown = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    print(f"Loracle UI: http://{shown}:{args.port}  (Ctrl+C to stop)", flush=True)
    os.execve(sys.executable, cmd, env)  # streamlit takes over this process: signals reach it directly
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loracle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _ingest_commands(sub)
    _engine_commands(sub)
    _train_command(sub)
    _eval_commands(sub)
    _ui_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
