"""Metrics for the four-mode evaluation: decisions, ROUGE-L, retrieval recall, citations, latency, bootstrap.

Pure functions over plain values and result rows (dicts as written to results.jsonl), so they can be
tested on hand-made answers and recomputed from a saved results directory.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Iterable, Sequence

DECISIONS = ("yes", "no", "maybe")

# (better, worse): "better - worse" differences reported with a paired bootstrap interval
KEY_DIFFERENCES = (("lora+rag", "rag"), ("lora+rag", "lora"), ("lora", "base"), ("rag", "base"))


def accuracy(predicted: Sequence[str | None], gold: Sequence[str]) -> float | None:
    """Share of exact matches; a missing prediction (None) counts as wrong. None when there is no gold."""
    if not gold:
        return None
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)


def macro_f1(predicted: Sequence[str | None], gold: Sequence[str]) -> float | None:
    """Macro-F1 over the decision classes seen in gold or predictions (PubMedQA's metric, via scikit-learn).

    A missing prediction lowers the recall of its gold class and is not a class of its own.
    """
    if not gold:
        return None
    from sklearn.metrics import f1_score

    labels = [c for c in DECISIONS if c in set(gold) | set(predicted)]
    labels += sorted({g for g in gold if g not in DECISIONS})
    pred = [p if p is not None else "<none>" for p in predicted]
    return float(f1_score(list(gold), pred, labels=labels, average="macro", zero_division=0))


def macro_f1_rows(pred, gold):
    """Macro-F1 of many prediction rows at once (numpy arrays of class indexes into DECISIONS, -1 for none):
    `pred` (R, n) against `gold` (n,) or (R, n). Averaged over the classes in gold or predicted, as
    `macro_f1`; a row where no class appears at all is NaN."""
    import numpy as np

    f1 = []
    for c in range(len(DECISIONS)):
        tp = ((pred == c) & (gold == c)).sum(-1)
        denom = 2 * tp + ((pred == c) & (gold != c)).sum(-1) + ((pred != c) & (gold == c)).sum(-1)
        f1.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan))
    return np.nanmean(np.stack(f1), axis=0)


def class_recall(predicted: Sequence[str | None], gold: Sequence[str]) -> dict[str, float]:
    """Recall of each gold class: the share of its items predicted as it."""
    out = {}
    for cls in DECISIONS:
        idx = [i for i, g in enumerate(gold) if g == cls]
        if idx:
            out[cls] = sum(predicted[i] == cls for i in idx) / len(idx)
    return out


def decision_metrics(predicted: Sequence[str | None], gold: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """accuracy, macro-F1, no-decision rate and per-class recall, keys prefixed (e.g. "parsed_")."""
    out = {f"{prefix}accuracy": accuracy(predicted, gold), f"{prefix}macro_f1": macro_f1(predicted, gold),
           f"{prefix}no_decision_rate": no_decision_rate(predicted)}
    out.update({f"{prefix}recall_{c}": v for c, v in class_recall(predicted, gold).items()})
    return out


def no_decision_rate(predicted: Sequence[str | None]) -> float | None:
    return sum(p is None for p in predicted) / len(predicted) if predicted else None


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure per pair (Google's rouge-score package, with stemming)."""
    scorer = _rouge_scorer()
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]


def recall_at_k(retrieved: Sequence[str], gold_doc_id: str, k: int) -> bool:
    """True when the gold document is among the first k retrieved documents."""
    return gold_doc_id in list(retrieved)[:k]


def mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def percentile(values: Iterable[float], q: float) -> float | None:
    import numpy as np

    vals = [float(v) for v in values if v is not None]
    return float(np.percentile(vals, q)) if vals else None


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float]:
    """Mean of a - b over paired items with a percentile bootstrap interval (same resampled items for both).

    `p_not_better` is the share of resamples where a - b <= 0: small means "a beats b" holds up.
    """
    import numpy as np

    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if x.size == 0:
        raise ValueError("paired_bootstrap needs at least one paired item")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    diffs = x[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return {
        "diff": float(x.mean()),
        "ci_low": float(np.percentile(diffs, tail)),
        "ci_high": float(np.percentile(diffs, 100 - tail)),
        "p_not_better": float((diffs <= 0).mean()),
        "n": int(x.size),
    }


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of a mean (used for the accuracy error bars)."""
    if not values:
        return None
    r = paired_bootstrap(values, [0.0] * len(values), n_resamples, seed, confidence)
    return r["ci_low"], r["ci_high"]


def _round(x: Any, nd: int = 4) -> Any:
    return round(x, nd) if isinstance(x, float) and math.isfinite(x) else x


def mode_metrics(rows: list[dict], k: int, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All metrics of one mode's rows (see app.evaluate for the row fields)."""
    out: dict[str, Any] = {"n": len(rows)}
    decided = [r for r in rows if r.get("gold")]
    if decided:
        pred, gold = [r["decision"] for r in decided], [r["gold"] for r in decided]
        correct = [float(p == g) for p, g in zip(pred, gold)]
        out.update(decision_metrics(pred, gold))
        ci = bootstrap_ci(correct, n_resamples, seed)
        out["accuracy_ci_low"], out["accuracy_ci_high"] = ci
        out["n_decision_items"] = len(decided)
        if any(r.get("logprobs") for r in decided):  # scored: the same answers without calibration offsets
            out.update(decision_metrics([r.get("uncalibrated_decision") for r in decided], gold, "uncalibrated_"))
        if any(r.get("free_answer") is not None or r.get("decision_source") == "parsed" for r in decided):
            out.update(decision_metrics([r.get("parsed_decision") for r in decided], gold, "parsed_"))
    rouge = [r["rouge_l"] for r in rows if r.get("rouge_l") is not None]
    if rouge:
        out["rouge_l"] = mean(rouge)
        out["rouge_l_ci_low"], out["rouge_l_ci_high"] = bootstrap_ci(rouge, n_resamples, seed)
    hits = [r["retrieval_hit"] for r in rows if r.get("retrieval_hit") is not None]
    if hits:
        out[f"recall@{k}"] = mean(float(h) for h in hits)
    with_passages = [r for r in rows if r.get("retrieved_doc_ids")]
    if with_passages:
        cited = [r for r in with_passages if r.get("cited")]
        out["citation_rate"] = len(cited) / len(with_passages)
        out["citation_validity"] = mean(float(r["citations_valid"]) for r in cited) if cited else None
    faith = [r["faithfulness"] for r in rows if r.get("faithfulness") is not None]
    if faith:
        out["faithfulness"] = mean(faith)
        out["faithfulness_ci_low"], out["faithfulness_ci_high"] = bootstrap_ci(faith, n_resamples, seed)
    tokens = [r["timings"].get("prompt_tokens") for r in rows if (r.get("timings") or {}).get("prompt_tokens")]
    if tokens:
        out["prompt_tokens_mean"] = mean(tokens)
    lat = [r["latency_s"] for r in rows if r.get("latency_s") is not None]
    if lat:
        out["latency_mean_s"] = mean(lat)
        out["latency_p95_s"] = percentile(lat, 95)
    return {key: _round(v) for key, v in out.items()}


def mode_differences(rows: list[dict], modes: Sequence[str], n_resamples: int = 1000,
                     seed: int = 0) -> list[dict[str, Any]]:
    """Paired bootstrap differences for the key mode pairs present: accuracy (items with gold only) and
    ROUGE-L (items with a reference answer; with the top1 baseline, lora+rag and rag against it too)."""
    values: dict[str, dict[str, dict[str, float]]] = {"accuracy": {}, "rouge_l": {}}
    for r in rows:
        if r.get("gold"):
            values["accuracy"].setdefault(r["mode"], {})[r["id"]] = float(r["decision"] == r["gold"])
        if r.get("rouge_l") is not None:
            values["rouge_l"].setdefault(r["mode"], {})[r["id"]] = float(r["rouge_l"])
    out = []
    for metric, by_mode in values.items():
        top1 = (("lora+rag", "top1"), ("rag", "top1")) if metric == "rouge_l" else ()  # top1 decides nothing
        for better, worse in (*KEY_DIFFERENCES, *top1):
            if better not in modes or worse not in modes or better not in by_mode or worse not in by_mode:
                continue
            ids = sorted(set(by_mode[better]) & set(by_mode[worse]))
            if not ids:
                continue
            res = paired_bootstrap([by_mode[better][i] for i in ids], [by_mode[worse][i] for i in ids],
                                   n_resamples, seed)
            out.append({"a": better, "b": worse, "metric": metric, **{k: _round(v) for k, v in res.items()}})
    return out


def regressions(old_rows: list[dict], new_rows: list[dict]) -> dict[str, dict[str, list[str]]]:
    """Per mode, the question ids that went correct -> wrong ("worse") and wrong -> correct ("better")."""
    def index(rows: list[dict]) -> dict[tuple[str, str], bool]:
        return {(r["mode"], r["id"]): r["decision"] == r["gold"] for r in rows if r.get("gold")}

    old, new = index(old_rows), index(new_rows)
    out: dict[str, dict[str, list[str]]] = {}
    for mode, qid in sorted(set(old) & set(new)):
        entry = out.setdefault(mode, {"worse": [], "better": [], "same_correct": [], "same_wrong": []})
        was, now = old[(mode, qid)], new[(mode, qid)]
        key = "worse" if was and not now else "better" if now and not was else (
            "same_correct" if now else "same_wrong")
        entry[key].append(qid)
    return out
