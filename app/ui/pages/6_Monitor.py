"""Monitor: what the audit log says about the answers given: volume per mode and adapter over time, latency,
feedback, drift (questions out of every adapter's scope), oversight events; CSV/JSON export."""
from __future__ import annotations

import streamlit as st

from app.audit import AuditLog
from app.ui import state

st.set_page_config(page_title="Loracle · Monitor", page_icon="📈", layout="wide")
state.keep_widgets()
st.title("Monitor")
st.caption("Every answer given (web UI, CLI, API, evaluation) is recorded in the audit log; this page reads it.")

WINDOWS = {"last hour": 3600, "last 24 hours": 86400, "last 7 days": 7 * 86400, "last 30 days": 30 * 86400,
           "last 365 days": 365 * 86400}

log = AuditLog()
if not log.enabled:
    st.info("The audit log is switched off ($LORACLE_AUDIT=off): nothing is recorded, so there is nothing to show.")
    st.stop()

w1, w2 = st.columns([1, 2])
window_name = w1.selectbox("Window", list(WINDOWS), index=2, key="mon_window")
ORIGINS = {"ui": "web UI", "cli": "CLI", "api": "API", "eval": "evaluations and probes"}
origins = w2.multiselect("Answers given through", list(ORIGINS), default=["ui", "cli", "api"], key="mon_origins",
                         format_func=ORIGINS.get, help="Evaluations and bias probes answer hundreds of questions "
                                                      "of one token each: leave them out to see what users got.")
stats = log.stats(WINDOWS[window_name], entry_points=tuple(origins) or tuple(ORIGINS))
events = log.events(limit=500)
anything = bool(log.answers(limit=1))


def pct(value) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def secs(value) -> str:
    return "-" if value is None else f"{value:.2f} s"


if not anything:
    st.info(f"The audit log is empty: no answers have been recorded yet ({log.path}). Ask a question on the Ask "
            f"page, or use the CLI or the API, and the figures appear here.")
elif stats["total"] == 0:
    st.info(f"No answers in the {window_name}. Pick a longer window.")
else:
    import pandas as pd

    fb, lat, oos = stats["feedback"], stats["latency"], stats["out_of_scope"]
    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("Answers", stats["total"])
    if stats.get("cancelled"):
        m1.caption(f"{stats['cancelled']} cut short: the reader left before the end")
    m2.metric("Latency p50", secs(lat["p50"]))
    m3.metric("Latency p95", secs(lat["p95"]))
    rated = fb["up"] + fb["down"]
    m4.metric("Rated good", pct(fb["approval"]), help=f"{fb['up']} up, {fb['down']} down of {stats['total']} answers")
    m4.caption(f"{rated} of {stats['total']} answers rated")  # a count, not a trend: no delta arrow
    m5.metric("Out of scope", pct(oos["share"]),
              help="share of routed questions far from every adapter's training questions")

    st.subheader(f"Volume per {stats['bucket']}")
    volume = pd.DataFrame(stats["volume"])
    by_mode, by_adapter = st.tabs(["by mode", "by adapter"])
    with by_mode:
        st.bar_chart(volume.pivot_table(index="bucket", columns="mode", values="count", aggfunc="sum", fill_value=0),
                     height=260)
    with by_adapter:
        st.bar_chart(volume.pivot_table(index="bucket", columns="adapter", values="count", aggfunc="sum",
                                        fill_value=0), height=260)

    left, right = st.columns(2)
    with left:
        st.subheader("Latency per mode")
        st.dataframe(pd.DataFrame([{"mode": m, "answers": v["n"], "p50 (s)": v["p50"], "p95 (s)": v["p95"]}
                                   for m, v in lat["by_mode"].items()]), hide_index=True, width="stretch")
    with right:
        st.subheader("Feedback")
        st.dataframe(pd.DataFrame([{"rating": r, "answers": fb[r], "share of answers": pct(fb[f"{r}_rate"])}
                                   for r in ("up", "down")]), hide_index=True, width="stretch")

    st.subheader("Drift: questions out of scope")
    if not oos["routed"]:
        st.caption("No routed questions in this window: the scope check runs when a question is routed "
                   "(adapter \"auto\").")
    else:
        st.markdown(f"**{oos['count']} of {oos['routed']}** routed questions ({pct(oos['share'])}) were far from "
                    f"every adapter's training questions and got no adapter.")
        if oos["recent"]:
            st.caption("Most recent out-of-scope questions")
            st.dataframe(pd.DataFrame(oos["recent"]), hide_index=True, width="stretch")

st.subheader("Oversight events")
if events:
    import pandas as pd

    st.dataframe(pd.DataFrame([{k: e[k] for k in ("time", "kind", "target", "who", "why")} for e in events]),
                 hide_index=True, width="stretch")
else:
    st.caption("No oversight events yet (rollback, disable, enable on the Adapters page or with `loracle ops`).")

st.subheader("Export")
path = log.path
log.close()


def exporter(table: str, fmt: str):
    """The file's content, made when the button is clicked (not on every run of the page)."""
    def make() -> str:
        with AuditLog(path) as audit:
            return audit.export_text(fmt, table)[0]
    return make


c1, c2, c3, c4 = st.columns(4)
for col, table, fmt, mime in ((c1, "answers", "csv", "text/csv"), (c2, "answers", "json", "application/json"),
                              (c3, "events", "csv", "text/csv"), (c4, "events", "json", "application/json")):
    col.download_button(f"{table.capitalize()} ({fmt.upper()})", exporter(table, fmt), f"loracle-audit-{table}.{fmt}",
                        mime, key=f"mon_export_{table}_{fmt}")
st.caption(f"Audit log: {path}")
