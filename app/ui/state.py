"""What the pages share: the one engine per process, registry/index look-ups, errors, job display.

The model is loaded once per process (`st.cache_resource`) and shared by every session; switching
adapter or retrieval is a per-request argument to the engine, never a reload.
"""
from __future__ import annotations

import logging
import re
import time
from contextlib import contextmanager
from typing import Any, Iterator

import streamlit as st

from app.jobs import Job, runner

ADAPTER_OFF = "off"  # the adapter menus' entry for "no adapter"; it becomes None at this boundary
log = logging.getLogger("loracle.ui")


def engine_config():
    """EngineConfig from the defaults, the environment and the saved settings (default adapter)."""
    from app.config import EngineConfig
    from app.ui.settings import load_settings

    cfg = EngineConfig.from_env()
    default = load_settings().get("default_adapter")
    if default:
        cfg.default_adapter = default
    return cfg


@st.cache_resource(show_spinner="Loading the model (once per server process)...")
def get_engine():
    from app.engine import Engine, shared

    return shared() or Engine(engine_config())  # `loracle ui --api`: the API's engine, one queue for both


@st.cache_resource(show_spinner=False)
def start_background_builds() -> list[str]:
    """Once per server process started by `loracle ui`: build the missing shipped indexes (e.g. medquad) as
    background jobs; their progress shows on Home and Documents."""
    import os

    from app.cli_ui import BUILD_ENV
    from app.jobs import build_missing_indexes

    return [job.title for job in build_missing_indexes()] if os.environ.get(BUILD_ENV) == "1" else []


def engine_or_stop():
    """The shared engine, or a readable error and a stopped page when it cannot load."""
    start_background_builds()
    try:
        return get_engine()
    except Exception as exc:  # noqa: BLE001 - shown to the user, not raised
        log.exception("loading the model failed")
        st.error(f"The model could not be loaded: {exc}")
        st.stop()


@contextmanager
def friendly_errors(action: str) -> Iterator[None]:
    """Show any failure inside the block as one readable st.error line, never a traceback. The input errors
    the code raises on purpose (ValueError, FileNotFoundError: they name the value and the fix) are logged as
    one line; anything else goes to the "loracle.ui" log with its traceback, so the cause is not lost."""
    from app.scheduler import Busy

    try:
        yield
    except Busy as exc:  # the shared queue is full: not a failure of this request
        st.warning(f"The engine is busy answering other users. Try again in about {exc.retry_after:.0f} s.")
    except Exception as exc:  # noqa: BLE001
        message = str(exc) or type(exc).__name__
        if isinstance(exc, (ValueError, FileNotFoundError)):
            log.info("%s refused: %s", action, message)
        else:
            log.exception("%s failed", action)
        st.error(f"{action} failed: {message}")


def adapters() -> list[Any]:
    """Registered adapters (app.registry.AdapterInfo), newest registry state every run."""
    from app.config import adapters_dir
    from app.registry import list_adapters

    try:
        return list_adapters(adapters_dir())
    except FileNotFoundError:
        return []


def default_adapter_name() -> str | None:
    from app.ui.settings import load_settings

    names = [a.name for a in adapters()]
    preferred = load_settings().get("default_adapter") or engine_config().default_adapter
    if preferred in names:
        return preferred
    return names[0] if names else None


def indexes() -> list[str]:
    from ingest.index import list_indexes

    try:
        return list(list_indexes())
    except FileNotFoundError:
        return []


ADAPTER_AUTO = "auto (route per question)"


def adapter_picker(key: str, allow_off: bool = True, label: str = "Adapter", allow_auto: bool = False) -> str | None:
    """Selectbox of registered adapters (plus 'off', and 'auto' where routing is offered); returns the adapter
    name, "auto" or None."""
    from app.engine import AUTO

    names = [a.name for a in adapters()]
    options = ([ADAPTER_OFF] if allow_off else []) + names + ([ADAPTER_AUTO] if allow_auto and names else [])
    if not options:
        st.warning("No adapter is registered yet: train one on the Adapters page.")
        return None
    default = default_adapter_name()
    index = options.index(default) if default in options else 0
    choice = st.selectbox(label, options, index=index, key=key, help="A LoRA adapter over the same base model; switching never reloads the model.")
    return None if choice == ADAPTER_OFF else AUTO if choice == ADAPTER_AUTO else choice


def route_view(answer: Any) -> None:
    """Where adapter="auto" sent the question, and any fallback the engine made (disabled/failing adapter)."""
    if getattr(answer, "route", None):
        target = answer.route["adapter"]
        if target:
            st.caption(f"routed to **{target}** (score {answer.route['score']:.2f})")
        else:
            st.warning(f"No adapter covers this question (best match {answer.route['score']:.2f}): the base model "
                       "answered on its own, and it knows little. Treat this answer, and any yes/no decision, with "
                       "caution.")
    for note in getattr(answer, "notes", None) or []:
        st.warning(note)


