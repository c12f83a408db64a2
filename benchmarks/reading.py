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

from app import decision, metrics, models, prompts, registry  # noqa: E402
from app.config import DEFAULT_INDEX, DEFAULT_K  # noqa: E402
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


def score(model, tokenizer, ids: dict[str, int], question: str, passages, passage_chars) -> str:
    import torch

    prompt = prompts.render(tokenizer, prompts.build_messages(question, passages or None, passage_chars=passage_chars))
    tokens = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=tokens, logits_to_keep=1).logits[0, -1]
    logprobs, _ = decision.choose(logits, ids)
    return decision.decide(logprobs).label


def run(adapter: str | None, data: str, index: str | None, k: int | None, passage_chars: int | None,
        seed: int = 0, limit: int | None = None) -> dict:
    from app.retrieve import get_retriever

    items = [it for it in load_questions(data) if it.final_decision][: limit or None]
    model, tokenizer, info = models.load(None)
    settings = {}
    if adapter:
        from peft import PeftModel

        ref = registry.get(adapter)
        settings = dict(ref.card.answer_settings or {})
        model = PeftModel.from_pretrained(model, str(ref.path))
    model.eval()
    index = index or settings.get("index") or DEFAULT_INDEX
    k = k or settings.get("k") or DEFAULT_K
    passage_chars = passage_chars or settings.get("passage_chars")
    found = get_retriever(index).search_many([it.question for it in items], k)
    other = derangement(len(items), seed)
    ids = decision.option_ids(tokenizer)
    gold = [it.final_decision for it in items]
    preds = {c: [] for c in CONDITIONS}
    for i, it in enumerate(items):
        for cond, passages in (("right", found[i]), ("swapped", found[other[i]]), ("none", [])):
            preds[cond].append(score(model, tokenizer, ids, it.question, passages, passage_chars))
    out = {"adapter": adapter, "data": data, "n": len(items), "index": index, "k": k, "passage_chars": passage_chars}
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
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res = run(None if args.adapter == "none" else args.adapter, args.data, args.index, args.k, args.passage_chars,
              args.seed, args.limit)
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
