"""Evaluate: a question set x chosen modes -> accuracy, recall@k, latency per mode, drill-down, downloads."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import streamlit as st

from app.config import EvalConfig
from app.jobs import runner
from app.evaluate import EVAL_MODES, FEWSHOT, TOP1
from app.types import MODES
from app.ui import state

st.set_page_config(page_title="Loracle · Evaluate", page_icon="📊", layout="wide")
state.keep_widgets()
st.title("Evaluate")
st.caption("Run a question set through the modes you pick; compare accuracy, retrieval recall and latency.")

engine = state.engine_or_stop()


def bundled_dev_sets() -> dict[str, Path]:
    """The dev sets shipped under data/: label -> path."""
    from ingest.config import home

    sets = {"Bundled PubMedQA dev set": "data/pubmedqa/dev.jsonl", "Bundled MedQuAD dev set": "data/medquad/qa_dev.jsonl"}
    out = {}
    for label, rel in sets.items():
        for root in (home(), Path(__file__).resolve().parents[3]):
            if (root / rel).exists():
                out[label] = root / rel
                break
    return out


bundled = bundled_dev_sets()
choices = list(bundled) + ["Upload JSONL"]
with st.form("eval_form"):
    source = st.radio("Question set", choices, key="eval_source", horizontal=True)
    upload = st.file_uploader("QA JSONL ({id, question, final_decision?, context_doc_id?, long_answer?} per line)",
                              type=["jsonl"], key="eval_upload")
    modes = st.multiselect("Modes", [*MODES, TOP1], default=list(MODES), key="eval_modes",
                           help="top1: the top retrieved passage itself as the answer (an extractive baseline for "
                                "free-text answers; needs rag or lora+rag)")
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        adapter = state.adapter_picker("eval_adapter", allow_off=False, label="Adapter (LoRA modes)")
    with c2:
        index = state.index_picker("eval_index", label="Index (RAG modes)", card_choice=True)
    k = c3.number_input("k (0 = adapter's)", 0, 20, 0, key="eval_k",
                        help="0: the adapter's trained setting for lora+rag, the engine's default for rag")
    limit = c4.number_input("Questions (0 = all)", 0, 100000, 10, key="eval_limit")
    d1, d2, d3, d4 = st.columns(4)
    decisions = d1.selectbox("Decisions", ["scored", "free", "both"], key="eval_decisions",
                             help="scored: option log-likelihoods; free: read from generated text; both: run both")
    calibrate = d2.toggle("Calibrated", value=True, key="eval_calibrate",
                          help="apply stored offsets (the table shows the uncalibrated figures too)")
    few_shot = d3.number_input("Few-shot examples (0 = off)", 0, 8, 0, key="eval_few_shot",
                               help="adds the 'fewshot' mode: base model with N labelled examples in the prompt")
    max_tokens = d4.number_input("Answer tokens", 1, 1024, EvalConfig.max_new_tokens, key="eval_tokens",
                                 help=f"longest answer in new tokens ({EvalConfig.max_new_tokens}, as `loracle eval`): "
                                      "a decision and a sentence. Scored decisions need only 1")
    shots_upload = st.file_uploader("Few-shot examples from (labelled QA JSONL, never the evaluated set)",
                                    type=["jsonl"], key="eval_shots")
    submitted = st.form_submit_button("Run evaluation", type="primary")


def start(path: Path, limit: int, tmp: Path | None, shots_path: Path | None):
    def job(report):
        from app.evaluate import evaluate, few_shot_examples, load_questions

        try:
            items = load_questions(path, limit=limit or None)
            shots = few_shot_examples(str(shots_path), int(few_shot), items) if shots_path and few_shot else None
            run_modes = list(modes) + ([FEWSHOT] if shots and FEWSHOT not in modes else [])
            report(0.0, f"{len(items)} questions x {len(run_modes)} modes")
            return evaluate(engine, items, modes=run_modes, adapter=adapter, index=state.index_arg(index),
                            k=int(k) or None, max_new_tokens=int(max_tokens),
                            progress=lambda done, total: report.steps(done, total, f"{done}/{total} answers"),
                            data_path=str(path), decisions=decisions, calibrate=calibrate, few_shot=shots)
        finally:
            if tmp is not None:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)

    return runner().submit("evaluate", f"evaluate {path.name} ({', '.join(modes)})", job)


if submitted:
    with state.friendly_errors("Starting the evaluation"):
        running = state.active_job("evaluate")
        if running is not None:
            raise ValueError(f"an evaluation is already running ({running.title}); its progress is below: wait for "
                             "it to finish, then start the next")
        if not modes:
            raise ValueError("pick at least one mode")
        if any(m.startswith("lora") for m in modes) and adapter is None:
            raise ValueError("the LoRA modes need a registered adapter; train one on the Adapters page")
        if any(m.endswith("rag") for m in modes) and index is None:
            raise ValueError("the RAG modes need an index; create one on the Documents page")
        tmp = None
        if source == "Upload JSONL":
            if upload is None:
                raise ValueError("upload a JSONL question set, or choose the bundled dev set")
            tmp = Path(tempfile.mkdtemp(prefix="loracle-eval-"))
            path = tmp / (Path(upload.name).name or "questions.jsonl")
            path.write_bytes(upload.getvalue())
            from app.evaluate import load_questions

            try:  # a bad file fails here, in the page, not in the background
                load_questions(path)
            except ValueError as exc:
                raise ValueError(str(exc).replace(str(path), upload.name)) from None
        else:
            path = bundled[source]
            if upload is not None:
                st.warning(f"'{upload.name}' is not evaluated: the bundled set is. Choose 'Upload JSONL' above to "
                           "evaluate your file.")
        shots_path = None
        if few_shot:
            if shots_upload is None:
                raise ValueError("few-shot examples need a labelled set: upload one (e.g. the training set)")
            tmp = tmp or Path(tempfile.mkdtemp(prefix="loracle-eval-"))
            shots_path = tmp / "few-shot.jsonl"
            shots_path.write_bytes(shots_upload.getvalue())
        st.session_state["eval_job"] = start(path, int(limit), tmp, shots_path).id

job_id = st.session_state.get("eval_job")
other = state.active_job("evaluate")
if other is not None and other.id != job_id:
    st.info(f"Another evaluation is running: {other.title}")
result = None
if job_id:
    try:
        job = state.follow_job(runner().get(job_id), cancellable=True)
        result = job.result if job.status == "done" else None
    except KeyError:
        pass

if result is not None:
    import pandas as pd

    from app.evaluate import plot_summary

    summary = result.summary
    for warning in summary.get("warnings") or []:
        st.warning(warning)
    if (summary.get("verdict") or {}).get("text"):
        st.subheader("Verdict")
        st.info(summary["verdict"]["text"])
    st.subheader("Results per mode")
    per_mode = pd.DataFrame(summary["metrics"]).T
    first = ["n", "accuracy", "macro_f1", *sorted(c for c in per_mode.columns if c.startswith("recall@")), "rouge_l",
             "latency_mean_s"]
    per_mode = per_mode[[c for c in first if c in per_mode.columns] + [c for c in per_mode.columns if c not in first]]
    st.dataframe(per_mode, width="stretch")
    figs = plot_summary(summary)
    cols = st.columns(max(1, len(figs)))
    for col, (stem, fig) in zip(cols, figs.items()):
        col.pyplot(fig)
    rows = pd.DataFrame(result.rows)
    c1, c2, c3 = st.columns(3)
    from app.audit import spreadsheet_safe

    c1.download_button("Download results (CSV)", rows.map(spreadsheet_safe).to_csv(index=False), "results.csv",
                       "text/csv", key="dl_csv")
    c2.download_button("Download results (JSON)",
                       json.dumps({"summary": summary, "rows": result.rows}, indent=2, default=str),
                       "results.json", "application/json", key="dl_json")
    lora_adapter = summary.get("adapter")
    if lora_adapter and "@v" in lora_adapter and any(m.startswith("lora") for m in summary["metrics"]):
        replace = c3.checkbox("Replace the stored evaluation", key="eval_record_replace",
                              help="Needed when the card already holds an evaluation with more questions, "
                                   "other modes or another question set, which this one would replace.")
        if c3.button("Record in the adapter card", key="eval_record"):
            with state.friendly_errors("Recording the evaluation"):
                from app.evaluate import save_to_card

                save_to_card(summary, lora_adapter, replace=replace)
                st.success(f"Stored under {lora_adapter} in its card.json.")

    st.subheader("Per question")
    table = (rows.assign(gold=rows["gold"].fillna("-"), decision=rows["decision"].fillna("-"))
             .pivot_table(index=["id", "gold"], columns="mode", values="decision", aggfunc="first").reset_index())
    table = table[["id", "gold"] + [m for m in EVAL_MODES if m in table.columns]]
    st.dataframe(table, hide_index=True, width="stretch")
    ids = list(dict.fromkeys(rows["id"]))
    qid = st.selectbox("Drill down into a question", ids, key="eval_drill")
    picked = rows[rows["id"] == qid]
    st.markdown(f"**Q:** {state.md_escape(picked.iloc[0]['question'])}  \n**gold:** {picked.iloc[0]['gold'] or '-'} · "
                f"gold document: {picked.iloc[0]['context_doc_id'] or '-'}")
    grid = st.columns(2)
    for i, (_, r) in enumerate(picked.iterrows()):
        with grid[i % 2].container(border=True):
            ok = {True: "· correct", False: "· wrong"}.get(r["correct"], "")
            decision = r["decision"] if isinstance(r["decision"], str) else "-"
            st.markdown(f"**{r['mode']}** · decision {decision} {ok}")
            st.markdown(state.md_escape(r["answer"]) if r["answer"] else "_(empty)_")
            hit = {True: "gold retrieved", False: "gold missed"}.get(r["retrieval_hit"], "")
            st.caption(f"{r['latency_s']:.2f} s · passages: {', '.join(r['retrieved_doc_ids']) or '-'} {hit}")
