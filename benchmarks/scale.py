"""Vector search at scale, on synthetic corpora of MiniLM-sized vectors (384-dim, normalised float32):
build time, memory (RSS delta), size on disk, single-query latency p50/p95 (batch 1, one thread) and
recall@10 against exact search, for FAISS flat / HNSW / IVF-SQ8 and Milvus (milvus-lite) through the
shipped vector stores (`ingest.vectors`).

    .venv/bin/python benchmarks/scale.py --sizes 100000              # about 10 min on 2 busy cores
    .venv/bin/python benchmarks/scale.py --sizes 1000000 --configs flat,ivf,hnsw

The data are clustered like real embeddings rather than uniform noise: a few thousand random centroids
(around a shared direction, as sentence embeddings share a cone), cluster sizes spread log-normally,
each vector its centroid plus noise (cosine to its centroid ~0.75). Queries are data vectors plus
noise, so their neighbourhoods are dense. Nothing is embedded. Each configuration is built in a forked
child so its RSS delta is its own; results go to stdout (and --json).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import vectors as V  # noqa: E402

DIM = 384
CONFIGS = "flat,hnsw,ivf,milvus-hnsw,milvus-ivf"
# extra search settings measured on the same build (the first of each list is the shipped one)
SWEEP = {"hnsw": ("efSearch", [V.HNSW_EF_SEARCH, 128, 256]), "ivf": ("nprobe", [V.IVF_NPROBE, 32, 128, 256])}


def corpus(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_clusters = max(10, min(4000, n // 25))
    shared = rng.standard_normal(DIM).astype("float32")
    centroids = 0.5 * shared / np.linalg.norm(shared) + rng.standard_normal((n_clusters, DIM)).astype("float32") / np.sqrt(DIM)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    weights = rng.lognormal(0, 1, n_clusters)
    labels = rng.choice(n_clusters, n, p=weights / weights.sum())
    data = np.empty((n, DIM), "float32")
    for s in range(0, n, 100_000):  # in slices: no float64 temporaries the size of the corpus
        part = centroids[labels[s:s + 100_000]] + rng.standard_normal((len(labels[s:s + 100_000]), DIM), "float32") * (0.9 / np.sqrt(DIM))
        data[s:s + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    queries = data[rng.choice(n, n_queries, replace=False)] + rng.standard_normal((n_queries, DIM), "float32") * (0.6 / np.sqrt(DIM))
    return data, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def du_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def timed_queries(search, queries: np.ndarray, exact: np.ndarray, k: int) -> dict:
    for q in queries[:5]:  # warm
        search(q[None], k)
    lat, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, ids = search(q[None], k)
        lat.append(time.perf_counter() - t0)
        found.append(ids[0])
    recall = np.mean([len(set(f.tolist()) & set(e.tolist())) / k for f, e in zip(found, exact)])
    return {"p50_ms": float(np.percentile(lat, 50) * 1000), "p95_ms": float(np.percentile(lat, 95) * 1000),
            "recall": float(recall)}


def run_config(name: str, data: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int, work: Path) -> list[dict]:
    """In a forked child: build `name`, measure, return one row per search setting."""
    import faiss

    ids = np.arange(1, len(data) + 1, dtype="int64")
    before = rss_mb()
    t0 = time.perf_counter()
    if name.startswith("milvus-"):
        kind = name.split("-", 1)[1]
        store = V.MilvusVectors(str(work / "vectors.db"), "bench", DIM, kind)
        store.create()
        store._insert(ids, data)
        store.client.flush("bench")
        store.load()
        store.search(queries[:1], k)  # milvus-lite builds its segment indexes on first use
        build_s = time.perf_counter() - t0
        rows = [{"setting": V.MILVUS_INDEX[kind][0], **timed_queries(store.search, queries, exact, k)}]
        disk = du_mb(work / "vectors.db")
        store.close()
    else:
        index = V.build_faiss_index(ids, data, name)
        build_s = time.perf_counter() - t0
        path = work / "index.faiss"
        faiss.write_index(index, str(path))
        disk = du_mb(path)
        store = V.FaissVectors(work, DIM, name)
        store.index = index
        rows = []
        param, values = SWEEP.get(name, (None, [None]))
        for value in values:
            if param == "efSearch":
                faiss.downcast_index(index.index).hnsw.efSearch = value
            elif param == "nprobe":
                faiss.extract_index_ivf(index).nprobe = value
            rows.append({"setting": f"{param} {value}" if param else "exact", **timed_queries(store.search, queries, exact, k)})
    grown = rss_mb() - before
    return [{"config": name, "n": len(data), "build_s": build_s, "rss_mb": grown, "disk_mb": disk, **r} for r in rows]


def exact_neighbours(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(DIM)
    flat.add(data)
    return flat.search(queries, k)[1] + 1  # ids start at 1, as chunk row ids do


def in_child(ctx, fn, *args):
    """fn(*args) in a forked child (the corpus is shared copy-on-write); its result or an error string.
    The parent never runs an OpenMP region: a forked child of one would hang in FAISS."""
    parent, child = ctx.Pipe()

    def target():
        try:
            child.send(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - reported by the parent
            child.send(f"{type(exc).__name__}: {exc}")

    proc = ctx.Process(target=target)
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000", help="corpus sizes, comma-separated (e.g. 100000,1000000)")
    ap.add_argument("--configs", default=CONFIGS, help=f"comma-separated (default {CONFIGS})")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    print("load average (1, 5, 15 min) at start: %.1f %.1f %.1f on %d cores" % (*os.getloadavg(), os.cpu_count()))
    print(f"{'n':>8} {'config':<12} {'setting':<12} {'build s':>8} {'RSS +MB':>8} {'disk MB':>8} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'recall@10':>9}", flush=True)
    rows = []
    ctx = mp.get_context("fork")
    for n in [int(s) for s in args.sizes.split(",")]:
        data, queries = corpus(n, args.queries)
        exact = in_child(ctx, exact_neighbours, data, queries, args.k)  # OpenMP only in children: fork-safe
        for name in args.configs.split(","):
            work = Path(tempfile.mkdtemp(prefix=f"loracle-scale-{name}-"))
            result = in_child(ctx, run_config, name, data, queries, exact, args.k, work)
            shutil.rmtree(work, ignore_errors=True)
            if isinstance(result, str):
                print(f"{n:>8} {name:<12} failed: {result}", flush=True)
                continue
            for r in result:
                rows.append(r)
                print(f"{n:>8} {name:<12} {r['setting']:<12} {r['build_s']:>8.1f} {r['rss_mb']:>8.0f} {r['disk_mb']:>8.0f} "
                      f"{r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['recall']:>9.3f}", flush=True)
    print("load average at end: %.1f %.1f %.1f" % os.getloadavg())
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
