"""The plain-language recommendation that ends an evaluation: which mode is best on this question set, by
how much (paired bootstrap interval against each other mode), what it costs, and whether a cheaper mode is
enough because the difference is not significant.

The metric is macro-F1 of the decisions when the set is labelled yes/no/maybe (accuracy rewards the "yes"
prior), else ROUGE-L against the reference answers. Pure functions over result rows.
"""
from __future__ import annotations

from typing import Any, Sequence

from app.metrics import DECISIONS, macro_f1, macro_f1_rows


def _scores(rows: list[dict], mode: str, metric: str) -> dict[str, Any]:
    return {r["id"]: (r["decision"], r["gold"]) if metric == "macro_f1" else r.get("rouge_l")
            for r in rows if r["mode"] == mode and (r.get("gold") if metric == "macro_f1" else
                                                   r.get("rouge_l") is not None)}


def _value(items: Sequence, metric: str) -> float:
    if metric == "macro_f1":
        return macro_f1([p for p, _ in items], [g for _, g in items]) or 0.0
    return sum(items) / len(items)


def _resampled(items: list, metric: str, idx):
    """The metric on every resample at once (rows of `idx`): macro-F1 from confusion counts, like
    metrics.macro_f1 (classes in gold or predicted), or the mean."""
    import numpy as np

    if metric != "macro_f1":
        return np.asarray(items, dtype=float)[idx].mean(axis=1)
    code = {c: i for i, c in enumerate(DECISIONS)}
    pred = np.array([code.get(p, -1) for p, _ in items])[idx]
    gold = np.array([code.get(g, -2) for _, g in items])[idx]
    return np.nan_to_num(macro_f1_rows(pred, gold))


