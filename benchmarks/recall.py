"""Recall@1/5/10 (and MRR@10) of PubMedQA questions against the full 1000-abstract index, dense vs
hybrid, in one run. Chunks are deduplicated to documents; the gold document is `context_doc_id`.

    .venv/bin/python benchmarks/recall.py [--questions data/pubmedqa/dev.jsonl] [--index pubmedqa]

The index is built from data/pubmedqa/corpus.jsonl first if it is missing (as `make run` does).
Same figures from the CLI: `loracle search --queries data/pubmedqa/dev.jsonl -k 10 [--hybrid] --out x.jsonl`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.retrieve import Retriever, rank_documents, recall_at  # noqa: E402
from ingest.config import home  # noqa: E402
from ingest.pipeline import DEFAULT_INDEX, ensure_default_index  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", default=str(home() / "data" / "pubmedqa" / "dev.jsonl"))
    ap.add_argument("--index", default=DEFAULT_INDEX)
    args = ap.parse_args()
    if args.index == DEFAULT_INDEX:
        ensure_default_index()
    items = [json.loads(line) for line in open(args.questions) if line.strip()]
    items = [it for it in items if it.get("context_doc_id")]
    print(f"{len(items)} questions from {args.questions}, index '{args.index}'")
    print(f"{'retriever':<8} {'recall@1':>9} {'recall@5':>9} {'recall@10':>10} {'MRR@10':>7} {'ms/query':>9}")
    for hybrid in (False, True):
        r = Retriever(args.index, hybrid=hybrid)
        r.search("warm up", k=1)
        t0 = time.perf_counter()
        results = r.search_many([it["question"] for it in items], k=30)
        ms = (time.perf_counter() - t0) * 1000 / len(items)
        ranked = [[d for d, _ in rank_documents(ps)][:10] for ps in results]
        gold = [it["context_doc_id"] for it in items]
        rec = recall_at(ranked, gold, (1, 5, 10))
        mrr = sum(1 / (ids.index(g) + 1) for ids, g in zip(ranked, gold) if g in ids) / len(gold)
        print(f"{'hybrid' if hybrid else 'dense':<8} {rec[1]:>9.3f} {rec[5]:>9.3f} {rec[10]:>10.3f} {mrr:>7.3f} {ms:>9.1f}")


if __name__ == "__main__":
    main()
