"""The audit log: one row per answer given (UI, CLI, API, eval), the feedback on it, and the oversight
events (rollback, disable, enable; and registry changes: install of a trained or merged version, remove),
in one SQLite database in WAL mode.

Where: `<data home>/audit/audit.sqlite` (`ingest.config.home()`), or $LORACLE_AUDIT (a file path; "off"
disables the log). Every write is its own short transaction, so a writer killed at any moment leaves a
database that opens and holds every row committed before the kill (tests/test_audit.py kills one with
SIGKILL). One connection per `AuditLog`, shared by threads under a lock; several processes may write the
same file (WAL + busy timeout). The oldest answers beyond `retention` rows are pruned as rows are added.

With `hash_questions=True` the question text is never stored: the `question` column is NULL and
`question_hash` holds its sha256 (hex), so repeated questions can still be counted. No Streamlit here.

    log = AuditLog()
    answer_id = log.record(answer, "ui", latency_s=1.8, route={"adapter": "medical-pubmedqa", "score": 0.71})
    log.feedback(answer_id, "up", "cites the right trial")
    log.event("disable", "medical-pubmedqa", "alice", "answers about dosing look wrong")
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ENTRY_POINTS = ("ui", "cli", "api", "eval")
RATINGS = ("up", "down")
RECENT_OUT_OF_SCOPE = 10  # out-of-scope questions listed by stats()

_ANSWER_COLUMNS = (
    ("id", "TEXT NOT NULL UNIQUE"), ("time", "TEXT NOT NULL"), ("ts", "REAL NOT NULL"),
    ("entry_point", "TEXT NOT NULL"), ("question", "TEXT"), ("question_hash", "TEXT"), ("mode", "TEXT"),
    ("adapter", "TEXT"), ("index_name", "TEXT"), ("doc_ids", "TEXT"), ("decision", "TEXT"),
    ("decision_probs", "TEXT"), ("citations", "TEXT"), ("latency_s", "REAL"), ("prompt_tokens", "INTEGER"),
    ("new_tokens", "INTEGER"), ("routed", "INTEGER NOT NULL DEFAULT 0"), ("route_adapter", "TEXT"),
    ("route_score", "REAL"), ("out_of_scope", "INTEGER NOT NULL DEFAULT 0"), ("rating", "TEXT"),
    ("comment", "TEXT"), ("rated_time", "TEXT"),
    ("cancelled", "INTEGER NOT NULL DEFAULT 0"),  # the client stopped reading before the answer was complete
)
ANSWER_FIELDS = tuple(name for name, _ in _ANSWER_COLUMNS)
EVENT_FIELDS = ("id", "time", "ts", "kind", "target", "who", "why", "detail")
_JSON_FIELDS = ("doc_ids", "decision_probs", "citations", "detail")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS answers (seq INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{name} {kind}" for name, kind in _ANSWER_COLUMNS)});
CREATE INDEX IF NOT EXISTS answers_ts ON answers(ts);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL, who TEXT NOT NULL,
    why TEXT NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
INSERT OR IGNORE INTO meta VALUES ('format', '1');
"""


