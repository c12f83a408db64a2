"""Streamlit AppTest for every page, on the tiny model + a real tiny adapter + a real small index.

Assertions look at what the engine really did (the recorded Answer.mode, passages, the index and the
registry on disk), not at rendered text.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.ui_setup import ADAPTER, INDEX, build_ui_home, sample_index_or_none

UI = Path(__file__).resolve().parents[1] / "app" / "ui"
TIMEOUT = 120


@pytest.fixture(scope="module")
def ui_env(tiny_model_dir, tmp_path_factory, request):
    import streamlit as st

    env = build_ui_home(tiny_model_dir, tmp_path_factory.mktemp("ui"), sample_index_or_none(request))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("LORACLE_FEEDBACK", raising=False)
        mp.delenv("LORACLE_SETTINGS", raising=False)
        st.cache_resource.clear()
        yield env
        st.cache_resource.clear()


def page(name: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(UI / name), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def ask(at, question: str, adapter: str, retrieval: bool):
    at.selectbox(key="ask_adapter").select(adapter)
    at.toggle(key="ask_retrieval").set_value(retrieval)
    at.run()
    at.text_area(key="question").input(question)
    at.button[0].click()  # the form's Ask button
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at.session_state["history"][-1]


def test_home_shows_status_and_links(ui_env):
    at = page("Home.py")
    assert at.title[0].value == "Loracle"
    assert [m.value for m in at.metric][1:] == ["1", "1"]  # adapters, indexes
    assert len(at.get("page_link")) == 5
    assert not at.error


def test_ask_toggles_change_the_mode_used_without_reloading(ui_env):
    from app.config import EngineConfig
    from app.ui.state import get_engine

    at = page("pages/1_Ask.py")
    assert at.selectbox(key="ask_adapter").options == ["off", ADAPTER]
    assert at.selectbox(key="ask_adapter").value == ADAPTER  # the default adapter is preselected
    assert at.toggle(key="ask_retrieval").value is True
    assert at.selectbox(key="ask_index").value == INDEX
    engine, model = get_engine(), get_engine().model

    a = ask(at, "Does aspirin reduce the risk of heart attack?", "off", False)
    assert (a.mode, a.adapter, a.passages) == ("base", None, [])
    a = ask(at, "Does aspirin reduce the risk of heart attack?", ADAPTER, False)
    assert (a.mode, a.adapter) == ("lora", f"{ADAPTER}@v1")
    a = ask(at, "Is vitamin D useful in the elderly?", "off", True)
    assert a.mode == "rag" and a.adapter is None and len(a.passages) == EngineConfig().k  # the default k
    at.number_input(key="ask_k").set_value(2)
    a = ask(at, "Is vitamin D useful in the elderly?", ADAPTER, True)
    assert a.mode == "lora+rag" and len(a.passages) == 2
    assert all(p.chunk.doc_id for p in a.passages)
    assert len(at.session_state["history"]) == 4
    assert len(at.expander) >= 2 and at.code  # passages expandable, chunk shown as plain text
    assert get_engine() is engine and engine.model is model  # switching never reloaded anything


def test_feedback_is_logged_with_mode_adapter_and_passages(ui_env):
    from app import feedback

    at = page("pages/1_Ask.py")
    a = ask(at, "Is vitamin D useful in the elderly?", ADAPTER, True)
    at.text_input(key="fb_comment_0").input("cites the right trial")
    at.button(key="fb_up_0").click()
    at.run()
    entries = feedback.load()
    assert Path(ui_env["LORACLE_HOME"]) / "feedback" / "feedback.jsonl" == feedback.default_path()
    last = entries[-1]
    assert (last["rating"], last["mode"], last["adapter"], last["comment"]) == (
        "up", "lora+rag", a.adapter, "cites the right trial")
    assert [p["chunk_id"] for p in last["passages"]] == [p.chunk.chunk_id for p in a.passages]
    assert at.success


def test_ask_errors_are_messages_not_tracebacks(ui_env):
    at = page("pages/1_Ask.py")
    at.text_area(key="question").input("   ")
    at.button[0].click()
    at.run()
    assert at.error and "question" in at.error[0].value and not at.exception
    assert at.session_state["history"] == []


def test_model_that_cannot_load_is_reported_in_the_page(ui_env, monkeypatch, tmp_path):
    import streamlit as st

    monkeypatch.setenv("LORACLE_BASE_MODEL", str(tmp_path / "no-such-model"))
    st.cache_resource.clear()
    try:
        at = page("pages/1_Ask.py")
        assert at.error and "could not be loaded" in at.error[0].value and "no-such-model" in at.error[0].value
    finally:
        monkeypatch.setenv("LORACLE_BASE_MODEL", ui_env["LORACLE_BASE_MODEL"])
        st.cache_resource.clear()


def test_compare_runs_all_four_modes_in_one_batch(ui_env):
    at = page("pages/2_Compare.py")
    assert at.selectbox(key="cmp_adapter").value == ADAPTER
    at.number_input(key="cmp_k").set_value(3)
    at.text_area(key="cmp_question").input("Does smoking cause lung cancer?")
    at.button[0].click()
    at.run()
    assert not at.exception and not at.error
    answers = at.session_state["comparison"]["answers"]
    assert {m: a.mode for m, a in answers.items()} == {m: m for m in ("base", "lora", "rag", "lora+rag")}
    assert {a.timings["batch_size"] for a in answers.values()} == {4}  # one batched pass
    assert len(answers["rag"].passages) == 3 and answers["base"].passages == []
    assert [b.label for b in at.get("download_button")] == ["Save comparison (JSON)"]
    from app import feedback

    at.button(key="fb_down_cmp1-rag").click()
    at.run()
    assert (feedback.load()[-1]["mode"], feedback.load()[-1]["rating"]) == ("rag", "down")


def test_documents_upload_lands_in_the_index_and_bad_files_are_listed(ui_env):
    from ingest.index import Index

    at = page("pages/3_Documents.py")
    assert at.selectbox(key="doc_index").value == INDEX
    before = {d["doc_id"] for d in Index.open(INDEX).documents()}
    note = b"Zinc lozenges shorten the common cold by about two days in adults.\n" * 3
    at.file_uploader(key="uploads").set_value([("zinc-note.txt", note, "text/plain"),
                                               ("broken.pdf", b"not a pdf at all", "application/pdf")])
    at.run()
    at.button(key="add_docs").click()
    at.run()
    assert not at.exception
    after = {d["doc_id"] for d in Index.open(INDEX).documents()}
    assert after - before == {"zinc-note"}
    assert at.error and "rejected" in at.error[0].value  # the bad PDF is listed with its reason
    assert any("broken.pdf" in str(df.value) for df in at.dataframe)

    at.selectbox(key="remove_doc").select("zinc-note")
    at.run()
    at.button(key="remove_btn").click()
    at.run()
    assert {d["doc_id"] for d in Index.open(INDEX).documents()} == before


def test_documents_create_index_and_reject_bad_name(ui_env):
    from ingest.index import list_indexes

    at = page("pages/3_Documents.py")
    at.text_input(key="new_index_name").input("../evil")
    at.button[0].click()
    at.run()
    assert at.error and "invalid index name" in at.error[0].value
    at.text_input(key="new_index_name").input("notes")
    at.button[0].click()
    at.run()
    assert "notes" in list_indexes() and not at.exception


def test_adapters_table_card_default_and_training_in_the_background(ui_env):
    from app.registry import list_adapters
    from app.ui.settings import load_settings

    at = page("pages/4_Adapters.py")
    table = at.dataframe[0].value
    assert list(table["name"]) == [ADAPTER] and "base model" in table.columns
    assert at.tabs and at.code  # card view with its card.json

    lines = [json.loads(x) for x in (SHARED_DATA / "sample" / "dev.jsonl").read_text().splitlines()[:4]]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    at.text_input(key="train_name").input("tiny-tuned")
    at.file_uploader(key="train_upload").set_value(("qa.jsonl", data, "application/json"))
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_rank").set_value(2)
    next(b for b in at.button if b.label == "Train").click()
    at.run(timeout=300)
    assert not at.exception and not at.error, [e.value for e in at.error]
    names = {a.name for a in list_adapters()}
    assert names == {ADAPTER, "tiny-tuned"}
    job_id = at.session_state["train_job"]
    from app.jobs import runner

    job = runner().get(job_id)
    assert job.status == "done" and job.kind == "train"

    at = page("pages/4_Adapters.py")
    at.selectbox(key="card_adapter").select("tiny-tuned")
    at.run()
    at.button(key="set_default").click()
    at.run()
    assert load_settings()["default_adapter"] == "tiny-tuned"
    at = page("pages/1_Ask.py")
    assert at.selectbox(key="ask_adapter").value == "tiny-tuned"


def test_adapters_training_error_shows_a_message(ui_env):
    at = page("pages/4_Adapters.py")
    at.text_input(key="train_name").input("bad name!")
    at.file_uploader(key="train_upload").set_value(("qa.jsonl", b'{"question": "q"}\n', "application/json"))
    next(b for b in at.button if b.label == "Train").click()
    at.run()
    assert at.error and "invalid adapter name" in at.error[0].value and not at.exception
    at.text_input(key="train_name").input("ok-name")
    at.file_uploader(key="train_upload").set_value(("qa.jsonl", b"{not json\n", "application/json"))
    next(b for b in at.button if b.label == "Train").click()
    at.run()
    assert at.error and "qa.jsonl, line 1: not valid JSON" in at.error[0].value


def test_evaluate_uploaded_set_gives_per_mode_results_and_downloads(ui_env):
    at = page("pages/5_Evaluate.py")
    assert at.multiselect(key="eval_modes").value == ["base", "lora", "rag", "lora+rag"]
    dev = (SHARED_DATA / "sample" / "dev.jsonl").read_bytes()
    at.radio(key="eval_source").set_value("Upload JSONL")
    at.file_uploader(key="eval_upload").set_value(("dev.jsonl", dev, "application/json"))
    at.multiselect(key="eval_modes").set_value(["base", "lora+rag"])
    at.number_input(key="eval_limit").set_value(2)
    next(b for b in at.button if b.label == "Run evaluation").click()
    at.run(timeout=300)
    assert not at.exception and not at.error, [e.value for e in at.error]
    from app.jobs import runner

    result = runner().get(at.session_state["eval_job"]).result
    assert {r["mode_used"] for r in result.rows} == {"base", "lora+rag"} and len(result.rows) == 4
    assert set(result.summary["metrics"]) == {"base", "lora+rag"}
    labels = [b.label for b in at.get("download_button")]
    assert "Download results (CSV)" in labels and "Download results (JSON)" in labels
    assert at.selectbox(key="eval_drill").options  # per-question drill-down


def test_evaluate_bad_upload_is_a_message(ui_env):
    at = page("pages/5_Evaluate.py")
    at.radio(key="eval_source").set_value("Upload JSONL")
    at.file_uploader(key="eval_upload").set_value(("dev.jsonl", b"[1, 2]\n", "application/json"))
    next(b for b in at.button if b.label == "Run evaluation").click()
    at.run()
    assert at.error and not at.exception
    assert os.environ["LORACLE_INDEX"] == INDEX


def test_empty_index_and_foreign_adapter_are_explained(ui_env, tmp_path):
    """Runs last: it adds an index and an adapter for another base model to the shared setup."""
    from app import registry
    from app.ui.state import get_engine
    from ingest.index import Index, list_indexes
    from tests.tiny_adapter import card_for, make_adapter

    if "empty" not in list_indexes():
        Index.create("empty").close()
    at = page("pages/1_Ask.py")
    at.selectbox(key="ask_index").select("empty")
    a = ask(at, "Is vitamin D useful in the elderly?", "off", True)
    assert a.passages == [] and a.mode == "base"
    assert any("no passages" in w.value for w in at.warning)

    card = card_for(Path(ui_env["LORACLE_BASE_MODEL"]))
    card["base_model"] = {"name": "SmolLM2-360M-Instruct", "sha256": "x"}
    registry.install(make_adapter(Path(ui_env["LORACLE_BASE_MODEL"]), tmp_path / "foreign"), "foreign", card)
    try:
        at = page("pages/1_Ask.py")
        at.selectbox(key="ask_adapter").select("foreign")
        at.toggle(key="ask_retrieval").set_value(False)
        at.run()
        at.text_area(key="question").input("Is tea good?")
        at.button[0].click()
        at.run()
        assert not at.exception
        assert at.error and "SmolLM2-360M-Instruct" in at.error[0].value and "tiny-llama" in at.error[0].value
        assert "foreign" not in get_engine().loaded_adapters()
    finally:
        registry.remove("foreign")


def test_model_output_is_shown_as_inert_text():
    import re

    from app.ui.state import md_escape

    poisoned = "Yes. ![t](http://attacker.example/x.png) see [here](http://x) <img src=x> **bold**"
    shown = md_escape(poisoned)
    assert not re.search(r"(?<!\\)!(?<!\\)\[", shown) and not re.search(r"(?<!\\)\]\(", shown)
    assert re.sub(r"\\(.)", r"\1", shown) == poisoned  # nothing lost: unescaping gives the text back
