"""The vector part of an index, pluggable: a FAISS file beside the chunk store (the embedded default)
or a Milvus collection through pymilvus (a `.db` path runs the embedded milvus-lite; an http(s)://
URI talks to a Milvus server or cluster with the same code). `ingest.index.Index` owns documents,
chunks and the manifest and drives one of these; nothing above the index sees which one it is.

Consistency: one story for both stores.

- `chunks.sqlite` is the store of record: every chunk's text and float32 vector under a row id that
  SQLite's AUTOINCREMENT never reuses; its `generation` rises by one with each commit.
- A vector store is derived from it: row id -> vector for the committed chunks. A row's vector never
  changes (a changed document gets new rows), so the vector store is right exactly when it holds the
  same id set as the chunk store.
- A write commits SQLite first, then applies the same removals and additions here (FAISS: in memory,
  then the file via temp + os.replace; Milvus: delete + insert), then writes manifest.json last. The
  manifest's generation therefore says "the vector store has caught up to here".
- On open and before each write the index checks: store generation == manifest generation and vector
  count == chunk count. Otherwise a crash fell between the commit and the manifest, and `sync` re-derives
  the vectors from SQLite: FAISS is rebuilt from the stored vectors; a Milvus collection is diffed by id
  (ids SQLite no longer has are deleted, ids it lacks inserted), so a half-applied batch is repaired
  without re-sending the corpus. The repair takes the writer lock; when a writer holds it, that writer
  will finish the job (a FAISS reader rebuilds its private in-memory copy meanwhile).

Index types (`INDEX_TYPES`, chosen at creation, `--index-type`): "flat" exact inner product; "hnsw"
graph (sub-millisecond, 1.2x flat's memory, slow to build, cannot delete: a removal rebuilds it); "ivf"
inverted lists over 8-bit scalar-quantised vectors (IVF-SQ8: a third of flat's memory, deletes in
place); "auto" (default) is flat below AUTO_ANN_FROM chunks and ANN_TYPE from there (docs/scale.md).
Milvus maps them to FLAT / HNSW / IVF_SQ8 / AUTOINDEX and builds its indexes itself.
"""
from __future__ import annotations

import math
import re
import threading
from pathlib import Path
from typing import Protocol

from ingest.folders import write_atomic

STORES = ("faiss", "milvus")
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
# "auto": exact flat search below this many chunks, ANN_TYPE from there; back to flat only below half of it,
# so an index near the line does not flip on every write. Measured (docs/scale.md, 1 thread, busy 2-core box):
# flat search alone takes 11 ms at 100k chunks (+ ~12 ms to embed the query: the 25 ms budget) and 104 ms
# at 1M; IVF-SQ8 takes 15 ms at 1M with recall@10 0.968, a third of flat's memory, and deletes in place
# (HNSW: 0.5-1.5 ms but recall 0.67-0.85 there, 1.2x flat's memory, a 6.5 min build, a rebuild per removal).
AUTO_ANN_FROM = 100_000
ANN_TYPE = "ivf"
HNSW_M, HNSW_EF_SEARCH, HNSW_EF_CONSTRUCTION = 32, 64, 40
IVF_NPROBE = 64  # lists scanned per query; nlist = sqrt(n) (ivf_lists), so ~6% of the vectors at 1M (docs/scale.md)
MILVUS_INDEX = {"flat": ("FLAT", {}, {}), "hnsw": ("HNSW", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
                                               {"ef": HNSW_EF_SEARCH}),
                "ivf": ("IVF_SQ8", {"nlist": 1024}, {"nprobe": IVF_NPROBE}), "auto": ("AUTOINDEX", {}, {})}
MILVUS_TOPK = 16384  # Milvus's largest limit per search
BATCH = 2000  # rows per Milvus insert / delete call


class VectorSource(Protocol):
    """What a vector store reads from the chunk store (ingest.index.Index provides it)."""

    def chunk_ids(self, lo: int = 0, hi: int | None = None): ...  # sorted int64 row ids in [lo, hi)

    def chunk_vectors(self, ids=None): ...  # (ids, (n, dim) float32): all rows, or those ids

    def max_chunk_id(self) -> int: ...  # the highest row id ever used (never reused)


def check_index_type(index_type: str) -> str:
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type '{index_type}' is not one of {INDEX_TYPES}; pass --index-type auto")
    return index_type


def resolve_index_type(index_type: str, n: int, current: str | None = None) -> str:
    """The FAISS index to hold `n` vectors: `index_type` itself, or for "auto" flat / ANN_TYPE by size."""
    if check_index_type(index_type) != "auto":
        return index_type
    if n >= AUTO_ANN_FROM:
        return ANN_TYPE
    return current if current == ANN_TYPE and n >= AUTO_ANN_FROM // 2 else "flat"


