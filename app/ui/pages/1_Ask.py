"""Ask: one question, adapter and retrieval as two independent switches; the answer streams in."""
from __future__ import annotations

import itertools

import streamlit as st

from app.ui import state

st.set_page_config(page_title="Loracle · Ask", page_icon="💬", layout="wide")
state.keep_widgets()
st.title("Ask")
st.caption("One base model; switch the domain adapter and retrieval independently. Nothing is reloaded when you switch.")
st.caption(state.NOT_ADVICE)

engine = state.engine_or_stop()
history: list = st.session_state.setdefault("history", [])

left, mid, right, far = st.columns([2, 1, 1, 1])
with left:
    adapter = state.adapter_picker("ask_adapter", allow_auto=True)
with mid:
    retrieval = st.toggle("Retrieval", value=True, key="ask_retrieval", help="Retrieve passages from an index and cite them.")
with right:
    k = st.number_input("Passages (k)", min_value=0, max_value=20, value=0, key="ask_k", disabled=not retrieval,
                        help="0: the adapter's trained setting when it is on, else the engine's default "
                             f"({engine.config.k})")
with far:
    max_tokens = st.number_input("Answer tokens", min_value=0, max_value=1024, value=0, step=32, key="ask_tokens",
                                 help="Longest answer in new tokens. 0: the adapter's trained setting when it is on, "
                                      f"else the engine's default ({engine.config.max_new_tokens})")
decide, calibrate = state.decision_controls("ask")
index = None
if retrieval:
    index = state.index_picker("ask_index", card_choice=True)
    if index is None:
        st.warning("No index exists yet: upload documents on the Documents page, or turn retrieval off.")

with st.form("ask_form", clear_on_submit=False):
    question = st.text_area("Question", key="question", height=90, max_chars=state.question_limit(),
                            placeholder="e.g. Is there a role for vitamin D in preventing falls in the elderly?")
    submitted = st.form_submit_button("Ask", type="primary")


def ask(question: str):
    answer_box: dict = {}
    items = engine.stream(question, adapter=adapter, retrieval=retrieval and index is not None,
                          k=int(k) or None, index=state.index_arg(index), decide=decide, calibrate=calibrate,
                          max_new_tokens=int(max_tokens) or None, origin="ui")
    first = next(items)  # a refused question raises here, before an empty answer bubble opens

    def deltas():
        for item in itertools.chain([first], items):
            if isinstance(item, str):
                yield state.md_escape(item)
            else:
                answer_box["answer"] = item

    with st.chat_message("assistant"):
        st.write_stream(deltas())
    return answer_box.get("answer")


just_answered = None
if submitted:
    if not question.strip():
        st.error("Type a question first.")
    else:
        with state.friendly_errors("Answering"):
            just_answered = ask(question.strip())
            if just_answered is not None:
                if not just_answered.question:
                    just_answered.question = question.strip()
                history.append(just_answered)
                st.session_state["last_answer"] = just_answered
                if retrieval and index is not None and not just_answered.passages and not just_answered.notes:
                    used = (just_answered.settings or {}).get("index") or state.index_arg(index)
                    st.warning(f"Retrieval found no passages in index '{used}' (is it empty?); "
                               f"this answer used no documents.")


def answer_details(answer, n: int, show_text: bool) -> None:
    if show_text:
        with st.chat_message("assistant"):
            st.markdown(state.md_escape(answer.text))
    state.route_view(answer)
    state.decision_view(answer)
    st.caption(f"mode **{answer.mode}** · adapter {answer.adapter or state.ADAPTER_OFF} · {state.timings_line(answer.timings)}"
               + (f" · {state.settings_line(answer)}" if state.settings_line(answer) else ""))
    invalid = [c.number for c in answer.citations if not c.valid]
    if invalid:
        st.warning(f"The answer cites passages that were not given to the model: {invalid}")
    if answer.passages:
        cited = {c.number for c in answer.citations if c.valid}
        st.markdown(f"**Passages** ({len(cited)} cited of {len(answer.passages)} retrieved)")
        state.passage_view(answer.passages, cited)
    state.feedback_controls(answer, getattr(answer, "answer_id", "") or f"ask-{id(answer)}")

if history:
    latest = len(history) - 1
    if just_answered is None:
        st.markdown(f"**Q:** {state.md_escape(history[latest].question)}")
    answer_details(history[latest], latest, show_text=just_answered is None)
    if len(history) > 1:
        st.divider()
        st.subheader("Conversation history")
        for n in range(latest - 1, -1, -1):
            a = history[n]
            with st.expander(f"{n + 1}. [{a.mode}] {a.question[:90]}"):
                st.markdown(state.md_escape(a.text))
                st.caption(f"adapter {a.adapter or state.ADAPTER_OFF} · {state.timings_line(a.timings)}")
                if a.passages:
                    st.caption("passages: " + ", ".join(f"[{p.rank}] {p.chunk.doc_id}" for p in a.passages))
        if st.button("Clear history", key="clear_history"):
            history.clear()
            st.session_state.pop("last_answer", None)
            st.session_state.pop("feedback_done", None)
            st.rerun()
