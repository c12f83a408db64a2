"""Recall@1/5/10 (and MRR@10) of PubMedQA questions against the full 1000-abstract index, dense vs
hybrid, in one run. Chunks are aggregated to documents; the gold document is `context_doc_id`.

    .venv/bin/python benchmarks/recall.py [--questions data/pubmedqa/dev.jsonl] [--index pubmedqa]
    .venv/bin/python benchmarks/recall.py --sweep [--settings char:1000:150,token:128:32]

The index is built from data/pubmedqa/corpus.jsonl first if it is missing (as `make run` does).
Same figures from the CLI: `loracle search --queries data/pubmedqa/dev.jsonl -k 10 [--hybrid] --out x.jsonl`.

`--sweep` (on the 450 TRAINING questions only; dev and test stay unseen) builds one index per chunking
setting under --work (the shipped setting reuses indexes/pubmedqa when it matches) and scores each
way of ranking documents from the same chunk hits: dense with max / sum / rrf aggregation of chunk
scores, and dense + BM25 fused by reciprocal rank fusion on chunk ranks (the old hybrid) or on
document ranks (each side aggregated to documents first).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.retrieve import Retriever, _rrf, aggregate, rank_documents, recall_at  # noqa: E402
from ingest.config import ChunkConfig, IngestConfig, home  # noqa: E402
from ingest.index import index_path  # noqa: E402
from ingest.pipeline import DEFAULT_INDEX, default_corpus, ensure_default_index, ingest_paths  # noqa: E402

SETTINGS = "char:1000:150,char:500:100,char:700:150,char:300:60,token:128:32,token:200:50"
CANDIDATES = 100  # chunk hits per ranker before aggregation


def load_items(path: str) -> list[dict]:
    items = [json.loads(line) for line in open(path) if line.strip()]
    return [it for it in items if it.get("context_doc_id")]


def scores(ranked: list[list[str]], gold: list[str]) -> dict[str, float]:
    rec = recall_at(ranked, gold, (1, 5, 10))
    mrr = sum(1 / (ids[:10].index(g) + 1) for ids, g in zip(ranked, gold) if g in ids[:10]) / len(gold)
    return {"R@1": rec[1], "R@5": rec[5], "R@10": rec[10], "MRR@10": mrr}


def run_default(args) -> None:
    if args.index == DEFAULT_INDEX:
        ensure_default_index()
    items = load_items(args.questions)
    print(f"{len(items)} questions from {args.questions}, index '{args.index}'")
    print(f"{'retriever':<8} {'recall@1':>9} {'recall@5':>9} {'recall@10':>10} {'MRR@10':>7} {'ms/query':>9}")
    for hybrid in (False, True):
        r = Retriever(args.index, hybrid=hybrid)
        r.search("warm up", k=1)
        t0 = time.perf_counter()
        results = r.search_many([it["question"] for it in items], k=30)
        ms = (time.perf_counter() - t0) * 1000 / len(items)
        s = scores([[d for d, _ in rank_documents(ps)][:10] for ps in results], [it["context_doc_id"] for it in items])
        print(f"{'hybrid' if hybrid else 'dense':<8} {s['R@1']:>9.3f} {s['R@5']:>9.3f} {s['R@10']:>10.3f} "
              f"{s['MRR@10']:>7.3f} {ms:>9.1f}")


def build(setting: str, work: Path) -> tuple[Path, float]:
    unit, size, overlap = setting.split(":")
    chunk = ChunkConfig(size=int(size), overlap=int(overlap), unit=unit)
    shipped = index_path(DEFAULT_INDEX)
    if (shipped / "manifest.json").is_file():
        c = json.loads((shipped / "manifest.json").read_text())["chunker"]
        if (c["unit"], c["size"], c["overlap"]) == (unit, chunk.size, chunk.overlap):
            return shipped, 0.0
    path = work / f"recall-{unit}-{size}-{overlap}"
    t0 = time.perf_counter()
    if not (path / "manifest.json").is_file():
        ingest_paths([default_corpus()], index=path, config=IngestConfig(chunk=chunk))
    return path, time.perf_counter() - t0


def sweep(args) -> None:
    items = load_items(args.questions)
    gold = [it["context_doc_id"] for it in items]
    questions = [it["question"] for it in items]
    work = Path(args.work or tempfile.mkdtemp(prefix="loracle-recall-"))
    print(f"{len(items)} questions from {args.questions}; {CANDIDATES} chunk candidates per ranker; indexes in {work}")
    print(f"{'chunking':<16} {'chunks':>6} {'build s':>7}  {'ranking':<22} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR@10':>7}",
          flush=True)
    for setting in args.settings.split(","):
        path, build_s = build(setting, work)
        r = Retriever(path, hybrid=True)
        doc_of = {i: c.doc_id for i, c in r.index.iter_chunks()}
        sc, ids = r.index.search(r.embedder.encode(questions), CANDIDATES)
        dense = [[(doc_of[int(i)], float(s)) for i, s in zip(row_i, row_s) if i >= 0] for row_i, row_s in zip(ids, sc)]
        dense_ids = [[(int(i), float(s)) for i, s in zip(row_i, row_s) if i >= 0] for row_i, row_s in zip(ids, sc)]
        sparse_ids = r.bm25_search(questions, CANDIDATES)
        sparse = [[(doc_of[i], s) for i, s in row] for row in sparse_ids]
        rankings = {f"dense {how}": [aggregate(d, how) for d in dense] for how in ("max", "sum", "rrf")}
        rankings.update({f"dense {how}, top 10": [aggregate(d[:10], how) for d in dense] for how in ("sum", "rrf")})
        rankings["bm25 max"] = [aggregate(s, "max") for s in sparse]
        rankings["hybrid, RRF of chunks"] = [aggregate([(doc_of[i], s) for i, s in _rrf([d, s])], "max")
                                              for d, s in zip(dense_ids, sparse_ids)]
        rankings["hybrid, RRF of docs"] = [_rrf([aggregate(d, "max"), aggregate(s, "max")]) for d, s in zip(dense, sparse)]
        for name, ranked in rankings.items():
            s = scores([[doc for doc, _ in docs] for docs in ranked], gold)
            print(f"{setting:<16} {len(doc_of):>6} {build_s:>7.0f}  {name:<22} {s['R@1']:>6.3f} {s['R@5']:>6.3f} "
                  f"{s['R@10']:>6.3f} {s['MRR@10']:>7.3f}", flush=True)
        r.index.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", default=None, help="QA JSONL (default: dev.jsonl; with --sweep: train.jsonl)")
    ap.add_argument("--index", default=DEFAULT_INDEX)
    ap.add_argument("--sweep", action="store_true", help="chunking settings x document rankings, on train.jsonl")
    ap.add_argument("--settings", default=SETTINGS, help="with --sweep: unit:size:overlap,... (default %(default)s)")
    ap.add_argument("--work", default=None, help="with --sweep: folder for the per-setting indexes (default: a temp dir)")
    args = ap.parse_args()
    data = home() / "data" / "pubmedqa"
    if args.sweep:
        args.questions = args.questions or str(data / "train.jsonl")
        if Path(args.questions).name in ("dev.jsonl", "test.jsonl"):
            raise SystemExit("--sweep tunes settings: run it on training questions, never on dev or test")
        sweep(args)
    else:
        args.questions = args.questions or str(data / "dev.jsonl")
        run_default(args)


if __name__ == "__main__":
    main()