CARD_INDEX = "the adapter's"  # index_picker's first choice: each answer searches its adapter card's index


def index_picker(key: str, label: str = "Index", card_choice: bool = False) -> str | None:
    """The index a page searches (None: no index exists). With `card_choice`, the first and default option is
    CARD_INDEX: an answer with an adapter searches the index its card names (it was trained with), the others the
    configured one; pass the choice through `index_arg`."""
    names = indexes()
    if not names:
        return None
    preferred = engine_config().index
    if card_choice:
        return st.selectbox(label, [CARD_INDEX, *names], key=key, format_func=lambda n: (
            f"the adapter's (its card's index, else {preferred})" if n == CARD_INDEX else n),
            help="An adapter card names the index it was trained with; pick another index to override it.")
    return st.selectbox(label, names, index=names.index(preferred) if preferred in names else 0, key=key)


def index_arg(choice: str | None) -> str | None:
    """index_picker's choice as the engine's `index`: None lets each request use its adapter card's index."""
    return None if choice == CARD_INDEX else choice


def md_escape(text: str) -> str:
    """Model output and user text shown through st.markdown as text: no links, images or markup.

    (st.markdown already refuses raw HTML; a Markdown image in a poisoned answer would still make
    the browser fetch a URL.)"""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


def passage_view(passages: list[Any], cited: set[int] | None = None) -> None:
    """Each passage: source document, location, score; the chunk text as plain text (never HTML)."""
    for p in passages:
        mark = " (cited)" if cited and p.rank in cited else ""
        meta = p.chunk.metadata
        where = meta.get("location") or f"chars {p.chunk.start}-{p.chunk.end}"
        title = f"[{p.rank}] {p.chunk.doc_id} · {where} · score {p.score:.3f}{mark}"
        with st.expander(title):
            st.caption(f"source: {meta.get('source', p.chunk.doc_id)} · chunk {p.chunk.chunk_id}")
            st.code(p.chunk.text, language=None, wrap_lines=True)


KEPT_WIDGETS = (  # page settings a visit to another page must not reset
    "ask_adapter", "ask_retrieval", "ask_k", "ask_tokens", "ask_decide", "ask_calibrate", "ask_index", "question",
    "cmp_adapter", "cmp_index", "cmp_k", "cmp_tokens", "cmp_decide", "cmp_calibrate", "cmp_question",
    "eval_source", "eval_modes", "eval_adapter", "eval_index", "eval_k", "eval_limit", "eval_decisions",
    "eval_calibrate", "eval_few_shot", "eval_tokens")


def keep_widgets() -> None:
    """Call at the top of every page, before its widgets: the settings of every page (KEPT_WIDGETS) survive a
    visit to another one. Streamlit forgets a widget's value when a run does not draw it, unless the value was
    assigned through session_state in that run (its documented multipage pattern)."""
    for key in KEPT_WIDGETS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


NOT_ADVICE = ("Answers come from a small language model and the documents indexed here: they can be wrong and "
              "are not medical advice. Check them against the cited sources and ask a clinician.")


def question_limit() -> int:
    """The longest question the engine accepts (LORACLE_MAX_QUESTION_CHARS), for the question box."""
    from ingest.safety import SafetyLimits

    return SafetyLimits.from_env().max_question_chars


def feedback_controls(answer: Any, key: str, compact: bool = False) -> None:
    """Thumbs up/down with an optional comment, appended to the feedback log (app.feedback)."""
    from app import feedback

    done = st.session_state.setdefault("feedback_done", set())
    if key in done:
        st.caption("Feedback saved. Thank you.")
        return
    if compact:  # narrow containers: comment on its own line, buttons below
        c1, (c2, c3) = st.container(), st.columns(2)
    else:
        c1, c2, c3 = st.columns([4, 1, 1])
    comment = c1.text_input("Comment (optional)", key=f"fb_comment_{key}", label_visibility="collapsed",
                            placeholder="Optional comment for the feedback log")
    for col, rating, label in ((c2, "up", "Good"), (c3, "down", "Bad")):
        if col.button(label, key=f"fb_{rating}_{key}", icon=f":material/thumb_{rating}:", help=f"Rate this answer: {label.lower()}"):
            with friendly_errors("Saving feedback"):
                feedback.record(answer, rating, comment)
                if getattr(answer, "answer_id", ""):  # the audit log row of this answer gets the rating too
                    get_engine().audit.feedback(answer.answer_id, rating, comment)
                done.add(key)
                st.success("Feedback saved. Thank you.")


DECISION_CHOICES = {"auto": None, "on": True, "off": False}


