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
    assert len(at.get("page_link")) == 6
    assert not at.error


def test_ask_toggles_change_the_mode_used_without_reloading(ui_env):
    from app.config import EngineConfig
    from app.ui.state import CARD_INDEX, get_engine

    at = page("pages/1_Ask.py")
    assert at.selectbox(key="ask_adapter").options == ["off", ADAPTER, "auto (route per question)"]
    assert at.selectbox(key="ask_adapter").value == ADAPTER  # the default adapter is preselected
    assert at.toggle(key="ask_retrieval").value is True
    assert at.selectbox(key="ask_index").value == CARD_INDEX  # each answer: its adapter card's index, else INDEX
    engine, model = get_engine(), get_engine().model

    a = ask(at, "Does aspirin reduce the risk of heart attack?", "off", False)
    assert (a.mode, a.adapter, a.passages) == ("base", None, [])
    a = ask(at, "Does aspirin reduce the risk of heart attack?", ADAPTER, False)
    assert (a.mode, a.adapter) == ("lora", f"{ADAPTER}@v1")
    a = ask(at, "Is vitamin D useful in the elderly?", "off", True)
    assert a.mode == "rag" and a.adapter is None and len(a.passages) == EngineConfig().k  # the default k
    assert a.settings["index"] == INDEX and a.settings["source"]["index"] == "engine config"
    at.number_input(key="ask_k").set_value(2)
    a = ask(at, "Is vitamin D useful in the elderly?", ADAPTER, True)
    assert a.mode == "lora+rag" and len(a.passages) == 2
    assert all(p.chunk.doc_id for p in a.passages)
    assert len(at.session_state["history"]) == 4
    assert len(at.expander) >= 2 and at.code  # passages expandable, chunk shown as plain text
    at.number_input(key="ask_tokens").set_value(16)
    a = ask(at, "Does aspirin reduce the risk of heart attack?", "off", False)
    assert a.settings["max_new_tokens"] == 16 and a.timings["new_tokens"] <= 16
    assert get_engine() is engine and engine.model is model  # switching never reloaded anything


def test_settings_survive_another_page_and_answers_after_clear_history_can_be_rated(ui_env):
    at = page("Home.py")  # pages are switched from the main script, as in the browser
    at.switch_page("pages/1_Ask.py").run()
    at.number_input(key="ask_tokens").set_value(8)
    at.toggle(key="ask_retrieval").set_value(False)
    at.run()
    at.switch_page("pages/2_Compare.py").run()
    assert not at.exception and at.title[0].value == "Compare the four modes"
    at.switch_page("pages/1_Ask.py").run()
    assert not at.exception and not at.warning  # no "created with a default value" warning either
    assert (at.number_input(key="ask_tokens").value, at.toggle(key="ask_retrieval").value) == (8, False)

    for question in ("Does aspirin help?", "Do statins help?"):
        answer = ask(at, question, "off", False)
        assert answer.settings["max_new_tokens"] == 8
    at.button(key=f"fb_up_{answer.answer_id}").click().run()
    at.button(key="clear_history").click().run()
    answer = ask(at, "Is coffee safe?", "off", False)
    assert at.button(key=f"fb_up_{answer.answer_id}")  # a fresh answer gets fresh Good / Bad buttons


