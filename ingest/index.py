"""The on-disk index: `indexes/<name>/` holds

- `chunks.sqlite`  the store of record: documents, chunks (text, offsets, metadata as JSON) and each
                   chunk's float32 vector. SQLite transactions make every write all-or-nothing.
- `index.faiss`    inner-product FAISS index over normalised vectors, ids = chunk row ids. Derived
                   from the store: written to a temp file then `os.replace`d, and rebuilt from the
                   store on open if it is ever out of step (a crash between the two writes).
- `manifest.json`  embedder name + dim, chunker settings, documents with content hashes, counts,
                   created/updated times, generation, format version (also temp + `os.replace`).
- `.lock`          held by the one writer (filelock); a second writer is refused at once.

Folder-level operations (names -> paths, listing, removal, the lock) live in `ingest.folders` and
are re-exported here.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ingest.config import DEFAULT_EMBEDDER, ChunkConfig
from ingest.folders import (WRITER_WAIT_S, IndexLockedError, index_path, list_indexes, remove_index, write_atomic,
                            writer_lock)
from ingest.types import Chunk, Document

__all__ = ["Index", "IndexWriter", "IndexLockedError", "index_path", "list_indexes", "remove_index",
           "make_faiss_index", "FORMAT_VERSION", "INDEX_TYPES"]

FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "hnsw")  # flat: exact; hnsw: approximate, for very large indexes (benchmarks/search.py)
HNSW_M, HNSW_EF_SEARCH = 32, 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (doc_id TEXT PRIMARY KEY, source TEXT, title TEXT, sha256 TEXT,
    format TEXT, chunker TEXT, n_chunks INTEGER, metadata TEXT, added TEXT);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, chunk_id TEXT UNIQUE, doc_id TEXT,
    text TEXT, start INTEGER, end INTEGER, metadata TEXT, vector BLOB);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def make_faiss_index(dim: int, index_type: str = "flat"):
    import faiss

    if index_type == "flat":
        base = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        base = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"index type '{index_type}' is not one of {INDEX_TYPES}")
    return faiss.IndexIDMap2(base)


class Index:
    """One index folder. Reads are thread-safe; writes go through `writer()` (one process at a time)."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self._db = sqlite3.connect(path / "chunks.sqlite", isolation_level=None, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._mutex = threading.RLock()
        self._stale = False
        self._faiss = self._load_faiss()
        if self._stale:
            self._repair()

    # --- open / create ------------------------------------------------------------------------
    @classmethod
    def create(cls, name_or_path: str | Path, embedder: str = DEFAULT_EMBEDDER, dim: int | None = None,
               chunk: ChunkConfig | None = None, index_type: str = "flat") -> "Index":
        path = index_path(name_or_path)
        if (path / "manifest.json").exists():
            raise FileExistsError(f"index {path} already exists; open it, or remove it with `loracle index remove`")
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index type '{index_type}' is not one of {INDEX_TYPES}")
        if dim is None:
            from ingest.embed import get_embedder

            dim = get_embedder(embedder).dim
        now = _now()
        manifest = {
            "format_version": FORMAT_VERSION, "name": path.name,
            "embedder": {"name": embedder, "dim": int(dim), "normalized": True}, "metric": "inner_product",
            "index_type": index_type, "chunker": {**asdict(chunk or ChunkConfig()), "splitter": "RecursiveCharacterTextSplitter"},
            "store": "chunks.sqlite", "created": now, "updated": now, "generation": 0,
            "counts": {"documents": 0, "chunks": 0}, "documents": [],
        }
        with writer_lock(path):
            write_atomic(path / "manifest.json", lambda t: t.write_text(json.dumps(manifest, indent=1)))
        return cls(path, manifest)

    @classmethod
    def open(cls, name_or_path: str | Path, embedder: str | None = None) -> "Index":
        path = index_path(name_or_path)
        mf = path / "manifest.json"
        if not mf.is_file():
            raise FileNotFoundError(f"no index at {path}; build it with `loracle ingest PATH --index {path.name}`")
        manifest = json.loads(mf.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"index {path} has format version {manifest.get('format_version')}, this loracle reads "
                             f"{FORMAT_VERSION}; rebuild it with `loracle ingest`")
        need = manifest["embedder"]["name"]
        if embedder is not None and embedder != need:
            raise ValueError(f"index '{path.name}' was built with embedder '{need}' (dim {manifest['embedder']['dim']}); "
                             f"open it with embedder '{need}' (--embedder {need}), or ingest into a new index")
        return cls(path, manifest)

    @classmethod
    def open_or_create(cls, name_or_path: str | Path, embedder: str | None = None, **create_kw) -> "Index":
        if (index_path(name_or_path) / "manifest.json").is_file():
            return cls.open(name_or_path, embedder=embedder)
        return cls.create(name_or_path, embedder=embedder or DEFAULT_EMBEDDER, **create_kw)

    # --- properties -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def embedder(self) -> str:
        return self.manifest["embedder"]["name"]

    @property
    def dim(self) -> int:
        return int(self.manifest["embedder"]["dim"])

    @property
    def chunk_config(self) -> ChunkConfig:
        c = self.manifest["chunker"]
        return ChunkConfig(size=c["size"], overlap=c["overlap"], unit=c["unit"])

    def __len__(self) -> int:
        return int(self._faiss.ntotal)

    def close(self) -> None:
        self._db.close()

    # --- reading ----------------------------------------------------------------------------------
    def documents(self) -> list[dict[str, Any]]:
        with self._mutex:
            rows = self._db.execute("SELECT doc_id, source, title, sha256, format, chunker, n_chunks, metadata, added "
                                    "FROM documents ORDER BY doc_id").fetchall()
        return [{"doc_id": r[0], "source": r[1], "title": r[2], "sha256": r[3], "format": r[4], "chunker": r[5],
                 "chunks": r[6], "metadata": json.loads(r[7]), "added": r[8]} for r in rows]

    def document(self, doc_id: str) -> dict[str, Any] | None:
        return next((d for d in self.documents() if d["doc_id"] == doc_id), None)

    def fingerprints(self) -> dict[str, tuple[str, str]]:
        """doc_id -> (sha256, chunker) for cheap skip checks."""
        with self._mutex:
            return {r[0]: (r[1], r[2]) for r in self._db.execute("SELECT doc_id, sha256, chunker FROM documents")}

    def search(self, vectors, k: int):
        """FAISS search: (scores, ids), each (n_queries, k); missing hits have id -1. `vectors` are
        query embeddings from this index's embedder; scores are cosine similarities.

        >>> ix = Index.open("pubmedqa")
        >>> scores, ids = ix.search(get_embedder(ix.embedder).encode(["Does aspirin relieve headache?"]), k=5)
        >>> [c.doc_id for c in ix.get_chunks(ids[0]) if c]
        ['12345678', ...]
        """
        import numpy as np

        vectors = np.ascontiguousarray(vectors, dtype="float32").reshape(-1, self.dim)
        with self._mutex:
            if self._faiss.ntotal == 0:
                return np.zeros((len(vectors), 0), "float32"), np.zeros((len(vectors), 0), "int64")
            if len(vectors) > 8:
                return self._faiss.search(vectors, min(k, self._faiss.ntotal))
            import faiss

            before = faiss.omp_get_max_threads()  # a few queries gain nothing from an OpenMP team
            faiss.omp_set_num_threads(1)
            try:
                return self._faiss.search(vectors, min(k, self._faiss.ntotal))
            finally:
                faiss.omp_set_num_threads(before)

    def get_chunks(self, ids) -> list[Chunk | None]:
        """Chunks for FAISS ids, in order; None for an id no longer in the store."""
        ids = [int(i) for i in ids]
        found: dict[int, Chunk] = {}
        with self._mutex:
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                q = f"SELECT id, chunk_id, doc_id, text, start, end, metadata FROM chunks WHERE id IN ({','.join('?' * len(part))})"
                for r in self._db.execute(q, part):
                    found[r[0]] = Chunk(chunk_id=r[1], doc_id=r[2], text=r[3], start=r[4], end=r[5], metadata=json.loads(r[6]))
        return [found.get(i) for i in ids]

    def iter_chunks(self) -> Iterator[tuple[int, Chunk]]:
        with self._mutex:
            rows = self._db.execute("SELECT id, chunk_id, doc_id, text, start, end, metadata FROM chunks ORDER BY id").fetchall()
        for r in rows:
            yield r[0], Chunk(chunk_id=r[1], doc_id=r[2], text=r[3], start=r[4], end=r[5], metadata=json.loads(r[6]))

    def stamp(self) -> tuple[int, str]:
        """(generation, updated) as on disk now: changes whenever any process writes this index."""
        m = json.loads((self.path / "manifest.json").read_text())
        return int(m.get("generation", 0)), str(m.get("updated"))

    # --- writing ----------------------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator["IndexWriter"]:
        """All changes inside the block are applied together, or (on any exception) not at all.

        >>> with ix.writer() as w:
        ...     w.put(doc, chunks, vectors)
        ...     w.remove("old-doc")
        """
        with writer_lock(self.path, timeout=WRITER_WAIT_S), self._mutex:
            if self.stamp()[0] != self.manifest.get("generation") or self._store_generation() != self.manifest.get("generation"):
                # another process wrote since we opened (or crashed half-way): start from the store
                self.manifest = json.loads((self.path / "manifest.json").read_text())
                self._faiss = self._load_faiss()
            self._db.execute("BEGIN IMMEDIATE")
            w = IndexWriter(self)
            try:
                yield w
                if w.changed:
                    self._commit(w)
                else:
                    self._db.execute("ROLLBACK")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._faiss = self._load_faiss()
                raise

    def add(self, doc: Document, chunks: list[Chunk], vectors, chunker: str = "") -> None:
        """Add one document (or replace every chunk of an older version of it) in its own transaction.
        `vectors`: one row per chunk from this index's embedder. To add many documents in one commit,
        use `writer()`; to go from files, `ingest.ingest_paths`.

        >>> doc = Document("note-1", "note-1.txt", "Aspirin relieved tension headache.", {"title": "Note 1"})
        >>> chunks = chunk(doc)
        >>> ix.add(doc, chunks, get_embedder(ix.embedder).encode([c.text for c in chunks]))
        """
        with self.writer() as w:
            w.put(doc, chunks, vectors, chunker=chunker)

    def remove(self, doc_id: str) -> bool:
        """Remove a document and its chunks; False when there is no document `doc_id`.

        >>> Index.open("my-papers").remove("paper-1")
        True
        """
        with self.writer() as w:
            return w.remove(doc_id)

    def _commit(self, w: "IndexWriter") -> None:
        import faiss

        if w.needs_rebuild:
            self._faiss = self._rebuild_faiss()
        generation = max(int(self.manifest.get("generation", 0)), self._store_generation()) + 1
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(generation),))
        self._db.execute("COMMIT")
        self._write_derived(faiss, generation)

    def _store_generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def _load_faiss(self):
        import faiss

        with self._mutex:
            f = self.path / "index.faiss"
            store_gen = self._store_generation()
            n_chunks = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            if f.is_file():
                index = faiss.read_index(str(f))
                if store_gen == self.manifest.get("generation", 0) and index.ntotal == n_chunks:
                    return index
            self._stale = bool(n_chunks) or store_gen != self.manifest.get("generation", 0)
            return self._rebuild_faiss() if n_chunks else make_faiss_index(self.dim, self.manifest.get("index_type", "flat"))

    def _repair(self) -> None:
        """A crash fell between the store's commit and the FAISS/manifest writes: bring both in line
        with the store (the store of record) now, if no writer holds the lock."""
        import faiss

        try:
            with writer_lock(self.path), self._mutex:
                self._write_derived(faiss, self._store_generation())
        except IndexLockedError:
            pass  # the writer will leave everything consistent when it commits
        self._stale = False

    def _write_derived(self, faiss, generation: int) -> None:
        write_atomic(self.path / "index.faiss", lambda t: faiss.write_index(self._faiss, str(t)))
        docs = self.documents()
        self.manifest.update(generation=generation, updated=_now(),
                             counts={"documents": len(docs), "chunks": int(self._faiss.ntotal)},
                             documents=[{k: d[k] for k in ("doc_id", "source", "title", "sha256", "format", "chunks")}
                                        for d in docs])
        write_atomic(self.path / "manifest.json", lambda t: t.write_text(json.dumps(self.manifest, indent=1)))

    def _rebuild_faiss(self):
        import numpy as np

        index = make_faiss_index(self.dim, self.manifest.get("index_type", "flat"))
        rows = self._db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        if rows:
            ids = np.array([r[0] for r in rows], dtype="int64")
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="float32").reshape(len(rows), self.dim)
            index.add_with_ids(vecs, ids)
        return index


