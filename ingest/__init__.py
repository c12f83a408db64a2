"""Ingestion: documents -> chunks -> embeddings -> an on-disk index (SQLite chunk store; vectors in FAISS
or Milvus). Knows nothing of `app`.

The public API, importable from the package (loaded on first use, so `import ingest` stays fast):

    from ingest import ingest_paths, Index

    report = ingest_paths(["papers/", "notes.md"], index="my-papers")  # add or update files
    print(report.added, report.skipped, report.rejected)               # rejected: (path, reason)

    ix = Index.open("my-papers")
    scores, ids = ix.search(query_vectors, k=5)   # vectors from ingest.embed.get_embedder(ix.embedder)
    passages = ix.get_chunks(ids[0])

Stages, one module each: `load` (files -> Document), `chunk` (Document -> Chunk), `embed`
(texts -> vectors), `index` (the index folder) with `vectors` (its FAISS or Milvus vector store);
`pipeline` runs them; `safety` screens untrusted files; `formats` is the table of supported formats;
`config` holds the defaults.
"""
from __future__ import annotations

from importlib import import_module as _import_module
from typing import TYPE_CHECKING

# name -> module that defines it; imported on first access (PEP 562)
# (the stage functions `load` and `chunk` stay in their modules: as package attributes they would clash
# with the submodules ingest.load and ingest.chunk)
_EXPORTS = {
    "ingest_paths": "ingest.pipeline", "ensure_default_index": "ingest.pipeline", "IngestReport": "ingest.pipeline",
    "Index": "ingest.index", "IndexLockedError": "ingest.index", "list_indexes": "ingest.index",
    "LoadError": "ingest.load",
    "get_embedder": "ingest.embed",
    "Document": "ingest.types", "Chunk": "ingest.types",
    "ChunkConfig": "ingest.config", "IngestConfig": "ingest.config", "DEFAULT_INDEX": "ingest.config",
    "DEFAULT_EMBEDDER": "ingest.config",
}
__all__ = ["Chunk", "ChunkConfig", "DEFAULT_EMBEDDER", "DEFAULT_INDEX", "Document", "Index", "IndexLockedError",
           "IngestConfig", "IngestReport", "LoadError", "ensure_default_index", "get_embedder", "ingest_paths",
           "list_indexes"]  # = the keys of _EXPORTS

if TYPE_CHECKING:
    from ingest.config import DEFAULT_EMBEDDER, DEFAULT_INDEX, ChunkConfig, IngestConfig
    from ingest.embed import get_embedder
    from ingest.index import Index, IndexLockedError, list_indexes
    from ingest.load import LoadError
    from ingest.pipeline import IngestReport, ensure_default_index, ingest_paths
    from ingest.types import Chunk, Document


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ingest' has no attribute '{name}'")
    value = getattr(_import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({n for n in globals() if n.startswith("__")} | set(_EXPORTS))