def test_ask_auto_routes_per_question_and_says_where(ui_env):
    from app import registry, routing
    from app.ui.state import get_engine

    engine = get_engine()
    routing.build_summary(registry.get(ADAPTER, engine.root).path,
                          ["Does aspirin reduce the risk of heart attack?", "Do statins prevent stroke in the elderly?",
                           "Is vitamin D useful for preventing falls?", "Does smoking cessation improve lung function?",
                           "Are beta blockers safe after myocardial infarction?"])
    engine.reload_router()
    at = page("pages/1_Ask.py")
    a = ask(at, "Does aspirin lower the risk of a heart attack?", "auto (route per question)", False)
    assert (a.mode, a.route["adapter"]) == ("lora", ADAPTER) and a.route["score"] >= engine.router().threshold
    assert any(f"routed to **{ADAPTER}**" in c.value for c in at.caption)
    a = ask(at, "What is the offside rule in football?", "auto (route per question)", False)
    assert (a.mode, a.route["adapter"]) == ("base", None)
    assert any("No adapter covers this question" in w.value for w in at.warning)  # not a quiet caption
    row = engine.audit.answers()[-1]  # the audit log has the routed answer, flagged out of scope
    assert row["id"] == a.answer_id and row["out_of_scope"] == 1 and row["entry_point"] == "ui"
    registry.disable(ADAPTER, engine.root, reason="review", who="test")
    try:  # its own question now goes elsewhere (here: nowhere), and the answer says why
        a = ask(at, "Does aspirin lower the risk of a heart attack?", "auto (route per question)", False)
        assert a.mode == "base" and any(f"{ADAPTER} is disabled and was not considered" in n for n in a.notes)
        assert any("was not considered" in w.value for w in at.warning)
    finally:
        registry.enable(ADAPTER, engine.root, who="test")


def test_feedback_is_logged_with_mode_adapter_and_passages(ui_env):
    from app import feedback

    at = page("pages/1_Ask.py")
    a = ask(at, "Is vitamin D useful in the elderly?", ADAPTER, True)
    at.text_input(key=f"fb_comment_{a.answer_id}").input("cites the right trial")
    at.button(key=f"fb_up_{a.answer_id}").click()
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


def test_a_refused_question_is_an_error_without_an_empty_answer(ui_env):
    at = page("pages/1_Ask.py")
    at.toggle(key="ask_retrieval").set_value(False)
    at.run()
    at.text_area(key="question").input("Is aspirin safe? " * 2000)
    at.button[0].click()
    at.run()
    assert at.error and not at.exception
    assert not at.get("chat_message")  # no answer bubble left empty above the error
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
    assert not any("tokens/s" in c.value for c in at.caption)  # one batch's rate is no mode's own speed
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
    assert at.success[0].value.startswith("Added 1 new document(s)")
    stored = next(d for d in Index.open(INDEX).documents() if d["doc_id"] == "zinc-note")
    assert stored["source"] == "upload: zinc-note.txt"  # its name, not the deleted temporary copy's path

    at.file_uploader(key="uploads").set_value([("only-bad.pdf", b"junk", "application/pdf")])
    at.run()
    at.button(key="add_docs").click()
    at.run()
    assert not at.success and at.warning and "Nothing was added" in at.warning[0].value

    at.selectbox(key="remove_doc").select("zinc-note")
    at.run()
    assert at.button(key="remove_btn").disabled  # choosing a document alone removes nothing
    at.checkbox(key="remove_sure_zinc-note").check()
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
    at.number_input(key="new_index_size").set_value(3000)
    at.number_input(key="new_index_overlap").set_value(0)
    at.button[0].click()
    at.run()
    assert "notes" in list_indexes() and not at.exception
    from ingest.index import Index

    ix = Index.open("notes")
    assert (ix.chunk_config.size, ix.chunk_config.overlap) == (3000, 0)  # the chunking asked for, kept for ingests
    ix.close()


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
    at.number_input(key="train_seeds").set_value(2)
    next(b for b in at.button if b.label == "Train").click()
    at.run(timeout=300)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert {a.name for a in list_adapters()} == {ADAPTER, "tiny-tuned"}  # two seeds, installed as one merge
    tuned = next(a for a in list_adapters() if a.name == "tiny-tuned")
    assert [m["hyperparameters"]["seed"] for m in tuned.card.extra["merged_from"]] == [0, 1]
    assert "qa.jsonl" in tuned.card.extra["merged_from"][0]["reproduce"]  # the upload's name, not a stand-in
    assert "tiny-tuned" in list(at.dataframe[0].value["name"])  # the page's table lists it once training ends
    job_id = at.session_state["train_job"]
    from app.jobs import runner

    job = runner().get(job_id)
    assert job.status == "done" and job.kind == "train"
    assert {m["series"] for m in job.metrics} == {"seed 0", "seed 1"}  # the loss chart draws one line per seed

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


