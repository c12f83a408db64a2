"""Question set x modes -> per-question results, metrics, Markdown table and charts.

    items = load_questions("dev.jsonl")
    result = evaluate(engine, items, MODES, adapter="medical-pubmedqa", index="pubmedqa")
    write_results(result, "runs/dev")   # results.jsonl, summary.json, summary.md, *.png

Decisions are scored (option log-likelihoods, app.decision) by default; `decisions="both"` also runs free
generation and reads the decision from its text, so both accuracies sit side by side. Each row keeps the
raw option log-probs, so the summary reports every mode with and without its calibration offsets. The
optional `fewshot` mode is the base model with N labelled examples from another set in the prompt.

Questions run in all their modes through `engine.answer_batch` (mixed-adapter batches; the rows with
passages in a batch of their own by default). Metrics live in app.metrics, tables and charts in
app.eval_report, the optional faithfulness judge in app.judge. `loracle eval` is a thin wrapper
around `run_eval` / `run_compare`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from app import metrics
from app.eval_report import CHARTS, compare_markdown, plot_summary, summary_markdown
from app.models import sha256_file
from app.config import EvalConfig
from app.prompts import parse_decision
from app.questions import QAItem, few_shot_examples, load_questions
from app.types import MODES
from app.verdict import verdict

FEWSHOT = "fewshot"  # evaluation-only mode: the base model with N labelled examples in the prompt
TOP1 = "top1"  # evaluation-only baseline: the top retrieved passage itself as the answer (no generation)
EVAL_MODES = (*MODES, FEWSHOT, TOP1)

RESULTS_FILE, SUMMARY_JSON, SUMMARY_MD = "results.jsonl", "summary.json", "summary.md"


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]  # one per (question, mode); fields documented in `_row`
    summary: dict[str, Any]  # run settings + metrics per mode + bootstrap differences
    extra: dict[str, Any] = field(default_factory=dict)


def parse_modes(text: str | Sequence[str]) -> list[str]:
    modes = [m.strip() for m in text.split(",")] if isinstance(text, str) else list(text)
    bad = [m for m in modes if m not in EVAL_MODES]
    if bad or not modes:
        raise ValueError(f"unknown mode(s) {', '.join(bad) or '(none)'}; choose from {', '.join(EVAL_MODES)}")
    return list(dict.fromkeys(modes))


def _row(item: QAItem, mode: str, answer, free=None) -> dict[str, Any]:
    """One result row. `decision` is what the answer gave (scored, or parsed in free mode);
    `uncalibrated_decision` the argmax of the raw option scores; `parsed_decision` what free generation's
    text says (from the free run when there is one)."""
    d = answer.decision
    k = (answer.settings or {}).get("k")
    retrieved = [p.doc_id for p in answer.passages]
    timings = {key: v for key, v in (answer.timings or {}).items() if isinstance(v, (int, float))}
    # the wait for this answer: its retrieval plus the generate() call of its batch (shared by the batch)
    latency = float(timings.get("total_s", timings.get("retrieval_s", 0.0) + timings.get("generation_s", 0.0)))
    scored = d is not None and d.source == "scored"
    uncal = max(d.logprobs, key=d.logprobs.get) if scored and d.logprobs else (d.label if d else None)
    parsed = parse_decision(free.text) if free is not None else (None if scored else (d.label if d else None))
    gold = item.final_decision
    return {
        "id": item.id,
        "question": item.question,
        "mode": mode,
        "mode_used": answer.mode,  # differs from `mode` only if the engine could not honour the request
        "adapter": answer.adapter,
        "answer": answer.text,
        "free_answer": free.text if free is not None else None,
        "decision": d.label if d else None,
        "decision_source": d.source if d else None,
        "probs": d.probs if scored else None,
        "logprobs": d.logprobs if scored else None,
        "offsets": d.offsets if scored else None,
        "calibration": d.calibration if d else None,
        "uncalibrated_decision": uncal,
        "parsed_decision": parsed,
        "gold": gold,
        "correct": (d is not None and d.label == gold) if gold else None,
        "rouge_l": round(float(metrics.rouge_l([answer.text], [item.long_answer])[0]), 4)
        if item.long_answer else None,
        "context_doc_id": item.context_doc_id,
        "k": k,
        "index": (answer.settings or {}).get("index") if answer.passages or mode.endswith("rag") else None,
        "passage_chars": (answer.settings or {}).get("passage_chars"),
        "retrieved_doc_ids": retrieved,
        "retrieved_chunk_ids": [p.chunk.chunk_id for p in answer.passages],
        "retrieval_hit": (metrics.recall_at_k(retrieved, item.context_doc_id, k)
                          if item.context_doc_id and mode.endswith("rag") and k else None),
        "cited": [c.number for c in answer.citations],
        "cited_passage_ids": [c.passage.chunk.chunk_id for c in answer.citations if c.valid and c.passage],
        "citations_valid": all(c.valid for c in answer.citations),
        "faithfulness": None,
        "timings": timings,
        "latency_s": latency,
    }


@dataclass
class _Plan:
    """How each mode of one evaluation turns into engine requests."""

    adapter: Any = None
    index: str | None = None
    k: int | None = None
    passage_chars: int | None = None
    decisions: str = "scored"
    calibrate: bool = True
    shots: list[tuple[str, str]] | None = None

    def request(self, item: QAItem, mode: str, scored: bool):
        from app.engine import Request

        return Request(item.question, adapter=self.adapter if mode.startswith("lora") else None,
                       retrieval=mode.endswith("rag"), k=self.k, index=self.index, passage_chars=self.passage_chars,
                       decide=True if item.final_decision else None, scored=scored, calibrate=self.calibrate,
                       examples=self.shots if mode == FEWSHOT else None, origin="eval")


def _run_batch(engine, plan: _Plan, pairs, split_by_retrieval: bool, max_new_tokens, scored: bool) -> dict:
    groups = ([[p for p in pairs if not p[1].endswith("rag") and p[1] != FEWSHOT],
               [p for p in pairs if p[1].endswith("rag")], [p for p in pairs if p[1] == FEWSHOT]]
              if split_by_retrieval else [pairs])
    answers = []
    for group in (g for g in groups if g):
        reqs = [plan.request(item, mode, scored) for item, mode in group]
        for r in reqs:
            r.max_new_tokens = max_new_tokens
        answers += engine.answer_batch(reqs)
    return {(it.id, m): ans for (it, m), ans in zip((p for g in groups for p in g), answers, strict=True)}


def _top1(items, modes, done) -> dict:
    """The top1 baseline's answers: the first passage of the question's lora+rag (else rag) answer, as is."""
    from dataclasses import replace

    source = "lora+rag" if "lora+rag" in modes else "rag"
    out = {}
    for item in items:
        ans = done[(item.id, source)]
        top = ans.passages[:1]
        out[(item.id, TOP1)] = replace(ans, text=top[0].chunk.text if top else "", mode=TOP1, passages=top,
                                       citations=[], decision=None, notes=[],
                                       timings={"retrieval_s": ans.timings.get("retrieval_s", 0.0)})
    return out


def evaluate(engine, items: Sequence[QAItem], modes: Sequence[str] = MODES, adapter: str | None = None,
             index: str | None = None, k: int | None = None, progress: Callable[[int, int], None] | None = None, *,
             max_new_tokens: int | None = None, questions_per_batch: int = 1, split_by_retrieval: bool = True,
             judge=None, n_resamples: int = 1000, seed: int = 0, data_path: str | None = None,
             decisions: str = "scored", calibrate: bool = True, passage_chars: int | None = None,
             few_shot: list[tuple[str, str]] | None = None) -> EvalResult:
    """Run every item in every mode through `engine.answer_batch`; `progress(done, total)` after each batch.

    A batch holds `questions_per_batch` questions in all their modes (adapter rows mixed by PEFT). With
    `split_by_retrieval` (default), the rows with passages go in a batch of their own, so short prompts are
    not left-padded to the length of prompts with passages: prefill dominates on CPU, and this was ~35%
    faster for base+rag on the 2-core box. Latency per mode then reflects that mode's own prompts.
    `decisions`: "scored", "free" or "both" (free generation run too, for the parsed-from-text accuracy).
    """
    modes = parse_modes(modes)
    if decisions not in ("scored", "free", "both"):
        raise ValueError(f"decisions={decisions!r}: choose scored, free or both")
    if TOP1 in modes and not any(m.endswith("rag") for m in modes):
        raise ValueError("the top1 baseline reuses a rag mode's retrieval: add rag or lora+rag to the modes")
    if FEWSHOT in modes and not few_shot:
        raise ValueError("the fewshot mode needs examples: pass --few-shot N --few-shot-data FILE")
    if any(m.startswith("lora") for m in modes):
        adapter = adapter or getattr(getattr(engine, "config", None), "default_adapter", None)
        if not adapter:
            raise ValueError("modes lora and lora+rag need an adapter; pass --adapter NAME")
        adapter = engine.load_adapter(adapter)
    plan = _Plan(adapter, index, k, passage_chars, decisions, calibrate, few_shot)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    total = len(items) * len(modes)
    for lo in range(0, len(items), max(1, questions_per_batch)):
        chunk = items[lo:lo + max(1, questions_per_batch)]
        pairs = [(item, mode) for item in chunk for mode in modes if mode != TOP1]
        done = _run_batch(engine, plan, pairs, split_by_retrieval, max_new_tokens, decisions != "free")
        free = _run_batch(engine, plan, pairs, split_by_retrieval, max_new_tokens, False) \
            if decisions == "both" else {}
        if TOP1 in modes:
            done.update(_top1(chunk, modes, done))
            pairs = [(item, mode) for item in chunk for mode in modes]
        batch_rows = [_row(item, mode, done[(item.id, mode)], free.get((item.id, mode))) for item, mode in pairs]
        if judge is not None:  # the top1 baseline is its own passage: nothing to judge
            judged = [(row, it, m) for row, (it, m) in zip(batch_rows, pairs) if m != TOP1]
            scores = judge.score_many([(done[(it.id, m)].text, done[(it.id, m)].passages) for _, it, m in judged])
            for (row, _, _), score in zip(judged, scores):
                row["faithfulness"] = score
        rows.extend(batch_rows)
        if progress:
            progress(len(rows), total)
    settings = _run_settings(engine, rows, modes, k, judge, data_path, time.perf_counter() - start,
                             max_new_tokens=max_new_tokens, decisions=decisions, calibrate=calibrate,
                             few_shot=len(few_shot or []), questions_per_batch=questions_per_batch,
                             split_by_retrieval=split_by_retrieval, n_resamples=n_resamples, seed=seed,
                             adapter=getattr(adapter, "label", adapter))
    return EvalResult(rows, summarize(rows, settings))


def _run_settings(engine, rows, modes, k, judge, data_path, wall_s: float, adapter=None, **recorded) -> dict:
    """The settings an evaluation records in its summary (what ran, on what, with which k per mode)."""
    info = getattr(engine, "info", None)
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": str(data_path) if data_path else None,
        "data_sha256": sha256_file(Path(data_path)) if data_path and Path(data_path).is_file() else None,
        "n_items": len({r["id"] for r in rows}),
        "modes": modes,
        "adapter": next((r["adapter"] for r in rows if r["adapter"]), adapter),
        **_retrieval_settings(rows, modes, k),
        **recorded,
        "base_model": getattr(info, "name", None),
        "judge": getattr(judge, "name", None),
        "wall_s": round(wall_s, 2),
        "warnings": gold_warnings(rows, engine),
    }


def gold_warnings(rows: list[dict], engine=None) -> list[str]:
    """A rag mode whose index holds none of the set's gold documents measures the wrong index, not retrieval:
    say so (e.g. MedQuAD questions run against the PubMedQA index while `medquad` is not built). The index is
    read through the process's retriever cache, as the engine searched it, so it is already open after the run."""
    from app.retrieve import get_retriever
    from ingest.folders import index_path

    out = []
    for name in sorted({r["index"] for r in rows if r.get("index") and r["mode"].endswith("rag")}):
        modes = sorted({r["mode"] for r in rows if r.get("index") == name})
        gold = {r["context_doc_id"] for r in rows if r.get("index") == name and r.get("context_doc_id")}
        try:
            built = (index_path(name) / "manifest.json").is_file()
        except ValueError:
            continue
        if not built:
            out.append(f"index '{name}' is not built, so {', '.join(modes)} answered without passages; build it "
                       f"(`loracle ingest FILES --index {name}`) and evaluate again")
            continue
        if not gold:
            continue
        try:  # a warning must never sink a finished evaluation
            hybrid = getattr(getattr(engine, "config", None), "hybrid", False)
            found = gold & set(get_retriever(name, hybrid=hybrid).index.fingerprints())
        except Exception:
            continue
        if not found:
            out.append(f"index '{name}' ({', '.join(modes)}) holds none of this set's {len(gold)} gold documents: "
                       f"its retrieval recall and answers measure the wrong index. Evaluate with the index built "
                       f"from this set's documents (--index NAME; the Evaluate page's index menu)")
    return out


