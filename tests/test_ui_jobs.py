"""Background jobs, the feedback log, UI settings and the `loracle ui` command: no Streamlit, no model."""
from __future__ import annotations

import json
import threading

import pytest

from app import feedback
from app.jobs import JobRunner, runner
from app.types import Answer, Citation, Passage
from app.ui.settings import load_settings, save_settings
from app.ui.state import loss_frame, seed_of_step, settings_line, timings_line
from ingest.types import Chunk


def test_job_reports_progress_and_result_readable_from_another_thread():
    jobs = JobRunner()
    gate = threading.Event()

    def work(report):
        report.steps(1, 4, "one", step=1, loss=2.0)
        gate.wait(5)
        report.steps(4, 4, "done", step=4, loss=1.0)
        return "finished"

    job = jobs.submit("train", "demo", work)
    for _ in range(1000):  # progress is visible while the job is still running
        if jobs.get(job.id).progress == 0.25:
            break
        threading.Event().wait(0.01)
    seen = jobs.get(job.id)
    assert seen.status == "running" and seen.progress == 0.25 and seen.message == "one"
    assert jobs.active("train") == [seen] and jobs.active("ingest") == []
    gate.set()
    done = jobs.wait(job.id, timeout=5)
    assert (done.status, done.result, done.progress) == ("done", "finished", 1.0)
    assert [m["loss"] for m in done.metrics] == [2.0, 1.0] and done.elapsed_s >= 0
    assert jobs.active() == []


def test_failed_job_keeps_a_readable_error_and_the_runner_survives():
    jobs = JobRunner()

    def bad(report):
        raise ValueError("index 'x' does not exist; create it first")

    job = jobs.wait(jobs.submit("ingest", "bad", bad).id, timeout=5)
    assert job.status == "failed"
    assert job.error == "ValueError: index 'x' does not exist; create it first"
    assert "Traceback" in job.detail
    assert jobs.wait(jobs.submit("ingest", "ok", lambda r: 1).id, timeout=5).result == 1
    with pytest.raises(KeyError, match="no job with id 'nope'"):
        jobs.get("nope")


def test_a_cancelled_job_stops_at_its_next_report():
    jobs = JobRunner()
    started, reached = threading.Event(), []

    def work(report):
        for step in range(1, 1000):
            report.steps(step, 1000, f"step {step}")
            reached.append(step)
            started.set()
            threading.Event().wait(0.01)
        return "finished"

    job = jobs.submit("evaluate", "long", work)
    assert started.wait(5)
    jobs.cancel(job.id)
    done = jobs.wait(job.id, timeout=5)
    assert (done.status, done.result, done.error) == ("cancelled", None, "cancelled before it finished")
    assert not done.active and len(reached) < 999
    assert jobs.cancel(job.id).status == "cancelled"  # cancelling an ended job changes nothing


def test_runner_is_one_per_process_and_trims_old_finished_jobs():
    assert runner() is runner()
    jobs = JobRunner(max_history=3)
    for i in range(6):
        assert jobs.wait(jobs.submit("x", f"j{i}", lambda r: None).id, timeout=5).status == "done"
    assert len(jobs.list()) <= 4 and jobs.list()[0].title == "j5"


def _answer() -> Answer:
    chunk = Chunk("pubmed-1#0", "pubmed-1", "Aspirin lowers risk.", 0, 20, {"source": "docs/pubmed-1.txt", "location": "p. 1"})
    p = Passage(chunk, 0.83, 1)
    return Answer("Yes. Aspirin helps [1].", "lora+rag", "medical-pubmedqa@v2", [p], [Citation(1, True, p)],
                  {"generation_s": 0.5}, question="Does aspirin help?")


def test_feedback_log_stores_question_mode_adapter_passages_and_exports(tmp_path):
    log = tmp_path / "fb" / "feedback.jsonl"
    audited = _answer()
    audited.answer_id = "a1b2c3"  # the audit log's row of this answer: feedback joins to it
    feedback.record(audited, "up", "  clear answer ", path=log)
    feedback.record(_answer(), "down", path=log)
    entries = feedback.load(log)
    assert [e["rating"] for e in entries] == ["up", "down"]
    assert [e["answer_id"] for e in entries] == ["a1b2c3", None]
    assert feedback.export_csv(entries).splitlines()[1].endswith(",a1b2c3")
    first = entries[0]
    assert (first["question"], first["mode"], first["adapter"], first["comment"]) == (
        "Does aspirin help?", "lora+rag", "medical-pubmedqa@v2", "clear answer")
    assert first["passages"] == [{"rank": 1, "score": 0.83, "doc_id": "pubmed-1", "chunk_id": "pubmed-1#0",
                                  "source": "docs/pubmed-1.txt", "location": "p. 1"}]
    assert first["time"].endswith("Z")
    assert json.loads(feedback.export_json(entries))[1]["rating"] == "down"
    csv_text = feedback.export_csv(entries)
    assert csv_text.splitlines()[0].startswith("id,time,rating,comment,question,mode,adapter")
    assert "pubmed-1" in csv_text.splitlines()[1]
    assert feedback.summary(entries) == {"lora+rag": {"up": 1, "down": 1}}