def test_adapters_merge_form_installs_one_adapter_or_says_why_not(ui_env, tmp_path):
    import shutil

    from app import registry

    src = registry.get(ADAPTER)
    shutil.copytree(src.path, tmp_path / "copy", ignore=shutil.ignore_patterns("versions"))
    registry.install(tmp_path / "copy", "tiny-seed2", src.card, None)
    try:
        at = page("pages/4_Adapters.py")
        at.multiselect(key="merge_sources").set_value([ADAPTER])
        at.text_input(key="merge_name").input("tiny-ens")
        next(b for b in at.button if b.label == "Merge").click()
        at.run()
        assert at.error and "at least two" in at.error[0].value and not at.exception
        at.multiselect(key="merge_sources").set_value([ADAPTER, "tiny-seed2"])
        next(b for b in at.button if b.label == "Merge").click()
        at.run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        merged = registry.get("tiny-ens")
        assert merged.card.hyperparameters["sources"] == [f"{ADAPTER}@v1", "tiny-seed2@v1"]
    finally:
        for name in ("tiny-ens", "tiny-seed2"):
            if (registry.root_dir() / name).is_dir():
                registry.remove(name)


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
    good = json.dumps({"id": "q1", "question": "Is it?", "final_decision": "yes"})
    at.file_uploader(key="eval_upload").set_value(("mine.jsonl", f"{good}\n[1, 2]\n".encode(), "application/json"))
    next(b for b in at.button if b.label == "Run evaluation").click()
    at.run()
    assert at.error and not at.exception
    message = at.error[0].value
    assert "mine.jsonl" in message and "line 2" in message and "loracle-eval-" not in message  # not the temp copy


def test_a_second_evaluation_waits_for_the_running_one(ui_env):
    import threading

    from app.jobs import runner

    gate = threading.Event()
    running = runner().submit("evaluate", "evaluate first.jsonl (base)", lambda report: gate.wait(30))
    try:
        at = page("pages/5_Evaluate.py")
        next(b for b in at.button if b.label == "Run evaluation").click()
        at.run(timeout=60)
        assert any("already running (evaluate first.jsonl (base))" in e.value for e in at.error)
        assert "eval_job" not in at.session_state
    finally:
        gate.set()
        runner().wait(running.id, timeout=30)
    assert os.environ["LORACLE_INDEX"] == INDEX


def fill_audit_log():
    """A few answers (one out of scope, one rated) and an oversight event in the audit log the UI reads."""
    from app.audit import AuditLog
    from app.types import Answer

    log = AuditLog()
    for i, (mode, adapter, route) in enumerate([("base", None, None), ("lora", f"{ADAPTER}@v1", (ADAPTER, 0.61)),
                                                 ("lora+rag", f"{ADAPTER}@v1", (ADAPTER, 0.55)),
                                                 ("base", None, (None, 0.12))]):
        answer = Answer(text="Yes.", mode=mode, adapter=adapter, question=f"question {i}: how do I bake bread?",
                        timings={"prompt_tokens": 50, "new_tokens": 8})
        aid = log.record(answer, "ui", 0.5 + i, route=dict(zip(("adapter", "score"), route)) if route else None)
        if i == 1:
            log.feedback(aid, "up")
    log.event("disable", "some-adapter", "tester", "pre-filled for the Monitor page test")
    return log