def ivf_lists(n: int) -> int:
    """Inverted lists for n vectors: sqrt(n) (1000 at 1M), and at least 39 training points per list."""
    return max(1, min(int(math.sqrt(n)), n // 39))


def build_faiss_index(ids, vectors, index_type: str):
    """A FAISS index of `index_type` ("flat", "hnsw" or "ivf") holding `vectors` under `ids`."""
    import faiss
    import numpy as np

    dim = vectors.shape[1]
    if index_type == "ivf" and len(vectors) >= 39:  # k-means wants 39+ points per list; fewer: flat until then
        nlist = ivf_lists(len(vectors))
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        sample = vectors
        if len(vectors) > 64 * nlist:  # k-means on a sample: 64 points per list is plenty for the coarse centroids
            sample = vectors[np.random.default_rng(0).choice(len(vectors), 64 * nlist, replace=False)]
        index.cp.niter = 10
        index.train(np.ascontiguousarray(sample))
        index.nprobe = IVF_NPROBE
    elif index_type == "hnsw":
        base = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        base.hnsw.efSearch = HNSW_EF_SEARCH
        index = faiss.IndexIDMap2(base)
    elif index_type in ("flat", "ivf"):
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        raise ValueError(f"index type '{index_type}' is not one of {INDEX_TYPES[1:]}")
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype="float32"), np.asarray(ids, dtype="int64"))
    return index


def faiss_type(index) -> str:
    """"flat", "hnsw" or "ivf": what a built (or read) FAISS index is."""
    import faiss

    if faiss.try_extract_index_ivf(index) is not None:
        return "ivf"
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"


def _nlist(index) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index).nlist)


class FaissVectors:
    """`index.faiss` in the index folder; each process searches its own in-memory copy."""

    kind = "faiss"
    shared = False

    def __init__(self, folder: Path, dim: int, index_type: str):
        self.file, self.dim, self.index_type = folder / "index.faiss", dim, index_type
        self.index = None

    def load(self) -> None:
        import faiss
        import numpy as np

        if self.file.is_file():
            self.index = faiss.read_index(str(self.file))
            ivf = faiss.try_extract_index_ivf(self.index)
            if ivf is not None:
                ivf.nprobe = IVF_NPROBE
        else:
            self.index = build_faiss_index([], np.zeros((0, self.dim), "float32"), "flat")

    def __len__(self) -> int:
        return int(self.index.ntotal) if self.index is not None else 0

    def search(self, vectors, k: int):
        import faiss

        if len(vectors) > 8:
            return self.index.search(vectors, k)
        before = faiss.omp_get_max_threads()  # a few queries gain nothing from an OpenMP team
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(vectors, k)
        finally:
            faiss.omp_set_num_threads(before)

    def apply(self, removed, ids, vectors, source: VectorSource) -> None:
        """Remove and add after a commit; rebuild from the store when the index cannot delete (HNSW),
        "auto" moves to another type, or IVF's lists are too few for the vectors it now holds."""
        import numpy as np

        have = faiss_type(self.index)
        n = len(self) - len(removed) + len(ids)
        want = resolve_index_type(self.index_type, n, have)
        coarse = have == "ivf" and ivf_lists(n) >= 2 * _nlist(self.index)  # grown 4x since it was trained
        if want != have or coarse or (len(removed) and have == "hnsw"):
            self.sync(source)
            return
        if len(removed):
            self.index.remove_ids(np.asarray(removed, dtype="int64"))
        if len(ids):
            self.index.add_with_ids(vectors, np.asarray(ids, dtype="int64"))

    def sync(self, source: VectorSource) -> None:
        ids, vectors = source.chunk_vectors()
        have = faiss_type(self.index) if self.index is not None else None
        self.index = build_faiss_index(ids, vectors, resolve_index_type(self.index_type, len(ids), have))

    def save(self) -> None:
        import faiss

        write_atomic(self.file, lambda t: faiss.write_index(self.index, str(t)))

    def drop(self) -> None:
        self.file.unlink(missing_ok=True)

    def close(self) -> None:
        pass


_LITE_USERS: dict[str, int] = {}  # milvus-lite server per .db path in this process -> open MilvusVectors
_LITE_LOCK = threading.Lock()


def collection_name(index_name: str) -> str:
    return "loracle_" + re.sub(r"[^A-Za-z0-9_]", "_", index_name)


def is_lite(uri: str) -> bool:
    return uri.endswith(".db") and "://" not in uri