def test_feedback_rejects_unknown_rating_and_survives_a_damaged_line(tmp_path):
    log = tmp_path / "feedback.jsonl"
    with pytest.raises(ValueError, match="rating must be one of"):
        feedback.record(_answer(), "meh", path=log)
    feedback.record(_answer(), "up", path=log)
    with log.open("a") as fh:
        fh.write('{"half": ')
    assert len(feedback.load(log)) == 1


def test_feedback_default_path_follows_the_data_home(tmp_path, monkeypatch):
    monkeypatch.delenv("LORACLE_FEEDBACK", raising=False)
    monkeypatch.setenv("LORACLE_HOME", str(tmp_path))
    assert feedback.default_path() == tmp_path / "feedback" / "feedback.jsonl"


def test_settings_merge_persist_and_remove(tmp_path):
    path = tmp_path / "settings.json"
    assert load_settings(path) == {}
    save_settings({"default_adapter": "a"}, path)
    save_settings({"theme": "x"}, path)
    assert load_settings(path) == {"default_adapter": "a", "theme": "x"}
    save_settings({"theme": None}, path)
    assert json.loads(path.read_text()) == {"default_adapter": "a"}
    path.write_text("{broken")
    assert load_settings(path) == {}


def test_cli_ui_command_is_registered():
    from app.cli import build_parser

    args = build_parser().parse_args(["ui", "--port", "8600", "--index", "sample"])
    assert (args.port, args.index, args.func.__name__) == (8600, "sample", "_run_ui")


def test_friendly_errors_shows_one_line_and_logs_the_traceback(caplog):
    import logging

    from app.ui.state import friendly_errors

    with caplog.at_level(logging.ERROR, logger="loracle.ui"):
        with friendly_errors("Saving the default adapter"):
            {}["missing"]
    record = caplog.records[-1]
    assert record.name == "loracle.ui" and record.getMessage() == "Saving the default adapter failed"
    assert record.exc_info and record.exc_info[0] is KeyError
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="loracle.ui"):
        with friendly_errors("Creating the index"):  # an input error: one line, no traceback, not an ERROR
            raise ValueError("index name 'a b' is not valid")
    (record,) = [r for r in caplog.records if r.name == "loracle.ui"]
    assert record.levelno == logging.INFO and not record.exc_info
    assert record.getMessage() == "Creating the index refused: index name 'a b' is not valid"


def test_seeded_training_progress_is_split_into_one_loss_line_per_seed():
    # train --seeds 3 from seed 5 reports its 12 steps one seed after another: 4 per seed
    assert [seed_of_step(s, 12, 3, 5)[:2] for s in (1, 4, 5, 12)] == [(5, 1), (5, 4), (6, 1), (7, 4)]
    assert seed_of_step(3, 10, 1, 0) == (0, 3, 10)
    metrics = [{"step": step, "loss": 3.0 - 0.1 * step - seed, "series": f"seed {seed}"}
               for seed in (0, 1) for step in (1, 2)]
    frame = loss_frame(metrics)
    assert list(frame.columns) == ["seed 0", "seed 1"] and list(frame.index) == [1, 2]
    assert frame.loc[2, "seed 1"] == 3.0 - 0.2 - 1
    single = loss_frame([{"step": 1, "loss": 2.0, "series": "seed 0"}, {"step": 2, "loss": 1.5, "series": "seed 0"}])
    assert list(single.columns) == ["loss"] and list(single["loss"]) == [2.0, 1.5]
    assert loss_frame([{"step": 1}]) is None


def test_answer_settings_and_timings_lines_read_plainly():
    chunk = Chunk("d#0", "d", "text", 0, 4)
    whole = Answer("Yes.", "lora+rag", "med@v1", [Passage(chunk, 1.0, 1)], [],
                   settings={"k": 1, "passage_chars": None, "index": "pubmedqa-doc", "source": {"k": "adapter med@v1"}})
    assert settings_line(whole) == "k=1, passages whole, index pubmedqa-doc (adapter med@v1)"
    whole.settings["passage_chars"] = 450
    assert "passages 450 chars each" in settings_line(whole)
    assert timings_line({"retrieval_s": 0.0, "generation_s": 1.5}) == "generation 1.50 s"  # no retrieval in lora
    assert timings_line({"retrieval_s": 0.012, "generation_s": 1.5}).startswith("retrieval 12 ms")
