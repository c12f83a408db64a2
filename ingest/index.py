"""The on-disk index: `indexes/<name>/` holds

- `chunks.sqlite`  the store of record: documents, chunks (text, offsets, metadata as JSON) and each
                   chunk's float32 vector. SQLite transactions make every write all-or-nothing.
- the vectors      derived from the store, in one of two stores chosen at creation (`ingest.vectors`):
                   `index.faiss` (default: a FAISS file, temp + `os.replace`) or a Milvus collection
                   (`vectors.db` here for the embedded milvus-lite, or a Milvus server's URI).
                   Either is re-synced from the store on open if a crash left it out of step;
                   `ingest.vectors` tells the consistency story.
- `manifest.json`  embedder name + dim, chunker settings, vector store and index type, documents with
                   content hashes, counts, created/updated times, generation, format version (also
                   temp + `os.replace`; written last, so its generation marks the vectors as in step).
- `.lock`          held by the one writer (filelock); a second writer is refused at once.

Index types (default "auto": flat below 100,000 chunks, IVF-SQ8 above) are in `ingest.vectors`; folder
operations (names -> paths, listing, removal, the lock) in `ingest.folders`, re-exported here.
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

from ingest import folders
from ingest.config import DEFAULT_EMBEDDER, ChunkConfig
from ingest.folders import WRITER_WAIT_S, IndexLockedError, index_path, list_indexes, write_atomic, writer_lock
from ingest.types import Chunk, Document
from ingest.vectors import (AUTO_ANN_FROM, INDEX_TYPES, STORES, build_faiss_index, check_index_type, collection_name,
                            open_vectors)

__all__ = ["Index", "IndexWriter", "IndexLockedError", "index_path", "list_indexes", "remove_index",
           "build_faiss_index", "FORMAT_VERSION", "INDEX_TYPES", "STORES", "AUTO_ANN_FROM"]

FORMAT_VERSION = 1
LITE_FILE = "vectors.db"  # the embedded milvus-lite database of `--store milvus` without --uri, in the index folder
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


def remove_index(name_or_path: str | Path) -> Path:
    """Delete an index folder and its vectors (a Milvus collection too) once no writer holds it."""
    path = index_path(name_or_path)
    mf = path / "manifest.json"
    manifest = json.loads(mf.read_text()) if mf.is_file() else {}
    if (manifest.get("vectors") or {}).get("store") == "milvus":
        with writer_lock(path):
            vectors = open_vectors(path, manifest)
            try:
                vectors.drop()
            finally:
                vectors.close()
    return folders.remove_index(path)


class Index:
    """One index folder. Reads are thread-safe; writes go through `writer()` (one process at a time)."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self._db = sqlite3.connect(path / "chunks.sqlite", isolation_level=None, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._mutex = threading.RLock()
        try:
            self._vectors = open_vectors(path, manifest)
        except BaseException:
            self._db.close()
            raise
        try:
            self._load_vectors()
        except BaseException:
            self.close()
            raise

    # --- open / create ------------------------------------------------------------------------
    @classmethod
    def create(cls, name_or_path: str | Path, embedder: str = DEFAULT_EMBEDDER, dim: int | None = None,
               chunk: ChunkConfig | None = None, index_type: str = "auto", store: str = "faiss",
               uri: str | None = None) -> "Index":
        """A new empty index. `store`: "faiss" (a file in the folder) or "milvus" (`uri`: a `.db` path for the
        embedded milvus-lite, default `vectors.db` in the folder, or http(s)://HOST:PORT of a Milvus server)."""
        path = index_path(name_or_path)
        if (path / "manifest.json").exists():
            raise FileExistsError(f"index {path} already exists; open it, or remove it with `loracle index remove`")
        folders.check_new_index_folder(path)
        check_index_type(index_type)
        if store not in STORES:
            raise ValueError(f"vector store '{store}' is not one of {STORES}; pass --store faiss or --store milvus")
        if uri and store != "milvus":
            raise ValueError(f"a URI ({uri}) is only for the Milvus store; add --store milvus, or drop --uri")
        if dim is None:
            from ingest.embed import get_embedder

            dim = get_embedder(embedder).dim
        now = _now()
        vectors = {"store": "faiss", "file": "index.faiss"} if store == "faiss" else \
            {"store": "milvus", "uri": uri or LITE_FILE, "collection": collection_name(path.name)}
        manifest = {
            "format_version": FORMAT_VERSION, "name": path.name,
            "embedder": {"name": embedder, "dim": int(dim), "normalized": True}, "metric": "inner_product",
            "index_type": index_type, "vectors": vectors,
            "chunker": {**asdict(chunk or ChunkConfig()), "splitter": "RecursiveCharacterTextSplitter"},
            "store": "chunks.sqlite", "created": now, "updated": now, "generation": 0,
            "counts": {"documents": 0, "chunks": 0}, "documents": [],
        }
        with writer_lock(path):
            if store == "milvus":  # a bad URI or a collection name already taken fails here, not at the first ingest
                v = open_vectors(path, manifest)
                try:
                    v.create()
                finally:
                    v.close()
            write_atomic(path / "manifest.json", lambda t: t.write_text(json.dumps(manifest, indent=1)))
        return cls(path, manifest)

    @classmethod
    def open(cls, name_or_path: str | Path, embedder: str | None = None) -> "Index":
        path = index_path(name_or_path)
        mf = path / "manifest.json"
        if not mf.is_file():
            raise FileNotFoundError(f"no index at {path}; build it with `loracle ingest PATH --index {name_or_path}`")
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
    def store(self) -> str:
        """Where the vectors live: "faiss" or "milvus"."""
        return self._vectors.kind

    @property
    def chunk_config(self) -> ChunkConfig:
        c = self.manifest["chunker"]
        return ChunkConfig(size=c["size"], overlap=c["overlap"], unit=c["unit"])

    def __len__(self) -> int:
        return len(self._vectors)

    def close(self) -> None:
        self._db.close()
        self._vectors.close()

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
        """Nearest chunks: (scores, ids), each (n_queries, k); missing hits have id -1. `vectors` are
        query embeddings from this index's embedder; scores are cosine similarities.

        >>> ix = Index.open("pubmedqa")
        >>> scores, ids = ix.search(get_embedder(ix.embedder).encode(["Does aspirin relieve headache?"]), k=5)
        >>> [c.doc_id for c in ix.get_chunks(ids[0]) if c]
        ['12345678', ...]
        """
        import numpy as np

        vectors = np.ascontiguousarray(vectors, dtype="float32").reshape(-1, self.dim)
        with self._mutex:
            n = len(self._vectors)
            if n == 0:
                return np.zeros((len(vectors), 0), "float32"), np.zeros((len(vectors), 0), "int64")
            return self._vectors.search(vectors, min(k, n))

    def get_chunks(self, ids) -> list[Chunk | None]:
        """Chunks for search ids, in order; None for an id no longer in the store."""
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

    # --- the store as a source of vectors (ingest.vectors.VectorSource) ----------------------------
    def chunk_ids(self, lo: int = 0, hi: int | None = None):
        """Sorted row ids of the stored chunks in [lo, hi)."""
        import numpy as np

        with self._mutex:
            rows = self._db.execute("SELECT id FROM chunks WHERE id >= ? AND id < ? ORDER BY id",
                                    (lo, hi if hi is not None else 2 ** 62)).fetchall()
        return np.array([r[0] for r in rows], dtype="int64")

    def chunk_vectors(self, ids=None):
        """(ids, vectors) of the stored chunks: all of them, or those `ids`; ordered by id."""
        import numpy as np

        with self._mutex:
            if ids is None:
                n = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
                rows = self._db.execute("SELECT id, vector FROM chunks ORDER BY id")
            else:
                ids = sorted(int(i) for i in ids)
                n = len(ids)
                rows = (r for s in range(0, n, 500) for r in self._db.execute(
                    f"SELECT id, vector FROM chunks WHERE id IN ({','.join('?' * len(ids[s:s + 500]))}) ORDER BY id",
                    ids[s:s + 500]))
            out_ids, out = np.zeros(n, "int64"), np.zeros((n, self.dim), "float32")
            got = 0
            for got, (i, blob) in enumerate(rows, 1):  # filled in place: no second copy of a large store
                out_ids[got - 1], out[got - 1] = i, np.frombuffer(blob, dtype="float32")
        return out_ids[:got], out[:got]

    def max_chunk_id(self) -> int:
        """The highest chunk row id ever given out (AUTOINCREMENT never reuses one)."""
        with self._mutex:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='chunks'").fetchone()
        return int(row[0]) if row else 0

    # --- writing ----------------------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator["IndexWriter"]:
        """All changes inside the block are applied together, or (on any exception) not at all.

        >>> with ix.writer() as w:
        ...     w.put(doc, chunks, vectors)
        ...     w.remove("old-doc")
        """
        with writer_lock(self.path, timeout=WRITER_WAIT_S), self._mutex:
            if self.stamp()[0] != self.manifest.get("generation") or not self._in_step():
                # another process wrote since we opened (or crashed half-way): catch up from disk and the store
                self.manifest = json.loads((self.path / "manifest.json").read_text())
                self._vectors.load()
                if not self._in_step():
                    self._resync()
            self._db.execute("BEGIN IMMEDIATE")
            w = IndexWriter(self)
            try:
                yield w
                if w.changed:
                    self._commit(w)
                else:
                    self._db.execute("ROLLBACK")
            except BaseException:
                if self._db.in_transaction:  # before the commit: nothing reached the vectors (they follow it)
                    self._db.execute("ROLLBACK")
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
        """Store first (the commit point), then the vectors, then the manifest that marks them in step."""
        generation = max(int(self.manifest.get("generation", 0)), self._store_generation()) + 1
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(generation),))
        self._db.execute("COMMIT")
        self._vectors.apply(*w.pending(), self)
        self._vectors.save()
        if w.chunker is not None:
            self.manifest["chunker"] = {**asdict(w.chunker), "splitter": "RecursiveCharacterTextSplitter"}
        self._write_manifest(generation)

    def _store_generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def _in_step(self) -> bool:
        n_chunks = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return self._store_generation() == self.manifest.get("generation", 0) and len(self._vectors) == n_chunks

    def _load_vectors(self) -> None:
        """Load the vectors; if a crash left them behind the store, re-sync them and write the manifest
        now, unless a writer holds the lock (it will leave everything in step when it commits)."""
        with self._mutex:
            self._vectors.load()
            if self._in_step():
                return
            try:
                with writer_lock(self.path):
                    self._resync()
            except IndexLockedError:
                if not self._vectors.shared:  # this process's own copy: in step with the store as committed now
                    self._vectors.sync(self)

    def _resync(self) -> None:
        """Re-derive the vectors from the store and mark them in step (caller holds the writer lock)."""
        self._vectors.sync(self)
        self._vectors.save()
        self._write_manifest(self._store_generation())

    def _write_manifest(self, generation: int) -> None:
        docs = self.documents()
        self.manifest.update(generation=generation, updated=_now(),
                             counts={"documents": len(docs), "chunks": len(self._vectors)},
                             documents=[{k: d[k] for k in ("doc_id", "source", "title", "sha256", "format", "chunks")}
                                        for d in docs])
        write_atomic(self.path / "manifest.json", lambda t: t.write_text(json.dumps(self.manifest, indent=1)))