def decision_controls(key: str):
    """(decide, calibrate) from two small controls: decision auto/on/off and calibration on/off."""
    left, right = st.columns(2)
    with left:
        choice = st.radio("Yes/no/maybe decision", list(DECISION_CHOICES), horizontal=True, key=f"{key}_decide",
                          help="auto: scored when the question reads as a yes/no question; on/off forces it")
    with right:
        calibrate = st.toggle("Calibrated", value=True, key=f"{key}_calibrate",
                              help="apply the offsets stored with the adapter / base model to the option scores")
    return DECISION_CHOICES[choice], calibrate


def decision_view(answer: Any, compact: bool = False) -> None:
    """The decision with its three probabilities as small bars, and the calibration used."""
    d = getattr(answer, "decision", None)
    if d is None:
        return
    if not d.probs:
        st.markdown(f"**Decision: {d.label.upper()}** (read from the text)")
        return
    st.markdown(f"**Decision: {d.label.upper()}** ({d.probs[d.label] * 100:.0f}%)")
    for option, p in d.probs.items():
        st.progress(min(1.0, max(0.0, float(p))), text=f"{option} {p * 100:.0f}%")
    if not compact:
        st.caption(f"calibration: {d.calibration}" if d.calibration else
                   "calibration: none, raw scores (switched off, or no offsets stored for this mode and adapter)")


def settings_line(answer: Any) -> str:
    s = getattr(answer, "settings", None) or {}
    if not s or not getattr(answer, "passages", None):
        return ""
    src = s.get("source", {}).get("k", "")
    chars = f"{s['passage_chars']} chars each" if s.get("passage_chars") else "whole"
    return f"k={s.get('k')}, passages {chars}, index {s.get('index')} ({src})"


def timings_line(timings: dict[str, float]) -> str:
    parts = []
    if timings.get("retrieval_s"):  # 0 in the modes that do not retrieve
        parts.append(f"retrieval {timings['retrieval_s'] * 1000:.0f} ms")
    if "generation_s" in timings:
        parts.append(f"generation {timings['generation_s']:.2f} s")
    if "tokens_per_s" in timings:
        parts.append(f"{timings['tokens_per_s']:.1f} tokens/s")
    if "new_tokens" in timings:
        parts.append(f"{int(timings['new_tokens'])} new tokens")
    return " · ".join(parts)


def seed_of_step(step: int, total: int, seeds: int, first_seed: int) -> tuple[int, int, int]:
    """(seed, step within that seed, steps per seed) for a step of `train --seeds`, whose progress counts
    the seeds' steps one after another (app.train.train_seeds)."""
    per_seed = max(1, total // max(1, seeds))
    i = min(max(1, seeds) - 1, max(0, step - 1) // per_seed)
    return first_seed + i, step - i * per_seed, per_seed


def loss_frame(metrics: list[dict]):
    """Training losses by step, one column per series (one per seed of a `--seeds` run), or None."""
    losses = [m for m in metrics if "loss" in m and "step" in m]
    if not losses:
        return None
    import pandas as pd

    frame = pd.DataFrame(losses)
    if "series" not in frame or frame["series"].nunique() < 2:
        return frame.set_index("step")[["loss"]]
    return frame.pivot_table(index="step", columns="series", values="loss", aggfunc="last")


def follow_job(job: Job, poll_s: float = 0.3, loss_chart: bool = False, cancellable: bool = False) -> Job:
    """Show a job's progress live until it ends. The job runs in its own thread: leaving the
    page stops only this display, the work goes on and the page re-attaches when you come back.
    With `cancellable`, a Cancel button stops it at its next step."""
    if cancellable and job.active and st.button("Cancel", key=f"cancel_{job.id}", help="Stop this job at its next "
                                                "step; nothing it would have installed or written is kept"):
        runner().cancel(job.id)
    bar = st.progress(job.progress, text=f"{job.title}: {job.message or job.status}")
    chart = st.empty() if loss_chart else None
    shown = -1
    while True:
        current = runner().get(job.id)
        bar.progress(current.progress, text=f"{current.title}: {current.message or current.status} ({current.elapsed_s:.0f} s)")
        if chart is not None and len(current.metrics) != shown:
            shown = len(current.metrics)
            frame = loss_frame(current.metrics)
            if frame is not None:
                chart.line_chart(frame, height=220)
        if not current.active:
            break
        time.sleep(poll_s)
    if current.status == "failed":
        st.error(f"{current.title} failed: {current.error}")
    elif current.status == "cancelled":
        st.warning(f"{current.title} was cancelled.")
    return current


def active_job(kind: str) -> Job | None:
    jobs = runner().active(kind)
    return jobs[0] if jobs else None


def recent_jobs_table(kind: str | None = None) -> None:
    jobs = runner().list(kind)
    if not jobs:
        return
    import pandas as pd

    rows = [
        {"job": j.title, "kind": j.kind, "status": j.status, "progress": f"{j.progress:.0%}",
         "elapsed_s": round(j.elapsed_s, 1), "message": j.error or j.message}
        for j in jobs
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
