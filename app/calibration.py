"""Calibration of scored decisions: per-mode offsets added to the yes/no/maybe log-likelihoods.

Small models carry a strong prior for "yes". `fit` runs a labelled question set (never the one being
reported) through the engine in each mode, reads the options' raw log-likelihoods (one new token per
answer: the cost is the prefill), and picks per mode the offsets for "no" and "maybe" ("yes" stays 0)
that maximise macro-F1, preferring the smallest offsets among near-ties. Offsets are stored with the
adapter's version (card `calibration`, modes lora and lora+rag) and, for the base and rag modes, in
`base-calibration.json` beside the registry, keyed by base model name.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from app.config import BASE_CALIBRATION_FILE
from app.decision import OPTIONS
from app.metrics import macro_f1_rows

GRID = [x / 10 for x in range(-50, 51, 2)]  # offsets tried for "no" and "maybe", in nats


def fit_offsets(logprobs: Sequence[dict[str, float]], gold: Sequence[str]) -> dict[str, float]:
    """Offsets {yes: 0, no: b, maybe: c} maximising macro-F1 of argmax(logprob + offset) on the items;
    among offsets within 0.005 of the best, the one closest to no offsets."""
    import numpy as np

    if not logprobs or len(logprobs) != len(gold):
        raise ValueError(f"calibration needs the same number (at least one) of scored answers and gold decisions; "
                         f"got {len(logprobs)} scored answers and {len(gold)} gold decisions")
    lp = np.array([[row[o] for o in OPTIONS] for row in logprobs])
    y = np.array([OPTIONS.index(g) for g in gold])
    grid = np.array(GRID)
    b, c = np.meshgrid(grid, grid, indexing="ij")
    shifts = np.stack([np.zeros_like(b), b, c], axis=-1).reshape(-1, 3)  # (G, 3)
    pred = (lp[None, :, :] + shifts[:, None, :]).argmax(-1)  # (G, n); OPTIONS is metrics.DECISIONS' order
    macro = macro_f1_rows(pred, y)
    near = np.flatnonzero(macro >= macro.max() - 0.005)
    best = near[np.argmin((shifts[near] ** 2).sum(1))]
    return {o: round(float(v), 2) for o, v in zip(OPTIONS, shifts[best])}


def fit(engine, items, modes: Sequence[str], adapter=None, data: str | None = None, scores: dict | None = None) -> dict:
    """Per mode in `modes`, offsets fitted on the labelled `items` (app.evaluate.QAItem); returns
    {mode: offsets, "fitted_on": {...}} ready to store. `scores`, when given, receives mode -> raw log-probs."""
    from app.engine import Request

    labelled = [it for it in items if it.final_decision]
    if not labelled:
        raise ValueError("calibration needs questions with a final_decision (yes, no or maybe); none are left "
                         "in this set (check --data and --limit)")
    if getattr(engine.backend, "kind", "local") != "local":
        raise ValueError("calibration scores the options' log-likelihoods, which only the local backend gives; "
                         "run `loracle calibrate` with the local backend")
    table: dict = {}
    for mode in modes:
        reqs = [Request(it.question, adapter if mode.startswith("lora") else None, mode.endswith("rag"),
                        max_new_tokens=1, decide=True, scored=True, calibrate=False, origin="eval") for it in labelled]
        answers = []
        for lo in range(0, len(reqs), 4):
            answers += engine.answer_batch(reqs[lo:lo + 4])
        raw = [a.decision.logprobs for a in answers]
        if scores is not None:
            scores[mode] = raw
        table[mode] = fit_offsets(raw, [it.final_decision for it in labelled])
    info = {"data": Path(data).name if data else None, "n": len(labelled),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    table["fitted_on"] = {mode: dict(info) for mode in modes}
    return table


def fitted_on(table: dict, mode: str) -> dict:
    """What a mode's offsets were fitted on (per-mode entries; a flat entry is shared by every mode)."""
    entry = table.get("fitted_on") or {}
    return entry.get(mode) if isinstance(entry.get(mode), dict) else entry