def current_user() -> str:
    """The OS user running this process: who an oversight change is attributed to unless someone is named."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def default_path() -> Path | None:
    """$LORACLE_AUDIT, else <data home>/audit/audit.sqlite; None when $LORACLE_AUDIT is "off"."""
    env = os.environ.get("LORACLE_AUDIT", "")
    if env.strip().lower() in ("off", "none", "0", "false"):
        return None
    if env:
        return Path(env).expanduser()
    from ingest.config import home

    return home() / "audit" / "audit.sqlite"


def registry_event(kind: str, name: str, detail: dict, why: str = "", who: str | None = None) -> str:
    """Record a registry change made from the CLI or UI ("install" of a trained or merged version, "remove")
    once it is done. The change has happened either way, so a log that cannot be written gives a warning on
    stderr, not an error. Returns the event id ("" when not recorded)."""
    import sys

    try:
        return AuditLog().event(kind, name, who or current_user(), why, detail)
    except (OSError, ValueError, sqlite3.Error) as exc:
        print(f"warning: {kind} of '{name}' not recorded in the audit log: {exc}", file=sys.stderr)
        return ""


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet will show as text, not run as a formula (OWASP "CSV injection"): text that
    starts with = + - @, a tab or a carriage return gets a leading apostrophe; numbers stay as they are.
    Questions and comments are untrusted input, and audit and feedback exports are opened in spreadsheets."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def _utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _route_fields(route: Any) -> tuple[int, str | None, float | None, int]:
    """(routed, adapter, score, out_of_scope) from a route dict or an app.routing.Route."""
    if route is None:
        return 0, None, None, 0
    get = route.get if isinstance(route, dict) else (lambda key, default=None: getattr(route, key, default))
    adapter, score = get("adapter"), get("score")
    return 1, (str(adapter) if adapter else None), (None if score is None else float(score)), int(not adapter)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class AuditLog:
    """The audit database. `enabled=False` (or $LORACLE_AUDIT=off with no path) records nothing:
    `record` returns "", reads return empty lists, no file is created."""

    def __init__(self, path: str | Path | None = None, retention: int = 100_000, hash_questions: bool = False,
                 enabled: bool = True):
        if retention < 1:
            raise ValueError(f"retention {retention} must be at least 1 answer row")
        self.path = Path(path).expanduser() if path else default_path()
        self.enabled = bool(enabled) and self.path is not None
        self.retention, self.hash_questions = int(retention), bool(hash_questions)
        self.prune_every = max(1, min(100, self.retention // 10))  # the table never exceeds retention by >10%
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._writes = 0

    # --- connection -----------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses no commit
            conn.execute("PRAGMA busy_timeout=10000")
            with conn:
                conn.executescript(_SCHEMA)
                have = {row["name"] for row in conn.execute("PRAGMA table_info(answers)")}
                for name, kind in _ANSWER_COLUMNS:  # a log written by an earlier version gains the new columns
                    if name not in have:
                        conn.execute(f"ALTER TABLE answers ADD COLUMN {name} {kind}")
            self._conn = conn
        return self._conn

    def check(self) -> None:
        """Open the log now, so that a log that cannot be written stops a server at start rather than leaving
        every answer unaudited (a write failing later is logged, and the answer still goes out)."""
        if not self.enabled:
            return
        try:
            with self._lock:
                self._db()
        except (OSError, sqlite3.Error) as exc:
            raise ValueError(f"the audit log {self.path} cannot be written ({exc}); set LORACLE_AUDIT to a writable "
                             "file, or turn auditing off with --no-audit (or LORACLE_AUDIT=off)") from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, sql: str, params: tuple) -> sqlite3.Cursor:
        with self._lock:
            conn = self._db()
            with conn:  # one short transaction per write
                return conn.execute(sql, params)

    def _read(self, sql: str, params: tuple = ()) -> list[dict]:
        if not self.enabled or not (self._conn is not None or self.path.exists()):
            return []
        with self._lock:
            rows = self._db().execute(sql, params).fetchall()
        out = []
        for row in rows:
            item = {k: row[k] for k in row.keys() if k != "seq"}
            for key in _JSON_FIELDS:
                if item.get(key) is not None:
                    try:
                        item[key] = json.loads(item[key])
                    except ValueError:
                        pass
            out.append(item)
        return out

    # --- writes ---------------------------------------------------------------------------------
    def record(self, answer: Any, entry_point: str, latency_s: float, route: Any = None,
               cancelled: bool = False) -> str:
        """Store one answer (an app.types.Answer); returns its id (uuid4 hex), "" when the log is disabled.
        `route` is {"adapter": name or None, "score": float} (or an app.routing.Route) when the question
        was routed; a route to no adapter marks the question out of scope. `cancelled`: the client went away
        before the answer was complete (the row holds what was generated by then)."""
        if not self.enabled:
            return ""
        if entry_point not in ENTRY_POINTS:
            raise ValueError(f"entry_point must be one of {ENTRY_POINTS}, got {entry_point!r}")
        now = time.time()
        question = str(getattr(answer, "question", "") or "")
        digest = hashlib.sha256(question.encode("utf-8")).hexdigest()
        passages = list(getattr(answer, "passages", None) or [])
        settings = getattr(answer, "settings", None) or {}
        decision = getattr(answer, "decision", None)
        timings = getattr(answer, "timings", None) or {}
        cited = [int(c.number) for c in (getattr(answer, "citations", None) or []) if getattr(c, "valid", False)]
        routed, route_adapter, route_score, out_of_scope = _route_fields(route)
        tokens = {k: (int(timings[k]) if timings.get(k) is not None else None) for k in ("prompt_tokens", "new_tokens")}
        answer_id = uuid.uuid4().hex
        values = {
            "id": answer_id, "time": _utc(now), "ts": now, "entry_point": entry_point,
            "question": None if self.hash_questions else question, "question_hash": digest,
            "mode": getattr(answer, "mode", None), "adapter": getattr(answer, "adapter", None) or None,
            "index_name": settings.get("index") if passages else None,
            "doc_ids": _jsonable([p.chunk.doc_id for p in passages]),
            "decision": decision.label if decision is not None else None,
            "decision_probs": _jsonable(dict(decision.probs)) if decision is not None else None,
            "citations": _jsonable(cited), "latency_s": float(latency_s), **tokens,
            "routed": routed, "route_adapter": route_adapter, "route_score": route_score, "out_of_scope": out_of_scope,
            "cancelled": int(bool(cancelled)),
        }
        self._write(f"INSERT INTO answers ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                    tuple(values.values()))
        self._writes += 1
        if self._writes % self.prune_every == 0:
            self.prune()
        return answer_id

    def feedback(self, answer_id: str, rating: str, comment: str = "") -> None:
        """Attach a rating ("up" or "down") and an optional comment to a recorded answer (the latest wins)."""
        if not self.enabled:
            return
        if rating not in RATINGS:
            raise ValueError(f"rating must be one of {RATINGS}, got {rating!r}")
        cur = self._write("UPDATE answers SET rating = ?, comment = ?, rated_time = ? WHERE id = ?",
                          (rating, (comment or "").strip(), _utc(time.time()), str(answer_id)))
        if cur.rowcount == 0:
            raise ValueError(f"no answer with id {answer_id!r} in the audit log {self.path} "
                             f"(it may have been pruned, or the id is wrong)")

    def event(self, kind: str, target: str, who: str, why: str, detail: dict | None = None) -> str:
        """Record an oversight change (e.g. kind "rollback", "disable", "enable"; target "medical-pubmedqa");
        returns the event id ("" when disabled)."""
        if not self.enabled:
            return ""
        if not str(kind).strip() or not str(target).strip():
            raise ValueError("an oversight event needs a kind and a target")
        now, event_id = time.time(), uuid.uuid4().hex
        self._write("INSERT INTO events (id, time, ts, kind, target, who, why, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (event_id, _utc(now), now, str(kind), str(target), str(who or ""), str(why or ""),
                     _jsonable(detail)))
        return event_id

    def prune(self) -> int:
        """Drop the oldest answer rows beyond `retention`; returns how many were dropped. Events are kept."""
        if not self.enabled or not (self._conn is not None or self.path.exists()):
            return 0
        cur = self._write("DELETE FROM answers WHERE seq <= (SELECT seq FROM answers ORDER BY seq DESC "
                          "LIMIT 1 OFFSET ?)", (self.retention,))
        return max(0, cur.rowcount)

    # --- reads ----------------------------------------------------------------------------------
    def answers(self, since: float | None = None, limit: int | None = None) -> list[dict]:
        """Answer rows, oldest first (JSON columns decoded): those at or after epoch `since`, the latest
        `limit` of them."""
        where, params = ("WHERE ts >= ?", (float(since),)) if since is not None else ("", ())
        if limit is None:
            return self._read(f"SELECT * FROM answers {where} ORDER BY seq", params)
        rows = self._read(f"SELECT * FROM answers {where} ORDER BY seq DESC LIMIT ?", params + (int(limit),))
        return rows[::-1]

    def events(self, limit: int | None = None) -> list[dict]:
        """Oversight events, newest first (the latest `limit`)."""
        if limit is None:
            return self._read("SELECT * FROM events ORDER BY seq DESC")
        return self._read("SELECT * FROM events ORDER BY seq DESC LIMIT ?", (int(limit),))

    def export_text(self, fmt: str = "csv", table: str = "answers") -> tuple[str, int]:
        """(file content, rows) of a table ("answers" or "events") as CSV or JSON (a list of objects)."""
        if fmt not in ("csv", "json"):
            raise ValueError(f"export format must be 'csv' or 'json', got {fmt!r}")
        if table not in ("answers", "events"):
            raise ValueError(f"table must be 'answers' or 'events', got {table!r}")
        rows = self.answers() if table == "answers" else self.events()[::-1]
        if fmt == "json":
            return json.dumps(rows, ensure_ascii=False, indent=2) + "\n", len(rows)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=ANSWER_FIELDS if table == "answers" else EVENT_FIELDS,
                                extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: spreadsheet_safe(json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict))
                                                 else v) for k, v in row.items()})
        return buf.getvalue(), len(rows)

    def export(self, path: str | Path, fmt: str = "csv", table: str = "answers") -> int:
        """Write a table to `path` as CSV or JSON (temp file then rename); returns the rows written."""
        text, n = self.export_text(fmt, table)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, target)
        return n

    def stats(self, window_s: float = 7 * 86400, now: float | None = None,
              entry_points: tuple[str, ...] = ENTRY_POINTS) -> dict:
        """What the Monitor page shows, over the last `window_s` seconds:

        - volume: [{"bucket", "mode", "adapter", "count"}] per hour (windows up to 2 days) or per day
        - latency: {"p50", "p95", "n"} overall and "by_mode": {mode: {...}}
        - feedback: {"up", "down", "up_rate", "down_rate"} (shares of all answers) and "approval" (up / rated)
        - out_of_scope: {"routed", "count", "share" (of routed questions; None when none was routed),
          "recent": the latest out-of-scope questions [{"time", "question", "score"}]}
        Only answers from `entry_points` count (e.g. leave "eval" out to see what users were served).
        """
        now = time.time() if now is None else float(now)
        rows = self._read("SELECT time, ts, mode, adapter, latency_s, rating, routed, out_of_scope, question, "
                          "question_hash, route_score, cancelled FROM answers WHERE ts >= ? AND entry_point IN "
                          f"({', '.join('?' * len(entry_points))}) ORDER BY seq",
                          (now - float(window_s), *entry_points))
        bucket = "hour" if window_s <= 2 * 86400 else "day"
        fmt = "%Y-%m-%d %H:00" if bucket == "hour" else "%Y-%m-%d"
        volume: dict[tuple, int] = {}
        for r in rows:
            key = (_dt.datetime.fromtimestamp(r["ts"], _dt.timezone.utc).strftime(fmt), r["mode"] or "?",
                   r["adapter"] or "none")
            volume[key] = volume.get(key, 0) + 1

        def lat(values: list[float]) -> dict:
            values = sorted(values)
            return {"p50": _percentile(values, 0.5), "p95": _percentile(values, 0.95), "n": len(values)}

        by_mode: dict[str, list[float]] = {}
        for r in rows:
            if r["latency_s"] is not None:
                by_mode.setdefault(r["mode"] or "?", []).append(r["latency_s"])
        up = sum(r["rating"] == "up" for r in rows)
        down = sum(r["rating"] == "down" for r in rows)
        routed = [r for r in rows if r["routed"]]
        oos = [r for r in routed if r["out_of_scope"]]
        return {
            "window_s": float(window_s), "bucket": bucket, "total": len(rows),
            "cancelled": sum(bool(r["cancelled"]) for r in rows),
            "volume": [{"bucket": b, "mode": m, "adapter": a, "count": n} for (b, m, a), n in sorted(volume.items())],
            "latency": {**lat([v for vs in by_mode.values() for v in vs]),
                        "by_mode": {m: lat(vs) for m, vs in sorted(by_mode.items())}},
            "feedback": {"up": up, "down": down, "up_rate": up / len(rows) if rows else None,
                         "down_rate": down / len(rows) if rows else None,
                         "approval": up / (up + down) if up + down else None},
            "out_of_scope": {
                "routed": len(routed), "count": len(oos), "share": len(oos) / len(routed) if routed else None,
                "recent": [{"time": r["time"], "question": r["question"] or f"sha256:{r['question_hash'][:16]}",
                            "score": r["route_score"]} for r in oos[::-1][:RECENT_OUT_OF_SCOPE]]},
        }
