"""Human-facing views of an evaluation: the Markdown tables and the matplotlib charts."""
from __future__ import annotations

from typing import Any

MODE_COLORS = {"base": "#8c8c8c", "lora": "#1f77b4", "rag": "#2ca02c", "lora+rag": "#d62728", "fewshot": "#9467bd"}


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v * 100:.1f}%" if pct else f"{v:.3f}"
    return str(v)


def recall_of(metrics: dict[str, Any]) -> tuple[int | None, float | None]:
    """(k, recall@k) of one mode's metrics: each rag mode's recall is at the k it used."""
    key = next((key for key in metrics if key.startswith("recall@")), None)
    return (int(key[len("recall@"):]), metrics[key]) if key else (None, None)


def recall_ks(per_mode: dict[str, dict]) -> set[int]:
    """The k's at which the modes' recall was measured (more than one: the rag modes read different k)."""
    return {recall_of(m)[0] for m in per_mode.values()} - {None}


def recall_label(ks: set[int]) -> str:
    return f"recall@{next(iter(ks))}" if len(ks) == 1 else "recall@k (each mode's k)"


def _with_recall(per_mode: dict[str, dict]) -> dict[str, dict]:
    return {mode: {**m, "recall": recall_of(m)[1]} for mode, m in per_mode.items()}


def summary_markdown(summary: dict[str, Any]) -> str:
    """A Markdown table of the metrics per mode, then the bootstrap differences."""
    per_mode = _with_recall(summary["metrics"])
    ks = recall_ks(per_mode)
    columns = [("accuracy", "accuracy", True), ("macro_f1", "macro-F1", False),
               ("recall_yes", "recall yes", True), ("recall_no", "recall no", True),
               ("recall_maybe", "recall maybe", True),
               ("uncalibrated_accuracy", "acc. uncalibrated", True), ("uncalibrated_macro_f1", "F1 uncalibrated", False),
               ("parsed_accuracy", "acc. parsed (free text)", True), ("parsed_macro_f1", "F1 parsed", False),
               ("parsed_no_decision_rate", "no decision (free text)", True),
               ("no_decision_rate", "no decision", True), ("rouge_l", "ROUGE-L", False),
               ("recall", recall_label(ks), True), ("citation_rate", "cites", True),
               ("citation_validity", "citation validity", True),
               ("faithfulness", "faithfulness", False), ("prompt_tokens_mean", "prompt tokens", False),
               ("latency_mean_s", "mean latency (s)", False),
               ("latency_p95_s", "p95 latency (s)", False)]
    columns = [c for c in columns if any(m.get(c[0]) is not None for m in per_mode.values())]
    head = ["mode", "n"] + [c[1] for c in columns]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for mode, m in per_mode.items():
        cells = [mode, str(m.get("n", 0))]
        for key, _, pct in columns:
            cell = _fmt(m.get(key), pct)
            if key == "accuracy" and m.get("accuracy_ci_low") is not None:
                cell += f" [{m['accuracy_ci_low'] * 100:.0f}, {m['accuracy_ci_high'] * 100:.0f}]"
            elif key == "recall" and m.get(key) is not None and len(ks) > 1:
                cell += f" (k={recall_of(m)[0]})"
            elif key in ("rouge_l", "faithfulness") and m.get(f"{key}_ci_low") is not None:
                cell += f" [{m[f'{key}_ci_low']:.3f}, {m[f'{key}_ci_high']:.3f}]"
            cells.append(cell)
        lines.append(f"| {' | '.join(cells)} |")
    title = (f"Evaluation: {summary.get('n_items')} questions from {summary.get('data') or '(in memory)'}, "
             f"adapter {summary.get('adapter') or '–'}, index {_per_mode(summary, 'index')}, k={_per_mode(summary, 'k')}, "
             f"base model {summary.get('base_model') or '–'}")
    head_lines = [title, ""] + [f"**Warning.** {w}\n" for w in summary.get("warnings") or []]
    if (summary.get("verdict") or {}).get("text"):
        head_lines += ["**Verdict.** " + summary["verdict"]["text"], ""]
    out = [*head_lines, *lines]
    if any(c[0] == "accuracy" for c in columns):
        out.append("\nAccuracy in % with its 95% bootstrap interval in brackets. Decisions: "
                   f"{summary.get('decisions', 'scored')}; calibration "
                   f"{'on' if summary.get('calibrate', True) else 'off'} (the 'uncalibrated' columns are the same "
                   "answers without offsets" + ("; 'parsed' reads the decision from free generation's text"
                                                if any("parsed" in c[0] for c in columns) else "") + ").")
    if summary.get("differences"):
        n = summary.get("n_resamples", 1000)
        out += ["", f"Differences (paired bootstrap, {n} resamples, seed {summary.get('seed', 0)}; accuracy in "
                    f"points, ROUGE-L as is):", "",
                "| comparison | metric | difference | 95% CI | P(not better) |", "|---|---|---|---|---|"]
        for d in summary["differences"]:
            scale, unit, nd = (100, " pts", 1) if d.get("metric", "accuracy") == "accuracy" else (1, "", 3)
            out.append(f"| {d['a']} − {d['b']} | {d.get('metric', 'accuracy')} | {d['diff'] * scale:+.{nd}f}{unit} | "
                       f"[{d['ci_low'] * scale:+.{nd}f}, {d['ci_high'] * scale:+.{nd}f}] | {d['p_not_better']:.3f} |")
    return "\n".join(out) + "\n"