def paired_difference(a: list, b: list, metric: str, n_resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """a - b on the same items with a 95% percentile bootstrap interval (items resampled jointly)."""
    import warnings

    import numpy as np

    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_resamples, len(a)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no class appears at all
        diffs = _resampled(a, metric, idx) - _resampled(b, metric, idx)
    return {"diff": _value(a, metric) - _value(b, metric), "ci_low": float(np.percentile(diffs, 2.5)),
            "ci_high": float(np.percentile(diffs, 97.5))}


def _cost(summary: dict, mode: str) -> tuple[float, float]:
    m = summary["metrics"].get(mode, {})
    return float(m.get("latency_mean_s") or 0.0), float(m.get("prompt_tokens_mean") or 0.0)


def _cheaper(summary: dict, a: str, b: str) -> bool:
    """a costs clearly less than b: at least 10% fewer prompt tokens, or about as many (within 10%) and at least
    20% less time per answer. Latency alone is noisy on a shared CPU (lora and base differ by a few percent)."""
    (lat_a, tok_a), (lat_b, tok_b) = _cost(summary, a), _cost(summary, b)
    return tok_a < 0.9 * tok_b or (tok_a <= 1.1 * tok_b and lat_a < 0.8 * lat_b)


MIN_QUESTIONS = 20  # fewer paired questions: the bootstrap interval is degenerate, no verdict is drawn


def verdict(rows: list[dict], summary: dict, n_resamples: int | None = None) -> dict[str, Any]:
    """{"metric", "best", "comparisons": [...], "recommended", "text"}; text is one short paragraph."""
    modes = list(summary.get("metrics") or dict.fromkeys(r["mode"] for r in rows))
    labelled = any(r.get("gold") in DECISIONS for r in rows)
    metric = "macro_f1" if labelled else "rouge_l"
    per_mode = {m: _scores(rows, m, metric) for m in modes}
    per_mode = {m: s for m, s in per_mode.items() if s}
    if not per_mode:
        return {"metric": metric, "best": None, "comparisons": [], "recommended": None,
                "text": "No verdict: the set has neither decisions nor reference answers to score."}
    values = {m: _value(list(s.values()), metric) for m, s in per_mode.items()}
    # a tie goes to the mode that costs least: fewer prompt tokens, then less time
    best = max(values, key=lambda m: (round(values[m], 6), -_cost(summary, m)[1], -_cost(summary, m)[0]))
    n = n_resamples or summary.get("n_resamples", 1000)
    comparisons = []
    for other in (m for m in per_mode if m != best):
        ids = sorted(set(per_mode[best]) & set(per_mode[other]))
        if not ids:
            continue
        d = paired_difference([per_mode[best][i] for i in ids], [per_mode[other][i] for i in ids], metric, n,
                              summary.get("seed", 0))
        comparisons.append({"mode": other, **{k: round(v, 4) for k, v in d.items()}, "n": len(ids),
                            "significant": d["ci_low"] > 0 and len(ids) >= MIN_QUESTIONS})
    if len(per_mode[best]) < MIN_QUESTIONS:  # a bootstrap over a handful of questions has degenerate intervals
        return {"metric": metric, "best": best, "values": {m: round(v, 4) for m, v in values.items()},
                "comparisons": comparisons, "recommended": None,
                "text": _text(metric, best, values, comparisons, None, summary, len(per_mode[best]))}
    cheaper = [c for c in comparisons if not c["significant"] and c["n"] >= MIN_QUESTIONS
               and _cheaper(summary, c["mode"], best)]
    # of the clearly cheaper modes not significantly worse, the best scoring; then the fewest prompt tokens
    recommended = min(cheaper, key=lambda c: (-round(values[c["mode"]], 6), _cost(summary, c["mode"])[::-1]))["mode"] \
        if cheaper else best
    return {"metric": metric, "best": best, "values": {m: round(v, 4) for m, v in values.items()},
            "comparisons": comparisons, "recommended": recommended,
            "text": _text(metric, best, values, comparisons, recommended, summary, len(per_mode[best]))}


def _text(metric, best, values, comparisons, recommended, summary, n) -> str:
    name = "macro-F1" if metric == "macro_f1" else "ROUGE-L"
    lat, tok = _cost(summary, best)
    acc = summary["metrics"].get(best, {}).get("accuracy")
    total = summary.get("n_items") or n
    which = f"On the {n} of {total} questions with a gold answer" if n < total else \
        f"On these {n} question{'s' if n != 1 else ''}"
    tied = [m for m in values if m != best and round(values[m], 6) == round(values[best], 6)]
    if len(values) == 1:
        claim = f"**{best}**, the only mode evaluated, scores"
    elif tied:
        claim = f"**{best}** ties with {', '.join(tied)} for the best"
    else:
        claim = f"**{best}** scores best by"
    figures = (f"{name} ({values[best]:.3f}" + (f", accuracy {acc * 100:.0f}%" if acc is not None else "")
               + f"; {lat:.2f} s and {tok:.0f} prompt tokens per answer)")
    out = [f"{which}, {claim} {figures}" + (", and costs least of them." if tied else ".")]
    for c in comparisons:
        sig = "significant" if c["significant"] else \
            "not significant" if c["n"] >= MIN_QUESTIONS else "too few questions to test"
        out.append(f"Against {c['mode']}: {c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], {sig}.")
    if n < MIN_QUESTIONS:
        out.append(f"With only {n} question{'s' if n != 1 else ''} no difference can be called significant and no mode is recommended: "
                   f"evaluate at least {MIN_QUESTIONS} (the 50 dev questions tell apart only differences of about "
                   "15 points).")
    elif recommended != best:
        rl, rt = _cost(summary, recommended)
        out.append(f"The difference to **{recommended}** is not significant, so the cheaper {recommended} "
                   f"({rl:.2f} s, {rt:.0f} prompt tokens) is enough on this set.")
    elif costlier := [c["mode"] for c in comparisons if not c["significant"] and _cheaper(summary, best, c["mode"])]:
        out.append(f"The costlier {', '.join(costlier)} do{'es' if len(costlier) == 1 else ''} not do significantly "
                   f"differently: {best} is enough on this set.")
    elif comparisons and all(c["significant"] for c in comparisons):
        out.append(f"{best} is worth its cost here: it beats every other mode significantly.")
    elif comparisons:
        out.append("Where a difference is not significant, more questions are needed to tell the modes apart.")
    return " ".join(out)
