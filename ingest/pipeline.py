"""Files -> index, incrementally: load -> chunk -> embed -> write, with loading/chunking in a
background thread so it overlaps with embedding. Unchanged documents (same content hash and chunker
settings) are skipped before parsing; changed ones have their old chunks replaced; bad files are
rejected with a one-line reason while the rest of the batch goes in. All changes of one call are
committed together, so a failure leaves the existing index as it was.
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ingest.chunk import chunk, validate
from ingest.config import DEFAULT_INDEX, ChunkConfig, IngestConfig, home
from ingest.formats import format_of
from ingest.index import Index, index_path
from ingest.load import LoadError, iter_files, load
from ingest.safety import FileCheck, SafetyLimits, screen_file
from ingest.types import Chunk, Document

Progress = Callable[[int, int, str], None]  # (documents done, documents expected, current name)


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)  # doc ids embedded by this call (new or changed)
    skipped: list[str] = field(default_factory=list)  # unchanged: same content hash and chunker
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    removed: list[str] = field(default_factory=list)
    chunks_added: int = 0
    replaced: list[str] = field(default_factory=list)  # the part of `added` that replaced an older version
    index: str = ""
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (doc id, another doc id with the same bytes)


class _Tracker:
    """Counts documents done across both threads; a JSONL corpus grows the expected total when read."""

    def __init__(self, total: int, callback: Progress | None):
        self.total, self.done, self.callback = total, 0, callback
        self._lock = threading.Lock()

    def grow(self, n: int) -> None:
        with self._lock:
            self.total += n

    def step(self, name: str) -> None:
        with self._lock:
            self.done += 1
            if self.callback:
                self.callback(self.done, self.total, name)


def chunker_key(c: ChunkConfig) -> str:
    return f"{c.unit}:{c.size}:{c.overlap}"


def default_corpus() -> Path:
    return home() / "data" / "pubmedqa" / "corpus.jsonl"


@dataclass(frozen=True)
class ShippedIndex:
    corpus: tuple[str, ...]  # JSONL parts under data/ (git hosts refuse files over 20 MB)
    chunk: ChunkConfig | None = None  # None: the default chunker


# Indexes built from corpora shipped under data/: the default one at start-up, the others in the background
# (`loracle ui` / `serve`) or on first use (`loracle ask | compare | eval | calibrate`), in this order.
# pubmedqa-1000: the same abstracts chunked as medical-pubmedqa v2 was trained on (its card names it; 2 min).
# pubmedqa-doc: one chunk per abstract (3000/0), as medical-pubmedqa v3 was trained on (its card names it).
# medquad: 5490 documents, about 48k chunks, about 25 minutes on 2 cores (medical-consumer names it).
SHIPPED_INDEXES = {
    DEFAULT_INDEX: ShippedIndex(("data/pubmedqa/corpus.jsonl",)),
    "pubmedqa-1000": ShippedIndex(("data/pubmedqa/corpus.jsonl",), ChunkConfig(size=1000, overlap=150)),
    "pubmedqa-doc": ShippedIndex(("data/pubmedqa/corpus.jsonl",), ChunkConfig(size=3000, overlap=0)),
    "medquad": ShippedIndex(("data/medquad/corpus-1.jsonl", "data/medquad/corpus-2.jsonl")),
}


def _built(name: str) -> bool:
    return (index_path(name) / "manifest.json").is_file()


def missing_shipped_indexes() -> list[str]:
    """Shipped indexes (other than the default one) whose corpus is here but whose index is not built."""
    return [name for name, shipped in SHIPPED_INDEXES.items()
            if name != DEFAULT_INDEX and all((home() / part).is_file() for part in shipped.corpus)
            and not _built(name)]


def build_shipped_index(name: str, progress: Progress | None = None) -> IngestReport:
    """Build one shipped index from its corpus under data/ (see SHIPPED_INDEXES)."""
    if name not in SHIPPED_INDEXES:
        raise ValueError(f"'{name}' is not a shipped index; choose one of {', '.join(SHIPPED_INDEXES)}")
    shipped = SHIPPED_INDEXES[name]
    missing = [part for part in shipped.corpus if not (home() / part).is_file()]
    if missing:
        where = ", ".join(str(home() / part) for part in missing)
        fix = ("copy the repository's data/ folder there, or unset LORACLE_HOME" if "LORACLE_HOME" in os.environ
               else "restore it from the repository (git checkout -- data)")
        raise FileNotFoundError(f"the corpus of index '{name}' is missing ({where}); {fix}")
    config = IngestConfig(chunk=shipped.chunk) if shipped.chunk else None
    return ingest_paths([home() / part for part in shipped.corpus], index=name, config=config, progress=progress)


def _open(index: str | Path, config: IngestConfig | None) -> tuple[Index, IngestConfig]:
    if config is not None:
        validate(config.chunk)
        ix = Index.open_or_create(index, embedder=config.embedder, chunk=config.chunk)
        return ix, config
    ix = Index.open_or_create(index)
    return ix, IngestConfig(embedder=ix.embedder, chunk=ix.chunk_config)


def ingest_paths(paths: Iterable[str | Path], index: str | Path = DEFAULT_INDEX, config: IngestConfig | None = None,
                 progress: Progress | None = None, remove: Iterable[str] = (),
                 sources: dict[str, str] | None = None) -> IngestReport:
    """Add files / folders / JSONL corpora to `index` (created when missing and there are files to add) and
    remove doc ids (from an index that must exist).

    `index` is a name under indexes/ or a folder path. With `config=None` an existing index keeps its
    own embedder and chunker settings (a new one gets `IngestConfig()`'s). Unchanged documents are
    skipped, changed ones replaced; a file that cannot be ingested is listed in `report.rejected`
    with a one-line reason while the rest go in. `progress(done, total, name)` is called per document.
    All changes are committed together: on an exception the index is left as it was. `sources` maps a file
    path to the source its documents record instead (an upload's own name rather than its temporary copy).

    >>> from ingest import ingest_paths
    >>> report = ingest_paths(["papers/", "notes.md"], index="my-papers")
    >>> report.added, report.skipped, report.rejected
    (['notes', 'paper-1'], [], [])
    """
    from ingest.embed import get_embedder

    paths = list(paths)
    if not paths and not (index_path(index) / "manifest.json").is_file():  # removing only: never create it
        raise FileNotFoundError(f"no index '{index}' to remove documents from; `loracle index list` shows the "
                                "indexes")
    ix, config = _open(index, config)
    report = IngestReport(index=str(ix.path))
    files = iter_files(paths)
    embedder = get_embedder(config.embedder) if files else None
    key = chunker_key(config.chunk)
    try:
        with ix.writer() as w:
            if files:  # an explicit chunker for these files becomes the index's own
                w.set_chunker(config.chunk)
            for doc_id in remove:
                if w.remove(doc_id):
                    report.removed.append(doc_id)
                else:
                    report.rejected.append((doc_id, f"no document '{doc_id}' in index '{ix.name}'"))
            if files:
                known = ix.fingerprints()
                stored = {d["doc_id"]: d.get("source") for d in ix.documents()}
                jobs: queue.Queue = queue.Queue(maxsize=256)
                tracker = _Tracker(len(files), progress)
                producer = threading.Thread(target=_produce, daemon=True, args=(
                    files, known, stored, key, config, embedder.path, report, jobs, tracker,
                    {str(Path(k).expanduser().absolute()): v for k, v in (sources or {}).items()}))
                producer.start()
                _consume(jobs, w, embedder, config.batch_size, key, known, report, tracker)
                producer.join()
                if w.chunker is not None:
                    _check_one_chunking(ix, key)
    finally:
        ix.close()
    return report


def _check_one_chunking(ix: Index, key: str) -> None:
    """New chunk settings become the whole index's: refused (the run rolls back) while other documents would
    stay chunked the old way, since the manifest, `index show` and adapters' chunking checks read one setting."""
    old = sorted(doc_id for doc_id, (_, chunker) in ix.fingerprints().items() if chunker != key)
    if old:
        was = ix.chunk_config
        raise ValueError(f"the new chunk settings would cover only this run's documents: {len(old)} other(s) "
                         f"({', '.join(old[:3])}{', ...' if len(old) > 3 else ''}) stay chunked {was.size}/{was.overlap}. "
                         "Ingest all of the index's documents in one run with the new settings, or put these in a "
                         "new index (--index NEW)")


def remove(doc_ids: Iterable[str], index: str | Path = DEFAULT_INDEX) -> IngestReport:
    """Remove documents by id; an id not in the index is listed in `report.rejected`."""
    return ingest_paths([], index=index, remove=doc_ids)


def _source_name(source: str | None) -> str:
    return Path(str(source or "").removeprefix("upload: ")).name


def _produce(files: list[Path], known: dict[str, tuple[str, str]], stored: dict[str, str], key: str,
             config: IngestConfig, tokenizer_path: str, report: IngestReport, jobs: queue.Queue, tracker: _Tracker,
             sources: dict[str, str]) -> None:
    """Background thread: load + chunk each file, put (doc, chunks) on the queue; None ends it. A document
    whose content another one under another id already has is added, and named in `report.duplicates`."""
    seen: dict[str, str] = {}
    by_sha = {sha: doc_id for doc_id, (sha, _) in known.items() if sha}
    try:
        for path in files:
            try:
                checked = _safety_check(path, config) if path.exists() else FileCheck(None)  # load: "not found"
                if checked.reason:
                    raise LoadError(checked.reason)
                if format_of(path) != "jsonl" and path.is_file():
                    sha = hashlib.sha256(path.read_bytes()).hexdigest()
                    if known.get(path.stem) == (sha, key) and path.stem not in seen:
                        seen[path.stem] = str(path)
                        report.skipped.append(path.stem)
                        tracker.step(path.name)
                        continue
                docs = load(path, pdf=checked.pdf)
            except LoadError as exc:
                report.rejected.append((str(path), str(exc)))
                tracker.step(path.name)
                continue
            except Exception as exc:  # an unexpected parser failure must not sink the batch
                report.rejected.append((str(path), f"could not load: {type(exc).__name__}: {exc}"[:200]))
                tracker.step(path.name)
                continue
            tracker.grow(len(docs) - 1)
            for doc in docs:
                if doc.source == str(path):  # a corpus record keeps its own url
                    doc.source = sources.get(str(path), doc.source)
                if doc.doc_id in seen:
                    report.rejected.append((str(path), f"doc id '{doc.doc_id}' already comes from {seen[doc.doc_id]}"))
                    tracker.step(doc.doc_id)
                    continue
                seen[doc.doc_id] = str(path)
                was = stored.get(doc.doc_id)
                if was and format_of(path) != "jsonl" and _source_name(was) != _source_name(doc.source):
                    report.rejected.append((str(path), f"doc id '{doc.doc_id}' is already in the index from {was}, "
                                            f"another file; rename this one, or remove that document first "
                                            f"(`loracle ingest --remove {doc.doc_id} --index NAME`)"))
                    tracker.step(doc.doc_id)
                    continue
                if known.get(doc.doc_id) == (doc.metadata.get("sha256"), key):
                    report.skipped.append(doc.doc_id)
                    tracker.step(doc.doc_id)
                    continue
                twin = by_sha.setdefault(doc.metadata.get("sha256") or doc.doc_id, doc.doc_id)
                if twin != doc.doc_id:
                    report.duplicates.append((doc.doc_id, twin))
                jobs.put((doc, chunk(doc, config.chunk, tokenizer_path)))
    except BaseException as exc:  # surfaced by the consumer
        jobs.put(exc)
    finally:
        jobs.put(None)


def _safety_check(path: Path, config: IngestConfig) -> FileCheck:
    """ingest.safety screens untrusted files (size, type vs content, encoding, zip bombs, encrypted or
    corrupt PDFs...) before any parser sees them; limits: config.max_file_bytes, then LORACLE_* vars.
    Returns its `FileCheck`, whose opened PDF reader `load` reuses."""
    return screen_file(path, SafetyLimits.from_env(config))


def _consume(jobs: queue.Queue, w, embedder, batch_size: int, key: str, known: dict, report: IngestReport,
             tracker: _Tracker) -> None:
    """Main thread: embed chunks in batches and write each document once all its chunks have vectors."""
    import numpy as np

    pending: list[tuple[Document, list[Chunk]]] = []

    def flush() -> None:
        texts = [c.text for _, cs in pending for c in cs]
        vectors = embedder.encode(texts, batch_size=batch_size)
        at = 0
        for doc, cs in pending:
            w.put(doc, cs, vectors[at:at + len(cs)] if cs else np.zeros((0, embedder.dim), "float32"), chunker=key)
            at += len(cs)
            report.added.append(doc.doc_id)
            report.chunks_added += len(cs)
            if doc.doc_id in known:
                report.replaced.append(doc.doc_id)
            tracker.step(doc.doc_id)
        pending.clear()

    while True:
        item = jobs.get()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        pending.append(item)
        # Big flushes let sentence-transformers sort by length (less padding). Flushing at every
        # 64 chunks to overlap more measured slower here (0.60 vs 0.81-0.98 of raw encode): a
        # loader thread beside torch's two OpenMP threads on two busy cores stalls their barriers.
        if sum(len(cs) for _, cs in pending) >= batch_size * 4:
            flush()
    if pending:
        flush()


def ensure_index(name: str = DEFAULT_INDEX, progress: Progress | None = None) -> Path:
    """Build a shipped index (SHIPPED_INDEXES) from its corpus under data/ when it is missing or empty; a
    terminal progress bar unless `progress` is given. Returns its folder."""
    path = index_path(name)
    if _built(name):
        ix = Index.open(path)
        try:
            if len(ix):
                return path
        finally:
            ix.close()
    bar = None
    if progress is None:  # `make run` / `loracle ui` / `loracle eval`: show the one-off build on the terminal
        from tqdm import tqdm

        bar = tqdm(total=0, unit="doc", desc=f"building index '{name}' (once)")

        def progress(done: int, total: int, current: str) -> None:
            bar.total, bar.n = total, done
            bar.refresh()
    try:
        report = build_shipped_index(name, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if report.rejected:
        raise RuntimeError(f"building index '{name}' rejected {report.rejected[0][0]}: {report.rejected[0][1]}")
    return path


def ensure_default_index(progress: Progress | None = None) -> Path:
    """Build indexes/pubmedqa from the corpus shipped under data/pubmedqa when it is missing or empty."""
    return ensure_index(DEFAULT_INDEX, progress)
