"""Query latency (embed + FAISS search) on a synthetic 100k-chunk index: exact flat inner product vs
approximate HNSW, measured side by side in one run, with recall@k of HNSW against flat.
Target: p50 <= 25 ms on the 2-core machine.

    .venv/bin/python benchmarks/search.py [--chunks 100000] [--queries 100] [-k 5]

The 100k vectors are made from the real chunk embeddings of indexes/pubmedqa (built first if missing):
each is a normalised mix of two real vectors plus noise, so the data has the clustered shape of real
embeddings rather than uniform noise. Queries are real questions, embedded by the real MiniLM model.
"""
from __future__ import annotations

import argparse
import os
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.config import home  # noqa: E402
from ingest.embed import get_embedder  # noqa: E402
from ingest.index import Index, build_faiss_index  # noqa: E402
from ingest.pipeline import DEFAULT_INDEX, ensure_default_index  # noqa: E402


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    ensure_default_index()
    ix = Index.open(DEFAULT_INDEX)
    real = ix.chunk_vectors()[1]  # the stored vectors (chunks.sqlite), whatever the vector store
    ix.close()
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(real), n), rng.integers(0, len(real), n)
    w = rng.uniform(0.5, 1.0, (n, 1)).astype("float32")
    vecs = w * real[a] + (1 - w) * real[b] + rng.normal(0, 0.02, (n, real.shape[1])).astype("float32")
    vecs[: len(real)] = real  # the real chunks are in there too
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype("float32")


def search(index, v, k):
    """As ingest.index.Index.search does for a few queries: one OpenMP thread."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(v, k)
    finally:
        faiss.omp_set_num_threads(before)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("-k", type=int, default=5)
    args = ap.parse_args()
    print("load average (1, 5, 15 min) at start: %.1f %.1f %.1f on %d cores" % (*os.getloadavg(), os.cpu_count()))
    emb = get_embedder()
    qfile = home() / "data" / "pubmedqa" / "dev.jsonl"
    questions = [json.loads(line)["question"] for line in qfile.read_text().splitlines()]
    questions = (questions * (args.queries // len(questions) + 1))[: args.queries]
    vecs = synthetic(args.chunks)
    ids = np.arange(len(vecs), dtype="int64")
    indexes, results = {}, {}
    for kind in ("flat", "hnsw"):
        t0 = time.perf_counter()
        index = build_faiss_index(ids, vecs, kind)
        indexes[kind] = (index, time.perf_counter() - t0)
    emb.encode(questions[:4])  # warm
    for kind in indexes:
        indexes[kind][0].search(emb.encode(questions[:2]), args.k)
    print(f"{args.chunks} synthetic chunks (dim {vecs.shape[1]}), {len(questions)} queries, k={args.k}")
    print(f"{'index':<6} {'build s':>8} {'p50 ms':>7} {'p95 ms':>7} {'search-only p50':>16} {'recall@k vs flat':>17}")
    for rnd in range(2):  # alternate the two index types so CPU contention hits both alike
        for kind, (index, _) in indexes.items():
            lat, search_lat, found = [], [], []
            for q in questions:
                t0 = time.perf_counter()
                v = emb.encode([q])
                t1 = time.perf_counter()
                _, hit = search(index, v, args.k)
                t2 = time.perf_counter()
                lat.append(t2 - t0)
                search_lat.append(t2 - t1)
                found.append(hit[0])
            results.setdefault(kind, {"lat": [], "search": [], "found": found})
            results[kind]["lat"] += lat
            results[kind]["search"] += search_lat
    flat = results["flat"]["found"]
    for kind, r in results.items():
        rec = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(r["found"], flat)])
        print(f"{kind:<6} {indexes[kind][1]:>8.1f} {pct(r['lat'], 50):>7.1f} {pct(r['lat'], 95):>7.1f} "
              f"{pct(r['search'], 50):>16.2f} {rec:>17.3f}")
    p50 = {k: pct(r["lat"], 50) for k, r in results.items()}
    print(f"flat/hnsw p50 ratio {p50['flat'] / p50['hnsw']:.2f}; target p50 <= 25 ms: "
          + ", ".join(f"{k} {'met' if v <= 25 else 'missed'}" for k, v in p50.items()))


if __name__ == "__main__":
    main()