class IndexWriter:
    """Handed out by `Index.writer()`; valid only inside that block."""

    def __init__(self, index: Index):
        self._ix = index
        self.changed = False
        self.needs_rebuild = False

    def _drop_chunks(self, doc_id: str) -> int:
        import numpy as np

        db = self._ix._db
        ids = [r[0] for r in db.execute("SELECT id FROM chunks WHERE doc_id=?", (doc_id,))]
        if ids:
            db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
            if self._ix.manifest.get("index_type", "flat") == "flat":
                self._ix._faiss.remove_ids(np.array(ids, dtype="int64"))
            else:
                self.needs_rebuild = True  # HNSW cannot delete; rebuilt from the store at commit
        return len(ids)

    def put(self, doc: Document, chunks: list[Chunk], vectors, chunker: str = "") -> None:
        """Add `doc` or replace every chunk of an older version of it."""
        import numpy as np

        vectors = np.ascontiguousarray(vectors, dtype="float32")
        if vectors.shape != (len(chunks), self._ix.dim):
            raise ValueError(f"{doc.doc_id}: got vectors of shape {vectors.shape} for {len(chunks)} chunks "
                             f"(index dim {self._ix.dim})")
        db = self._ix._db
        self._drop_chunks(doc.doc_id)
        meta = {k: v for k, v in doc.metadata.items() if k not in ("spans", "sha256", "title", "format")}
        db.execute("INSERT OR REPLACE INTO documents VALUES (?,?,?,?,?,?,?,?,?)",
                   (doc.doc_id, doc.source, doc.metadata.get("title", doc.doc_id), doc.metadata.get("sha256", ""),
                    doc.metadata.get("format", ""), chunker, len(chunks), json.dumps(meta), _now()))
        ids = []
        for c, v in zip(chunks, vectors):
            cur = db.execute("INSERT INTO chunks (chunk_id, doc_id, text, start, end, metadata, vector) VALUES (?,?,?,?,?,?,?)",
                             (c.chunk_id, c.doc_id, c.text, c.start, c.end, json.dumps(c.metadata), v.tobytes()))
            ids.append(cur.lastrowid)
        if ids:
            self._ix._faiss.add_with_ids(vectors, np.array(ids, dtype="int64"))
        self.changed = True

    def remove(self, doc_id: str) -> bool:
        db = self._ix._db
        if not db.execute("SELECT 1 FROM documents WHERE doc_id=?", (doc_id,)).fetchone():
            return False
        self._drop_chunks(doc_id)
        db.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,))
        self.changed = True
        return True
