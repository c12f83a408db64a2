"""Loracle web UI entry point: `streamlit run app/ui/Home.py` (or `loracle ui`)."""
from __future__ import annotations

import streamlit as st

from app import feedback
from app.ui import state

st.set_page_config(page_title="Loracle", page_icon="🔮", layout="wide")
state.keep_widgets()
st.title("Loracle")
st.markdown("Local question answering over **one base model** with a switchable **domain LoRA adapter** "
            "and switchable **retrieval** (RAG over your documents), so every question can be asked four ways: "
            "`base`, `lora`, `rag`, `lora+rag`.")

c1, c2, c3, c4, c5, c6 = st.columns(6)
c1.page_link("pages/1_Ask.py", label="Ask", icon=":material/chat:")
c2.page_link("pages/2_Compare.py", label="Compare modes", icon=":material/compare:")
c3.page_link("pages/3_Documents.py", label="Documents", icon=":material/description:")
c4.page_link("pages/4_Adapters.py", label="Adapters", icon=":material/extension:")
c5.page_link("pages/5_Evaluate.py", label="Evaluate", icon=":material/bar_chart:")
c6.page_link("pages/6_Monitor.py", label="Monitor", icon=":material/monitoring:")

st.subheader("Status")
engine = state.engine_or_stop()
info = engine.info
m1, m2, m3 = st.columns([2, 1, 1])  # the base model's name needs the room
base_name = str(getattr(info, "name", "?"))
m1.metric("Base model", base_name.rsplit("/", 1)[-1], help=base_name)
m2.metric("Adapters registered", len(state.adapters()))
m3.metric("Indexes", len(state.indexes()))
st.caption(f"Default adapter: {state.default_adapter_name() or 'none'} · loaded: "
           f"{', '.join(engine.loaded_adapters()) or 'none'} · indexes: {', '.join(state.indexes()) or 'none'}")
for warning in getattr(engine, "warnings", []):
    st.warning(warning)

jobs = state.runner().list()
if jobs:
    st.subheader("Background jobs")
    state.recent_jobs_table()

st.subheader("Feedback log")
entries = feedback.load()
if not entries:
    st.caption(f"No feedback yet. Thumbs up/down on the Ask page are stored in {feedback.default_path()}.")
else:
    import pandas as pd

    counts = feedback.summary(entries)
    st.dataframe(pd.DataFrame(counts).T, width="stretch")
    d1, d2 = st.columns(2)
    d1.download_button("Export feedback (JSON)", feedback.export_json(entries), "feedback.json",
                       "application/json", key="fb_json")
    d2.download_button("Export feedback (CSV)", feedback.export_csv(entries), "feedback.csv", "text/csv", key="fb_csv")