def test_monitor_page_empty_then_filled(ui_env, monkeypatch, tmp_path):
    monkeypatch.setenv("LORACLE_AUDIT", str(tmp_path / "empty.sqlite"))
    at = page("pages/6_Monitor.py")
    assert any("audit log is empty" in i.value for i in at.info) and not at.error
    assert not (tmp_path / "empty.sqlite").exists()  # reading never creates the database

    monkeypatch.setenv("LORACLE_AUDIT", ui_env["LORACLE_AUDIT"])
    fill_audit_log()
    at = page("pages/6_Monitor.py")
    assert not at.error and not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Answers"]) >= 4 and metrics["Latency p50"].endswith(" s")
    rated = next(m for m in at.metric if m.label == "Rated good")
    assert not rated.delta  # a count is not a trend: no arrow
    assert any(c.value.endswith(f"of {metrics['Answers']} answers rated") for c in at.caption)  # 100% of how many
    frames = [df.value for df in at.dataframe]
    assert any("question 3: how do I bake bread?" in set(df.get("question", [])) for df in frames)  # drift list
    assert any("pre-filled for the Monitor page test" in set(df.get("why", [])) for df in frames)  # events table
    assert [b.label for b in at.get("download_button")] == ["Answers (CSV)", "Answers (JSON)", "Events (CSV)",
                                                            "Events (JSON)"]
    assert len(at.get("vega_lite_chart")) == 2  # volume over time, by mode and by adapter


def test_adapters_oversight_lineage_and_bias_probe(ui_env, tmp_path):
    from app import bias, registry
    from app.audit import AuditLog
    from tests.tiny_adapter import card_for, make_adapter

    base = Path(ui_env["LORACLE_BASE_MODEL"])
    name = "oversight-demo"
    for seed in (1, 2):
        registry.install(make_adapter(base, tmp_path / f"s{seed}", seed=seed), name, card_for(base))
        registry.record_eval(name, {"lora": {"accuracy": 0.4 + seed / 10, "macro_f1": 0.2 + seed / 10}})
    probe = {"pairs": 2, "modes": {"lora": {"flip_rate": 0.5, "flips": 1, "pairs": 2, "mean_abs_dp_yes": 0.1,
                                            "by_dimension": {"sex": {"flips": 1, "pairs": 2, "flip_rate": 0.5}},
                                            "examples": [{"a": "q men", "b": "q women", "label_a": "yes",
                                                          "label_b": "no"}]}}}
    bias.record(name, probe)
    try:
        at = page("pages/4_Adapters.py")
        at.selectbox(key="card_adapter").select(name)
        at.run()
        dot = at.get("graphviz_chart")[0].proto.spec
        assert '"oversight-demo@v1" -> "oversight-demo@v2" [label="lora F1 +0.100"]' in dot
        assert any("flip rate" in df.value.columns for df in at.dataframe)  # the bias probe table
        assert at.selectbox(key="ovs_version").options == ["v1"]

        at.button(key="ovs_toggle").click()  # no reason: refused
        at.run()
        assert at.error and "Give a reason" in at.error[0].value and not registry.is_disabled(name)
        at.text_input(key="ovs_reason").input("answers about dosing look wrong")
        at.text_input(key="ovs_who").input("tester")
        at.button(key="ovs_toggle").click()
        at.run()
        assert registry.is_disabled(name) and not at.exception
        assert at.warning and "disabled" in at.warning[0].value
        assert list(at.dataframe[0].value.set_index("name")["status"][[name]]) == ["disabled"]
        assert at.button(key="ovs_toggle").label == "Enable"
        assert at.text_input(key="ovs_reason").value == ""  # the next change needs its own reason
        at.text_input(key="ovs_reason").input("checked again: fine")
        at.button(key="ovs_toggle").click()
        at.run()
        assert not registry.is_disabled(name)

        at.selectbox(key="ovs_version").select(1)
        at.text_input(key="ovs_reason").input("v2 regressed")
        at.button(key="ovs_rollback").click()
        at.run()
        assert not at.exception and not at.error
        current = registry.get(name)
        assert current.version == 3 and current.card.parent == {"name": name, "version": 1, "rollback": True}
        assert at.success and "current again as oversight-demo@v3" in at.success[0].value
        assert "dashed" in at.get("graphviz_chart")[0].proto.spec
        events = [(e["kind"], e["target"], e["who"], e["why"]) for e in AuditLog().events(limit=3)]
        assert events == [("rollback", name, "tester", "v2 regressed"), ("enable", name, "tester", "checked again: fine"),
                          ("disable", name, "tester", "answers about dosing look wrong")]
    finally:
        registry.remove(name)


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
