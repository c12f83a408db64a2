"""Does the model read its passages? A passage ablation of the scored yes/no/maybe decision.

Each labelled question is scored (first-token log-likelihood of Yes / No / Maybe, as the engine scores it,
no calibration) with the same prompt template and three kinds of passages:
  right    its own retrieved passages (the top k, as the engine retrieves them)
  swapped  the retrieved passages of another question of the set (a fixed derangement: never its own)
  none     no passages (the plain template: the lora / base mode)
A model that reads does better with `right` than with `swapped`, and changes its decision when the
passages change. One that does not gives about the same figures for both. Printed per condition:
accuracy, macro-F1, recall per class, and the share of decisions that differ from `right`.

    .venv/bin/python benchmarks/reading.py --adapter medical-pubmedqa [--data data/pubmedqa/dev.jsonl]
    .venv/bin/python benchmarks/reading.py --adapter none            # the base model (the rag mode)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app import decision, metrics  # noqa: E402
from app.config import DEFAULT_INDEX, DEFAULT_K, EngineConfig  # noqa: E402
from app.engine import Engine, Request  # noqa: E402
from app.questions import load_questions  # noqa: E402

CONDITIONS = ("right", "swapped", "none")


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation with no fixed point: question i gets the passages of question out[i] != i."""
    if n < 2:
        raise ValueError("the swapped condition needs at least 2 questions")
    order = list(range(n))
    rng = random.Random(seed)
    while True:
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return list(order)


def run(adapter: str | None, data: str, index: str | None, k: int | None, passage_chars: int | None,
        seed: int = 0, limit: int | None = None, threads: int | None = None) -> dict:
    """The three conditions through the engine: the same prompts, settings (the adapter card's unless given)
    and scoring as `loracle eval --decisions scored --no-calibrate`; `swapped` passes another question's
    retrieved passages as the request's own (Request.passages)."""
    items = [it for it in load_questions(data) if it.final_decision][: limit or None]
    engine = Engine(EngineConfig.from_env(adapters=(adapter,) if adapter else (), threads=threads, audit=False))
    common = dict(adapter=adapter, decide=True, scored=True, calibrate=False, max_new_tokens=1, k=k,
                  passage_chars=passage_chars, origin="eval")
    right = engine.answer_batch([Request(it.question, retrieval=True, index=index, **common) for it in items])
    other = derangement(len(items), seed)
    swapped = engine.answer_batch([Request(it.question, passages=right[other[i]].passages, **common)
                                   for i, it in enumerate(items)])
    none = engine.answer_batch([Request(it.question, **common) for it in items])
    preds = {c: [a.decision.label for a in answers] for c, answers in zip(CONDITIONS, (right, swapped, none))}
    gold = [it.final_decision for it in items]
    used = right[0].settings if right else {}
    out = {"adapter": adapter, "data": data, "n": len(items), "index": used.get("index"),
           "k": used.get("k"), "passage_chars": used.get("passage_chars")}
    for cond in CONDITIONS:
        out[cond] = {"accuracy": round(metrics.accuracy(preds[cond], gold), 3),
                     "macro_f1": round(metrics.macro_f1(preds[cond], gold), 3),
                     "recall": {c: round(v, 3) for c, v in metrics.class_recall(preds[cond], gold).items()},
                     "differs_from_right": round(sum(a != b for a, b in zip(preds[cond], preds["right"])) / len(items), 3),
                     "answers": {c: preds[cond].count(c) for c in decision.OPTIONS}}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", default="medical-pubmedqa", help="registered adapter, or 'none' for the base model")
    p.add_argument("--data", default="data/pubmedqa/dev.jsonl")
    p.add_argument("--index", default=None, help=f"default: the adapter card's, else {DEFAULT_INDEX}")
    p.add_argument("--k", type=int, default=None, help=f"default: the adapter card's, else {DEFAULT_K}")
    p.add_argument("--passage-chars", type=int, default=None, help="default: the adapter card's (None: whole chunks)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    res = run(None if args.adapter == "none" else args.adapter, args.data, args.index, args.k, args.passage_chars,
              args.seed, args.limit, args.threads)
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"{res['adapter'] or 'base model'} on {res['data']} ({res['n']} questions; index {res['index']}, "
          f"k={res['k']}, passage chars {res['passage_chars'] or 'whole chunks'})\n")
    print("| passages | accuracy | macro-F1 | recall yes / no / maybe | answers yes / no / maybe | differs from right |")
    print("|---|---|---|---|---|---|")
    for cond in CONDITIONS:
        r = res[cond]
        rec = " / ".join(f"{100 * r['recall'].get(c, 0):.0f}%" for c in decision.OPTIONS)
        ans = " / ".join(str(r["answers"][c]) for c in decision.OPTIONS)
        print(f"| {cond} | {100 * r['accuracy']:.1f}% | {r['macro_f1']:.3f} | {rec} | {ans} | "
              f"{100 * r['differs_from_right']:.0f}% |")


if __name__ == "__main__":
    main()
