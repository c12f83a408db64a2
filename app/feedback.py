"""Feedback / audit log: thumbs up or down with an optional comment on any answer.

Each record keeps the question, mode, adapter version, passages (doc id, chunk id, score) and
time, appended as one JSON line to `<data home>/feedback/feedback.jsonl` (override with
$LORACLE_FEEDBACK). Appends are serialised with a file lock, so concurrent sessions never
interleave lines. Exportable as JSON or CSV. No Streamlit here.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from app.audit import spreadsheet_safe

RATINGS = ("up", "down")
CSV_FIELDS = ("id", "time", "rating", "comment", "question", "mode", "adapter", "answer", "doc_ids", "scores",
              "answer_id")  # the audit log's row of the answer rated


def default_path() -> Path:
    if os.environ.get("LORACLE_FEEDBACK"):
        return Path(os.environ["LORACLE_FEEDBACK"])
    from ingest.config import home

    return home() / "feedback" / "feedback.jsonl"


def _passage_record(p: Any) -> dict[str, Any]:
    chunk = p.chunk
    return {
        "rank": p.rank,
        "score": round(float(p.score), 6),
        "doc_id": chunk.doc_id,
        "chunk_id": chunk.chunk_id,
        "source": chunk.metadata.get("source", ""),
        "location": str(chunk.metadata.get("location", "")),
    }


def record(answer: Any, rating: str, comment: str = "", path: Path | None = None) -> dict[str, Any]:
    """Append one feedback entry for an `app.types.Answer`; returns the stored record."""
    if rating not in RATINGS:
        raise ValueError(f"rating must be one of {RATINGS}, got {rating!r}")
    entry = {
        "id": uuid.uuid4().hex[:12],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rating": rating,
        "comment": comment.strip(),
        "question": answer.question,
        "mode": answer.mode,
        "adapter": answer.adapter,
        "answer": answer.text,
        "passages": [_passage_record(p) for p in answer.passages],
        "timings": dict(answer.timings),
        "answer_id": getattr(answer, "answer_id", "") or None,
    }
    target = Path(path) if path else default_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        with target.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return entry


def load(path: Path | None = None) -> list[dict[str, Any]]:
    """All entries, oldest first; a damaged line (e.g. from a crash mid-write) is skipped, not fatal."""
    target = Path(path) if path else default_path()
    if not target.exists():
        return []
    entries = []
    for line in target.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


def export_json(entries: list[dict[str, Any]]) -> str:
    return json.dumps(entries, ensure_ascii=False, indent=2)


def export_csv(entries: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for e in entries:
        row = dict(e)
        row["doc_ids"] = ";".join(p["doc_id"] for p in e.get("passages", []))
        row["scores"] = ";".join(f"{p['score']:.4f}" for p in e.get("passages", []))
        writer.writerow({k: spreadsheet_safe(v) for k, v in row.items()})
    return buf.getvalue()


def summary(entries: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts of up/down per mode."""
    out: dict[str, dict[str, int]] = {}
    for e in entries:
        counts = out.setdefault(e["mode"], {"up": 0, "down": 0})
        counts[e["rating"]] = counts.get(e["rating"], 0) + 1
    return out