def _retrieval_settings(rows: list[dict], modes: Sequence[str], k: int | None = None) -> dict[str, Any]:
    """The index, k and passage length each rag mode's rows used (read back from the rows, so a resumed run's
    kept modes keep theirs)."""
    rag_ks = sorted({r["k"] for r in rows if r["mode"].endswith("rag") and r.get("k")})
    return {
        "index": next((r["index"] for r in rows if r["mode"].endswith("rag")), None),
        "index_by_mode": {m: next((r["index"] for r in rows if r["mode"] == m and r.get("index")), None)
                          for m in modes if m.endswith("rag")},
        "k": rag_ks[0] if len(rag_ks) == 1 else (k or (rag_ks[-1] if rag_ks else None)),
        "k_by_mode": {m: next((r["k"] for r in rows if r["mode"] == m and r.get("k")), None) for m in modes
                      if m.endswith("rag")},
        "passage_chars_by_mode": {m: next((r["passage_chars"] for r in rows if r["mode"] == m), None)
                                  for m in modes if m.endswith("rag")},
    }


def summarize(rows: list[dict], settings: dict[str, Any]) -> dict[str, Any]:
    """Settings + per-mode metrics + paired bootstrap differences (recomputable from results.jsonl)."""
    k, n, seed = settings.get("k", 5), settings.get("n_resamples", 1000), settings.get("seed", 0)
    modes = settings.get("modes") or list(dict.fromkeys(r["mode"] for r in rows))
    own_k = settings.get("k_by_mode") or {}  # recall@k at the k each mode really used
    per_mode = {m: metrics.mode_metrics([r for r in rows if r["mode"] == m], own_k.get(m) or k, n, seed)
                for m in modes}
    summary = {**settings, "metrics": per_mode, "differences": metrics.mode_differences(rows, modes, n, seed)}
    summary["verdict"] = verdict(rows, summary)
    return summary


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_results(result: EvalResult, out_dir: str | os.PathLike) -> list[Path]:
    """Write results.jsonl, summary.json, summary.md and the PNG charts; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / RESULTS_FILE, out / SUMMARY_JSON, out / SUMMARY_MD]
    _atomic_write(written[0], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows))
    _atomic_write(written[1], json.dumps(result.summary, indent=2, ensure_ascii=False) + "\n")
    _atomic_write(written[2], summary_markdown(result.summary))
    figs = plot_summary(result.summary)
    for stem, fig in figs.items():
        tmp = out / f".{stem}.tmp.png"
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out / f"{stem}.png")
        written.append(out / f"{stem}.png")
    for stale in set(CHARTS) - set(figs):  # a chart of an earlier run in this folder would not match its summary
        (out / f"{stale}.png").unlink(missing_ok=True)
    return written


def load_results(out_dir: str | os.PathLike) -> EvalResult:
    """Read a results directory written by `write_results`."""
    out = Path(out_dir)
    if not (out / RESULTS_FILE).is_file():
        raise FileNotFoundError(f"'{out}' holds no {RESULTS_FILE}; pass a directory written by `loracle eval --out`")
    rows = [json.loads(line) for line in (out / RESULTS_FILE).read_text(encoding="utf-8").splitlines() if line]
    summary = json.loads((out / SUMMARY_JSON).read_text()) if (out / SUMMARY_JSON).is_file() else \
        summarize(rows, {"modes": list(dict.fromkeys(r["mode"] for r in rows))})
    return EvalResult(rows, summary)


def card_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """What an adapter card keeps: mode -> metrics (the registry's contract), plus "run" settings and the
    bootstrap "differences"; no per-question rows."""
    keep = ("created", "data", "data_sha256", "n_items", "adapter", "index", "k", "max_new_tokens", "base_model",
            "judge", "decisions", "calibrate")
    return {**summary["metrics"], "run": {key: summary.get(key) for key in keep},
            "differences": summary.get("differences", [])}


def check_card_record(info, label: str, n_items: int, data_sha256: str | None, modes, replace: bool = False) -> None:
    """Refuse a card record for `label` that would land on a version other than the current one (`info`, the
    registry's AdapterInfo), or (unless `replace`) replace stored evidence covering more: more questions, a mode
    this run lacks, or another question set (a 2-question check must not overwrite a 50-question evaluation)."""
    if info.label != label:
        raise ValueError(f"evaluated {label} but the registry's current version is {info.label}; results are "
                         f"stored only for the current version (evaluate {info.label}, or drop --save-to-card)")
    if replace:
        return
    stored = info.card.evals.get(f"v{info.version}")
    stored = stored if isinstance(stored, dict) else {}
    run = stored.get("run") if isinstance(stored.get("run"), dict) else {}
    old_modes = [m for m, v in stored.items() if m not in ("run", "differences") and isinstance(v, dict)]
    lost = []
    if run.get("data_sha256") and data_sha256 and run["data_sha256"] != data_sha256:
        lost.append(f"it was run on another question set ({Path(str(run.get('data'))).name})")
    elif (run.get("n_items") or 0) > n_items:
        lost.append(f"it has {run['n_items']} questions, this run {n_items}")
    missing = [m for m in old_modes if m not in modes]
    if missing:
        lost.append(f"it has modes this run lacks ({', '.join(missing)})")
    if lost:
        raise ValueError(f"{label}'s card already holds an evaluation that this one would replace: "
                         f"{'; '.join(lost)}. Record a run that covers as much, or replace it on purpose "
                         f"(--replace-card-eval; on the Evaluate page, tick 'Replace the stored evaluation')")


def save_to_card(summary: dict[str, Any], adapter: str | None = None, root=None, replace: bool = False) -> str:
    """Store the summary under the evaluated adapter's version in its card.json (app.registry.record_eval);
    `adapter` ("name@vN") defaults to the one in the summary. Refused when the registry's current version is
    not the one evaluated, so numbers never land on the wrong version, and (unless `replace`) when it would
    replace a stored evaluation that covers more (check_card_record). Returns the label stored under."""
    from app import registry

    label = adapter or summary.get("adapter")
    lora_modes = [m for m in summary.get("metrics", {}) if m.startswith("lora")]
    if not lora_modes or not label or "@v" not in label or summary.get("adapter") not in (None, label):
        ran = ", ".join(summary.get("metrics", {})) or "no modes"
        raise ValueError(f"only an evaluation of a registry adapter in lora or lora+rag mode can be recorded in its "
                         f"card; this one ran {ran} with adapter {summary.get('adapter') or 'none'}"
                         + (f" (asked to record it for {adapter})" if adapter and adapter != summary.get("adapter")
                            else ""))
    name = label.split("@", 1)[0]
    check_card_record(registry.get(name, root), label, summary.get("n_items") or 0, summary.get("data_sha256"),
                      list(summary.get("metrics", {})), replace)
    registry.record_eval(name, card_summary(summary), root=root)
    return label


def compare_results(old: EvalResult, new: EvalResult) -> dict[str, Any]:
    """Regression report of `new` against `old`: per mode, questions that got worse / better, and accuracy and
    macro-F1 of each over the questions both answered (never over two different sets); `warnings` name what
    differs between the two runs (question set, decision method, calibration, token budget)."""
    changes = metrics.regressions(old.rows, new.rows)

    def decided(rows: list[dict], mode: str, ids: set[str]) -> dict[str, tuple]:
        return {r["id"]: (r.get("decision"), r["gold"]) for r in rows if r["mode"] == mode and r["id"] in ids
                and r.get("gold")}

    per_mode = {}
    for mode, c in changes.items():
        ids = {q for key in ("worse", "better", "same_correct", "same_wrong") for q in c[key]}
        figures = {}
        for side, result in (("old", old), ("new", new)):
            pairs = list(decided(result.rows, mode, ids).values())
            preds, gold = [p for p, _ in pairs], [g for _, g in pairs]
            figures[f"{side}_accuracy"] = metrics.accuracy(preds, gold) if pairs else None
            figures[f"{side}_macro_f1"] = metrics.macro_f1(preds, gold) if pairs else None
        per_mode[mode] = {**figures, **{key: c[key] for key in ("worse", "better")}, "shared": len(ids),
                          "unchanged": len(c["same_correct"]) + len(c["same_wrong"])}
    warnings = []
    ids_old, ids_new = ({r["id"] for r in result.rows} for result in (old, new))
    if ids_old != ids_new:
        warnings.append(f"the two runs answered different questions ({len(ids_old)} and {len(ids_new)}); figures "
                        f"are over the {len(ids_old & ids_new)} both answered")
    from app.lineage import COMPARABLE_RUN

    for key in (k for k in COMPARABLE_RUN if k not in ("data_sha256", "n_items")):  # the sets: compared by id above
        a, b = old.summary.get(key), new.summary.get(key)
        if a is not None and b is not None and a != b:
            warnings.append(f"{key} differs ({a} vs {b}): a change may come from how the runs were made")
    return {"old": old.summary.get("adapter"), "new": new.summary.get("adapter"), "modes": per_mode,
            "warnings": warnings}


def make_engine(cfg: EvalConfig):
    from app.config import EngineConfig
    from app.engine import Engine

    return Engine(EngineConfig.from_env(base_model=cfg.base_model, adapters=(), max_new_tokens=cfg.max_new_tokens,
                                        threads=cfg.threads, index=cfg.index))


def make_judge(cfg: EvalConfig):
    if cfg.judge is None:
        return None
    from app.judge import FaithfulnessJudge

    spec = cfg.judge if cfg.judge not in ("", "default") else cfg.base_model
    return FaithfulnessJudge(spec)


def run_eval(cfg: EvalConfig, engine=None, progress=None, out: str | os.PathLike | None = None) -> EvalResult:
    """Load the questions, evaluate, write the results folder (and the card entry with save_to_card).

    With `resume`, modes already complete in the output folder (same data, k and max_new_tokens) are kept
    and only the missing modes run; the merged rows are summarised together."""
    items = load_questions(cfg.data, cfg.limit)
    if cfg.sample and cfg.sample < len(items):
        import random

        keep = set(random.Random(cfg.seed).sample(range(len(items)), cfg.sample))
        items = [it for i, it in enumerate(items) if i in keep]
    modes = parse_modes(cfg.modes)
    if cfg.few_shot and not cfg.few_shot_data:
        raise ValueError("--few-shot N needs --few-shot-data FILE (a labelled set other than --data)")
    if cfg.few_shot and FEWSHOT not in modes:
        modes.append(FEWSHOT)
    if cfg.save_to_card and not any(m.startswith("lora") for m in modes):
        raise ValueError("--save-to-card stores results under an adapter; include lora or lora+rag in --modes")
    out_dir = Path(out or cfg.out or Path("runs") / f"eval-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the results")
    if not cfg.resume and (out_dir / RESULTS_FILE).is_file():
        raise ValueError(f"{out_dir} already holds an evaluation's results; give another --out, add --resume to "
                         "continue that run, or delete the folder")
    kept, prev = [], None
    if cfg.resume and (out_dir / RESULTS_FILE).is_file():
        prev = load_results(out_dir)
        same = [("data_sha256", sha256_file(Path(cfg.data))), ("max_new_tokens", cfg.max_new_tokens),
                ("decisions", cfg.decisions), ("calibrate", cfg.calibrate), ("few_shot", cfg.few_shot),
                ("few_shot_data", cfg.few_shot_data)]
        if cfg.k is not None:  # None: the adapter's / engine's k, whatever the earlier run recorded
            same.append(("k", cfg.k))
        for key, want in same:
            if prev.summary.get(key) not in (None, want):
                raise ValueError(f"cannot resume {out_dir}: it was run with {key}={prev.summary[key]!r}, "
                                 f"this run has {want!r}; use another --out")
        ids = {it.id for it in items}
        kept = [m for m in modes if ids <= {r["id"] for r in prev.rows if r["mode"] == m}]
        if TOP1 in modes and TOP1 not in kept:  # top1 reads the passages of a rag mode run alongside it
            kept = [m for m in kept if not m.endswith("rag")]
    todo = [m for m in modes if m not in kept]
    if todo:
        engine = engine or make_engine(cfg)
        spec = cfg.adapter or (engine.config.default_adapter if any(m.startswith("lora") for m in todo) else None)
        adapter = engine.load_adapter(spec) if spec else None  # NAME, NAME@vN or a folder
        if prev is not None and kept:
            _check_resumable(prev.summary, kept, engine, adapter, cfg.index, cfg.passage_chars, out_dir)
        if cfg.save_to_card and adapter is not None:  # refused now, not after the run
            from app import registry

            try:
                info = registry.get(adapter.name, engine.root)
            except FileNotFoundError:  # a folder outside the registry: save_to_card says so
                info = None
            if info is not None:
                check_card_record(info, adapter.label, len(items), sha256_file(Path(cfg.data)), modes,
                                  cfg.replace_card_eval)
        if adapter and cfg.index is None and "lora+rag" in todo:
            engine.build_card_index(adapter)
        shots = few_shot_examples(cfg.few_shot_data, cfg.few_shot, items, cfg.seed) if cfg.few_shot else None
        result = evaluate(engine, items, todo, adapter, cfg.index, cfg.k, progress,
                          max_new_tokens=cfg.max_new_tokens, questions_per_batch=cfg.questions_per_batch,
                          split_by_retrieval=cfg.split_by_retrieval, judge=make_judge(cfg),
                          n_resamples=cfg.n_resamples, seed=cfg.seed, data_path=cfg.data,
                          decisions=cfg.decisions, calibrate=cfg.calibrate, passage_chars=cfg.passage_chars,
                          few_shot=shots)
        result.summary["few_shot_data"] = cfg.few_shot_data if cfg.few_shot else None
    else:
        result = EvalResult([], {key: v for key, v in prev.summary.items() if key not in ("metrics", "differences")})
    if prev is not None and kept:
        order = {(it.id, m): i * len(modes) + j for i, it in enumerate(items) for j, m in enumerate(modes)}
        rows = [r for r in prev.rows if r["mode"] in kept and (r["id"], r["mode"]) in order] + result.rows
        rows.sort(key=lambda r: order[(r["id"], r["mode"])])
        settings = {key: v for key, v in result.summary.items() if key not in ("metrics", "differences")}
        settings["adapter"] = settings.get("adapter") or prev.summary.get("adapter")
        settings.update(_retrieval_settings(rows, modes, cfg.k),
                        warnings=gold_warnings(rows, engine))
        settings.update(modes=modes, resumed={"modes": kept, "created": prev.summary.get("created"),
                                              "wall_s": prev.summary.get("wall_s")})
        result = EvalResult(rows, summarize(rows, settings))
    result.extra["out"] = str(out_dir)
    result.extra["written"] = [str(p) for p in write_results(result, out_dir)]
    if cfg.save_to_card:
        result.extra["card"] = save_to_card(result.summary, root=engine.root if engine else None,
                                            replace=cfg.replace_card_eval)
    return result


def _check_resumable(prev: dict, kept: list[str], engine, adapter, index: str | None, passage_chars: int | None,
                     out_dir: Path) -> None:
    """Refuse to summarise kept rows with new ones from another base model, adapter or index."""
    checks = [("base_model", prev.get("base_model"), engine.info.name)]
    if adapter and any(m.startswith("lora") for m in kept):
        checks.append(("adapter", prev.get("adapter"), adapter.label))
    for m in kept:
        if index is not None and m.endswith("rag"):
            checks.append((f"index of {m}", (prev.get("index_by_mode") or {}).get(m), index))
        if passage_chars is not None and m.endswith("rag"):
            checks.append((f"passage length of {m}", (prev.get("passage_chars_by_mode") or {}).get(m), passage_chars))
    for key, was, now in checks:
        if was is not None and was != now:
            raise ValueError(f"cannot resume {out_dir}: its rows were made with {key} {was!r}, this run uses "
                             f"{now!r}; use another --out (or the same settings)")


def run_compare(cfg: EvalConfig, old: str, new: str, engine=None, progress=None) -> dict[str, Any]:
    """Regression report of `new` against `old`; each is a results folder or an adapter to evaluate now
    (name, name@vN or folder) on cfg.data. Writes compare.json and compare.md into cfg.out."""
    from app import registry
    from app.config import adapters_dir

    out_dir = Path(cfg.out or Path("runs") / f"compare-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    for spec in (old, new):  # a typo or a missing version fails before either side is evaluated
        if not (Path(spec) / RESULTS_FILE).is_file():
            registry.find(spec, engine.root if engine is not None else adapters_dir())
    results = []
    for tag, spec in (("a", old), ("b", new)):
        if (Path(spec) / RESULTS_FILE).is_file():
            results.append(load_results(spec))
            continue
        engine = engine or make_engine(cfg)
        sub = EvalConfig(**{**cfg.__dict__, "adapter": spec, "save_to_card": False})
        safe = "".join(c if c.isalnum() or c in "-_@" else "_" for c in spec)[-60:]
        results.append(run_eval(sub, engine, progress, out=out_dir / f"{tag}-{safe}"))
    report = compare_results(*results)
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / "compare.json", json.dumps(report, indent=2) + "\n")
    md = compare_markdown(report, {r["id"]: r["question"] for r in results[0].rows})
    _atomic_write(out_dir / "compare.md", md)
    return {**report, "markdown": md, "out": str(out_dir)}