class IndexWriter:
    """Handed out by `Index.writer()`; valid only inside that block. Changes go to the store at once
    and are handed to the vector store after the commit (`pending`)."""

    def __init__(self, index: Index):
        self._ix = index
        self.changed = False
        self._removed: list[int] = []  # committed rows this block deletes
        self._added: list[tuple[list[int], Any]] = []  # (row ids, vectors) this block inserts
        self._new: set[int] = set()  # every row id in _added
        self._dropped: set[int] = set()  # rows inserted and deleted again inside this block
        self.chunker: ChunkConfig | None = None  # new chunker settings for the manifest, set by set_chunker

    def pending(self):
        """(removed ids, added ids, added vectors) for the vector store."""
        import numpy as np

        ids = np.array([i for part, _ in self._added for i in part], dtype="int64")
        vectors = np.concatenate([v for _, v in self._added]) if self._added else np.zeros((0, self._ix.dim), "float32")
        keep = np.array([i not in self._dropped for i in ids], dtype=bool)
        return np.array(self._removed, dtype="int64"), ids[keep], np.ascontiguousarray(vectors[keep])

    def _drop_chunks(self, doc_id: str) -> int:
        db = self._ix._db
        ids = [r[0] for r in db.execute("SELECT id FROM chunks WHERE doc_id=?", (doc_id,))]
        if ids:
            db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
            self._dropped.update(i for i in ids if i in self._new)
            self._removed.extend(i for i in ids if i not in self._new)
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
            self._added.append((ids, vectors))
            self._new.update(ids)
        self.changed = True

    def set_chunker(self, chunk: ChunkConfig) -> None:
        """Record new default chunker settings (documents re-chunked with them) in the manifest at commit."""
        if chunk != self._ix.chunk_config:
            self.chunker = chunk
            self.changed = True

    def remove(self, doc_id: str) -> bool:
        db = self._ix._db
        if not db.execute("SELECT 1 FROM documents WHERE doc_id=?", (doc_id,)).fetchone():
            return False
        self._drop_chunks(doc_id)
        db.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,))
        self.changed = True
        return True
