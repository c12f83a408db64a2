"""The QA JSONL format shared by training, evaluation and calibration: reading it with clear errors, and
picking few-shot examples from a labelled set.

    items = load_questions("data/pubmedqa/dev.jsonl")   # [QAItem(id, question, context_doc_id, final_decision, long_answer)]
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from app import metrics
from app.prompts import format_target

_SHOWN_ERRORS = 10  # bad lines named in one error; the rest are counted


@dataclass
class QAItem:
    id: str
    question: str
    context_doc_id: str | None = None
    final_decision: str | None = None  # "yes" | "no" | "maybe"
    long_answer: str | None = None


def load_questions(path: str | os.PathLike, limit: int | None = None) -> list[QAItem]:
    """Read a QA JSONL file; malformed lines raise one ValueError naming the file, each line and its problem."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise ValueError(f"limit {limit}: give at least 1 question (--limit N), or leave it out for all")
    if not path.is_file():
        raise FileNotFoundError(f"question file '{path}' not found; pass --data PATH to a QA JSONL file")
    items: list[QAItem] = []
    seen: dict[str, int] = {}
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a leading byte-order mark is fine
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the file as "
                         "UTF-8 and try again") from None
    errors: list[str] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = _parse_line(line, seen)
        except ValueError as exc:
            errors.append(f"{path}, line {lineno}: {exc}")
            continue
        seen[item.id] = lineno
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if errors:
        more = f"\n... and {len(errors) - _SHOWN_ERRORS} more bad lines" if len(errors) > _SHOWN_ERRORS else ""
        raise ValueError("\n".join(errors[:_SHOWN_ERRORS]) + more)
    if not items:
        raise ValueError(f"{path}: no questions found")
    return items


def _parse_line(line: str, seen: dict[str, int]) -> QAItem:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    for key in ("id", "question"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise ValueError(f"field '{key}' is missing or not a non-empty string "
                             f"(each line needs \"id\" and \"question\")")
    for key in ("context_doc_id", "long_answer", "final_decision"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise ValueError(f"field '{key}' must be a string, got {type(rec[key]).__name__}")
    decision = rec.get("final_decision")
    if decision is not None:
        decision = decision.strip().lower()
        if decision not in metrics.DECISIONS:
            raise ValueError(f"final_decision {rec['final_decision']!r} is not one of {', '.join(metrics.DECISIONS)}")
    if rec["id"] in seen:
        raise ValueError(f"duplicate id {rec['id']!r} (first on line {seen[rec['id']]})")
    return QAItem(rec["id"], rec["question"], rec.get("context_doc_id") or None, decision,
                  rec.get("long_answer") or None)


def few_shot_examples(path: str, n: int, evaluated: Sequence[QAItem], seed: int = 0) -> list[tuple[str, str]]:
    """N labelled (question, answer) pairs from `path`, balanced over the decisions where possible; refused
    when the file is the evaluated set or shares a question with it."""
    import random

    pool = [it for it in load_questions(path) if it.final_decision]
    ids, questions = {it.id for it in evaluated}, {it.question.strip().lower() for it in evaluated}
    if any(it.id in ids or it.question.strip().lower() in questions for it in pool):
        raise ValueError(f"few-shot examples from '{path}' overlap the evaluated questions; name another set "
                         f"(e.g. the training set) with --few-shot-data")
    rng = random.Random(seed)
    rng.shuffle(pool)
    by_class: dict[str, list[QAItem]] = {}
    for it in pool:
        by_class.setdefault(it.final_decision, []).append(it)
    picked: list[QAItem] = []
    while len(picked) < min(n, len(pool)):
        for cls in sorted(by_class):
            if by_class[cls] and len(picked) < n:
                picked.append(by_class[cls].pop())
    rng.shuffle(picked)
    return [(it.question, format_target(it.final_decision, _first_sentence(it.long_answer or ""))) for it in picked]


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".") + "." if text else ""