CHARTS = ("accuracy", "latency", "recall")  # the stems plot_summary may draw


def plot_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """Matplotlib figures by file stem: accuracy (with CI error bars), latency, recall@k when known.
    Plain `Figure` objects (no pyplot state): save them, show them in a notebook or with st.pyplot."""
    from matplotlib.figure import Figure

    per_mode = _with_recall(summary["metrics"])
    modes = list(per_mode)
    colors = [MODE_COLORS.get(m, "#555555") for m in modes]
    figs: dict[str, Any] = {}

    def bar(stem: str, key: str, ylabel: str, title: str, err: bool = False, ymax: float | None = None) -> None:
        vals = [per_mode[m].get(key) for m in modes]
        if all(v is None for v in vals):
            return
        fig = Figure(figsize=(5, 3.2))
        ax = fig.subplots()
        heights = [v or 0.0 for v in vals]
        yerr = None
        if err:
            def bound(m, key, h):
                v = per_mode[m].get(key)
                return h if v is None else v

            lo = [max(0.0, h - bound(m, "accuracy_ci_low", h)) for m, h in zip(modes, heights)]
            hi = [max(0.0, bound(m, "accuracy_ci_high", h) - h) for m, h in zip(modes, heights)]
            yerr = [lo, hi]
        ax.bar(modes, heights, color=colors, yerr=yerr, capsize=4)
        for i, v in enumerate(vals):
            ax.text(i, (v or 0) / 2 if ymax else (v or 0), "–" if v is None else f"{v:.2f}", ha="center",
                    va="center" if ymax else "bottom", fontsize=8, color="white" if ymax else "black")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if ymax:
            ax.set_ylim(0, ymax)
        fig.tight_layout()
        figs[stem] = fig

    bar("accuracy", "accuracy", "accuracy", "Decision accuracy per mode (95% CI)", err=True, ymax=1.0)
    bar("latency", "latency_mean_s", "seconds per answer", "Mean latency per mode")
    ks = recall_ks(per_mode)
    read = f"top {next(iter(ks), 'k')}" if len(ks) <= 1 else "passages read (" + ", ".join(
        f"{m} k={recall_of(per_mode[m])[0]}" for m in modes if recall_of(per_mode[m])[0]) + ")"
    bar("recall", "recall", recall_label(ks), f"Gold document in {read}", ymax=1.0)
    return figs


def compare_markdown(report: dict[str, Any], questions: dict[str, str] | None = None) -> str:
    """The regression table of app.evaluate.compare_results, then the questions that got worse."""
    questions = questions or {}
    lines = [f"Regression report: {report['new'] or 'B'} against {report['old'] or 'A'}", ""]
    lines += [f"**Warning:** {w}." for w in report.get("warnings") or []] + ([""] if report.get("warnings") else [])
    lines += ["| mode | questions | old accuracy | new accuracy | old macro-F1 | new macro-F1 | worse (correct→wrong) | "
              "better (wrong→correct) | unchanged |", "|---|---|---|---|---|---|---|---|---|"]
    for mode, m in report["modes"].items():
        lines.append(f"| {mode} | {m.get('shared', '–')} | {_fmt(m['old_accuracy'], True)} | "
                     f"{_fmt(m['new_accuracy'], True)} | {_fmt(m.get('old_macro_f1'))} | {_fmt(m.get('new_macro_f1'))} | "
                     f"{len(m['worse'])} | {len(m['better'])} | {m['unchanged']} |")
    for mode, m in report["modes"].items():
        if m["worse"]:
            lines += ["", f"Worse in {mode}:"]
            lines += [f"- {qid}" + (f": {questions[qid]}" if questions.get(qid) else "") for qid in m["worse"]]
    return "\n".join(lines) + "\n"


def _per_mode(summary: dict, key: str) -> str:
    """The index (or k) the rag modes used, per mode when they differ (an adapter card may name its own)."""
    by_mode = {m: v for m, v in (summary.get(f"{key}_by_mode") or {}).items() if v}
    if len(set(by_mode.values())) > 1:
        return ", ".join(f"{v} ({m})" for m, v in by_mode.items())
    return str(summary.get(key) or "–")