class MilvusVectors:
    """A Milvus collection (int64 primary key = chunk row id, float vector, inner product). Shared by
    every process that opens the index. A `.db` URI is milvus-lite: one process at a time holds it."""

    kind = "milvus"
    shared = True

    def __init__(self, uri: str, collection: str, dim: int, index_type: str):
        from pymilvus import MilvusClient

        self.uri, self.collection, self.dim, self.index_type = uri, collection, dim, check_index_type(index_type)
        self._count = 0
        if is_lite(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            with _LITE_LOCK:
                _LITE_USERS[self._lite_key] = _LITE_USERS.get(self._lite_key, 0) + 1
        try:
            self.client = MilvusClient(uri=uri)
        except Exception as exc:
            self._release()
            hint = ("milvus-lite serves one process at a time: stop the other process using this index "
                    "(a `loracle ui` or `serve`?), or put the vectors on a Milvus server (--uri http://HOST:19530)"
                    if is_lite(uri) else "check that the Milvus server is up and the URI is right")
            raise RuntimeError(f"cannot open Milvus at {uri}: {exc}; {hint}") from None

    @property
    def _lite_key(self) -> str:
        return str(Path(self.uri).resolve())

    def load(self) -> None:
        if not self.client.has_collection(self.collection):
            self.create()
        self.client.load_collection(self.collection)
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        self._count = int(res[0]["count(*)"])

    def create(self) -> None:
        from pymilvus import DataType

        if self.client.has_collection(self.collection):
            raise FileExistsError(f"Milvus at {self.uri} already has a collection '{self.collection}' (another "
                                  "index's?); remove that index, or ingest under another --index name")
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        params = self.client.prepare_index_params()
        kind, build, _ = MILVUS_INDEX[self.index_type]
        params.add_index("vector", index_type=kind, metric_type="IP", params=build)
        self.client.create_collection(self.collection, schema=schema, index_params=params)

    def __len__(self) -> int:
        return self._count

    def search(self, vectors, k: int):
        import numpy as np

        k = min(k, MILVUS_TOPK)
        hits = self.client.search(self.collection, data=[v for v in vectors], limit=k, output_fields=["id"],
                                  search_params={"metric_type": "IP", "params": MILVUS_INDEX[self.index_type][2]})
        scores, ids = np.zeros((len(vectors), k), "float32"), np.full((len(vectors), k), -1, "int64")
        for row, found in enumerate(hits):
            for col, hit in enumerate(found[:k]):
                scores[row, col], ids[row, col] = hit["distance"], hit["id"]
        return scores, ids

    def apply(self, removed, ids, vectors, source: VectorSource) -> None:
        self._delete(removed)
        self._insert(ids, vectors)
        self._count += len(ids) - len(removed)

    def sync(self, source: VectorSource) -> None:
        """Make the collection's id set the store's, window by window over the row-id range (every id the
        collection can hold was committed to the store first, so none lies above its highest id)."""
        import numpy as np

        window = MILVUS_TOPK // 2
        for lo in range(0, source.max_chunk_id() + 1, window):
            rows = self.client.query(self.collection, filter=f"id >= {lo} and id < {lo + window}",
                                     output_fields=["id"], limit=MILVUS_TOPK)
            have = np.array(sorted(r["id"] for r in rows), dtype="int64")
            want = source.chunk_ids(lo, lo + window)
            self._delete(np.setdiff1d(have, want))
            missing = np.setdiff1d(want, have)
            if len(missing):
                self._insert(*source.chunk_vectors(missing))
        self._count = len(source.chunk_ids())

    def _delete(self, ids) -> None:
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), BATCH):
            self.client.delete(self.collection, ids=ids[s:s + BATCH])

    def _insert(self, ids, vectors) -> None:
        for s in range(0, len(ids), BATCH):
            self.client.insert(self.collection, [{"id": int(i), "vector": v} for i, v in
                                                 zip(ids[s:s + BATCH], vectors[s:s + BATCH])])

    def save(self) -> None:
        pass  # Milvus made each insert/delete durable when it acknowledged it

    def drop(self) -> None:
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
            self._release()

    def _release(self) -> None:
        """The last user of a milvus-lite .db in this process stops its server, freeing the file lock."""
        if not is_lite(self.uri):
            return
        with _LITE_LOCK:
            left = _LITE_USERS.get(self._lite_key, 1) - 1
            _LITE_USERS[self._lite_key] = left
            if left <= 0:
                _LITE_USERS.pop(self._lite_key, None)
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.uri)


def open_vectors(folder: Path, manifest: dict):
    """The vector store a manifest names (no "vectors" entry: the FAISS file, as before it existed)."""
    spec = manifest.get("vectors") or {"store": "faiss"}
    dim, index_type = int(manifest["embedder"]["dim"]), manifest.get("index_type", "flat")
    if spec["store"] == "faiss":
        return FaissVectors(folder, dim, index_type)
    if spec["store"] == "milvus":
        return MilvusVectors(resolve_uri(folder, spec["uri"]), spec["collection"], dim, index_type)
    raise ValueError(f"index {folder} names vector store '{spec['store']}', not one of {STORES}; "
                     "upgrade loracle or rebuild the index")


def resolve_uri(folder: Path, uri: str) -> str:
    """A relative milvus-lite path is relative to the index folder (so the folder can move)."""
    return str(folder / uri) if is_lite(uri) and not Path(uri).is_absolute() else uri
