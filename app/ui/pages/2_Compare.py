"""Compare: one question, the four modes side by side, generated in one batched engine pass."""
from __future__ import annotations

import json
import time

import streamlit as st

from app.types import MODES
from app.ui import state

st.set_page_config(page_title="Loracle · Compare", page_icon="🔀", layout="wide")
state.keep_widgets()
st.title("Compare the four modes")
st.caption("base · LoRA · RAG · LoRA+RAG for one question, in one batched pass over the same base model.")
st.caption(state.NOT_ADVICE)

engine = state.engine_or_stop()

c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
with c1:
    adapter = state.adapter_picker("cmp_adapter", allow_off=False, label="Adapter for the LoRA modes")
with c2:
    index = state.index_picker("cmp_index", label="Index for the RAG modes", card_choice=True)
with c3:
    k = st.number_input("k", min_value=0, max_value=20, value=0, key="cmp_k",
                        help="0: the adapter's trained setting for lora+rag, the engine's default for rag")
with c4:
    max_tokens = st.number_input("Answer tokens", min_value=0, max_value=1024, value=0, step=32, key="cmp_tokens",
                                 help="Longest answer in new tokens, for all four modes. 0: the adapter's trained "
                                      f"setting for the lora modes, else the engine's default "
                                      f"({engine.config.max_new_tokens})")
decide, calibrate = state.decision_controls("cmp")

with st.form("cmp_form"):
    question = st.text_area("Question", key="cmp_question", height=80, max_chars=state.question_limit())
    submitted = st.form_submit_button("Compare", type="primary")

if submitted:
    if not question.strip():
        st.error("Type a question first.")
    elif adapter is None or index is None:
        st.error("Comparing needs a registered adapter and an index: "
                 + ("train an adapter on the Adapters page. " if adapter is None else "")
                 + ("create an index on the Documents page." if index is None else ""))
    else:
        with state.friendly_errors("Comparing"), st.spinner("Generating all four modes in one batch..."):
            t0 = time.perf_counter()
            st.session_state["comparison"] = {
                "question": question.strip(), "adapter": adapter, "index": index, "k": int(k),
                "answers": engine.compare(question.strip(), adapter=adapter, index=state.index_arg(index),
                                          k=int(k) or None, decide=decide, calibrate=calibrate,
                                          max_new_tokens=int(max_tokens) or None, origin="ui"),
                "wall_s": time.perf_counter() - t0, "n": st.session_state.get("n_comparisons", 0) + 1,
            }
            st.session_state["n_comparisons"] = st.session_state["comparison"]["n"]

comparison = st.session_state.get("comparison")
if comparison:
    answers = comparison["answers"]
    st.markdown(f"**Q:** {state.md_escape(comparison['question'])}")
    st.caption(f"all four modes in {comparison['wall_s']:.1f} s")
    rows = []
    for mode in MODES:
        a = answers.get(mode)
        if a is None:
            continue
        cited = sorted({c.passage.doc_id for c in a.citations if c.valid and c.passage is not None})
        d = a.decision
        rows.append({"mode": mode, "adapter": a.adapter or state.ADAPTER_OFF, "words": len(a.text.split()),
                     "decision": d.label if d else "-",
                     "P(yes/no/maybe)": " / ".join(f"{d.probs[o] * 100:.0f}%" for o in d.probs) if d and d.probs
                     else "-", "passages": len(a.passages), "k": str(a.settings.get("k")) if a.passages else "-",
                     "cited": ", ".join(cited) or "-", "generation_s": round(a.timings.get("generation_s", 0.0), 2)})
    import pandas as pd

    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    grid = [st.columns(2), st.columns(2)]
    for i, mode in enumerate(MODES):
        a = answers.get(mode)
        with grid[i // 2][i % 2].container(border=True):
            st.subheader(mode)
            if a is None:
                st.info("not produced")
                continue
            state.route_view(a)  # its notes: cut at the token limit, index not built, adapter disabled, ...
            state.decision_view(a, compact=True)
            st.markdown(state.md_escape(a.text) if a.text else "_(empty answer)_")
            timings = {key: v for key, v in a.timings.items() if key != "tokens_per_s"}  # one batch for all four
            st.caption(f"{len(a.text.split())} words · {state.timings_line(timings)}"
                       + (f" · {state.settings_line(a)}" if state.settings_line(a) else ""))
            if a.passages:
                state.passage_view(a.passages, {c.number for c in a.citations if c.valid})
            state.feedback_controls(a, f"cmp{comparison['n']}-{mode}", compact=True)
    used = {m: {"index": a.settings.get("index"), "k": a.settings.get("k")} for m, a in answers.items()
            if m.endswith("rag")}
    payload = {  # index / k: as asked (None: each adapter's own); retrieval: what each rag mode really used
        "question": comparison["question"], "adapter": comparison["adapter"],
        "index": state.index_arg(comparison["index"]), "k": comparison["k"] or None, "retrieval": used,
        "wall_s": comparison["wall_s"],
        "answers": {m: a.to_dict() for m, a in answers.items()},
    }
    st.download_button("Save comparison (JSON)", json.dumps(payload, indent=2, default=str),
                       file_name="comparison.json", mime="application/json", key="cmp_download")