def check_replace(stored: dict, modes: Sequence[str], n: int, data: str, replace: bool = False) -> None:
    """Refuse to replace offsets fitted on more questions than `n` (a quick fit on a few questions would
    silently overwrite a careful one); `replace` (--replace) overrides."""
    if replace or not stored:
        return
    for mode in (m for m in modes if m in stored):
        old = fitted_on(stored, mode) or {}
        if isinstance(old.get("n"), int) and old["n"] > n:
            raise ValueError(f"the stored {mode} offsets were fitted on {old['n']} questions ({old.get('data')}); "
                             f"{n} from {data} would replace them. Fit on at least as many, print only with "
                             "--dry-run, or pass --replace to replace them anyway")


def base_file(root) -> Path:
    return Path(root) / BASE_CALIBRATION_FILE


def load_base(root, base_model: str) -> dict:
    """The base model's stored offsets ({"base": {...}, "rag": {...}, "fitted_on": {...}}), {} if none."""
    path = base_file(root)
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg}); fix it or delete it to answer uncalibrated") from None
    return dict(table.get(base_model) or {})


def save_base(root, base_model: str, table: dict) -> Path:
    """Store the base and rag modes' offsets for `base_model` (other base models' entries are kept)."""
    path = base_file(root)
    current = json.loads(path.read_text()) if path.is_file() else {}
    mine = {k: v for k, v in table.items() if k in ("base", "rag", "fewshot")}
    fitted = {**(current.get(base_model, {}).get("fitted_on") or {}), **{m: fitted_on(table, m) for m in mine}}
    current[base_model] = {**current.get(base_model, {}), **mine, "fitted_on": fitted}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(current, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def cross_validate(logprobs: Sequence[dict[str, float]], gold: Sequence[str], folds: int = 5,
                   seed: int = 0) -> dict[str, float]:
    """k-fold estimate of calibrated decisions: offsets fitted on k-1 folds, applied to the held-out fold;
    returns accuracy and macro-F1 over all held-out predictions, and the same without offsets."""
    import random

    from app.decision import decide
    from app.metrics import accuracy, macro_f1

    if not 2 <= folds <= len(gold):
        raise ValueError(f"--folds {folds}: use between 2 and the number of labelled questions ({len(gold)})")
    order = list(range(len(gold)))
    random.Random(seed).shuffle(order)
    pred: list[str | None] = [None] * len(gold)
    for f in range(folds):
        test = set(order[f::folds])
        train = [i for i in order if i not in test]
        off = fit_offsets([logprobs[i] for i in train], [gold[i] for i in train])
        for i in test:
            pred[i] = decide(logprobs[i], off).label
    raw = [decide(lp).label for lp in logprobs]
    return {"folds": folds, "n": len(gold), "accuracy": accuracy(pred, list(gold)),
            "macro_f1": macro_f1(pred, list(gold)), "uncalibrated_accuracy": accuracy(raw, list(gold)),
            "uncalibrated_macro_f1": macro_f1(raw, list(gold))}


def items_for_adapter(items, card, data_sha256: str, label: str):
    """The items calibration may use for an adapter: all of them for a set it was not trained on; only its
    held-out validation items for its own training set; refused when those are unknown."""
    trained = card.training_data or {}
    # a merge of adapters trained on different files lists each source's data under "sources"
    def leaves(data: dict) -> list[dict]:  # a source may itself be a merge of several files
        return [leaf for src in data["sources"] for leaf in leaves(src)] if data.get("sources") else [data]

    on_this = [d for d in leaves(trained) if d.get("sha256") == data_sha256]
    if not on_this:
        return items, None
    if any(not d.get("val_ids") for d in on_this):
        raise ValueError(f"{label} was trained on this file and its card lists no held-out items; calibrate on "
                         "another labelled set (offsets fitted on training items would be optimistic)")
    held = set.intersection(*(set(d["val_ids"]) for d in on_this))
    kept = [it for it in items if it.id in held]
    if not kept:
        raise ValueError(f"{label} was trained on this file, so only its {len(held)} held-out items may calibrate it, "
                         f"and none of the {len(items)} given is one of them (with --limit, the first N lines of the "
                         "file are read before that filter): drop --limit, or calibrate on another labelled set")
    return kept, f"{len(kept)} items held out from {label}'s training"
