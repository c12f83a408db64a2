"""Query -> ranked passages. Dense (FAISS inner product over normalised embeddings) by default;
optional hybrid dense + BM25 (bm25s) fused by reciprocal rank fusion; optional cross-encoder rerank
when a reranker model folder is given (none ships with loracle).

The BM25 side is rebuilt from the chunk store when an index is first searched in hybrid mode
(~0.3 s for the 1000-abstract corpus), so nothing but the store needs persisting.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Hashable

from app.config import DEFAULT_INDEX, DEFAULT_K
from app.types import Passage
from ingest.index import Index, index_path

RRF_K = 60  # the constant of Cormack et al. (2009)
AGGREGATIONS = ("max", "sum", "rrf")


class Retriever:
    def __init__(self, index: str | Path = DEFAULT_INDEX, hybrid: bool = False, reranker: str | None = None,
                 embedder: str | None = None, candidates: int = 50):
        """`candidates`: how many hits each ranker contributes before fusion / reranking."""
        self.name = str(index)
        self.hybrid = hybrid
        self.reranker_path = reranker
        self.candidates = candidates
        self._embedder_name = embedder
        self._lock = threading.RLock()
        self._open()
        self._reranker = _load_reranker(reranker) if reranker else None

    def _open(self) -> None:
        from ingest.embed import get_embedder

        self.index = Index.open(self.name, embedder=self._embedder_name)
        self.stamp = self.index.stamp()
        self.embedder = get_embedder(self.index.embedder)
        self._bm25 = None

    def refresh(self) -> bool:
        """Reopen if any process changed the index on disk since it was opened; True if it did."""
        with self._lock:
            if not (self.index.path / "manifest.json").is_file():
                raise FileNotFoundError(f"index '{self.name}' was removed from {self.index.path}; "
                                        f"rebuild it with `loracle ingest PATH --index {self.index.name}`")
            if self.index.stamp() == self.stamp:
                return False
            old = self.index
            self._open()
            old.close()
            return True

    def search(self, query: str, k: int = DEFAULT_K) -> list[Passage]:
        return self.search_many([query], k)[0]

    def search_many(self, queries: list[str], k: int = DEFAULT_K) -> list[list[Passage]]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if any(not isinstance(q, str) or not q.strip() for q in queries):
            raise ValueError("every query must be a non-empty string")
        if not queries:
            return []
        with self._lock:
            wide = max(k, self.candidates) if (self.hybrid or self._reranker) else k
            scores, ids = self.index.search(self.embedder.encode_queries(list(queries)), wide)
            ranked = [[(int(i), float(s)) for i, s in zip(row_i, row_s) if i >= 0] for row_i, row_s in zip(ids, scores)]
            if self.hybrid:
                ranked = [_rrf([dense, sparse]) for dense, sparse in zip(ranked, self.bm25_search(queries, wide))]
            out = []
            for query, hits in zip(queries, ranked):
                hits = hits[:wide]
                chunks = self.index.get_chunks([i for i, _ in hits])
                pairs = [(c, s) for c, (_, s) in zip(chunks, hits) if c is not None]
                if self._reranker is not None and pairs:
                    rr = self._reranker.predict([(query, c.text) for c, _ in pairs], show_progress_bar=False)
                    pairs = sorted(((c, float(s)) for (c, _), s in zip(pairs, rr)), key=lambda p: -p[1])
                out.append([Passage(chunk=c, score=s, rank=r) for r, (c, s) in enumerate(pairs[:k], 1)])
            return out

    def bm25_search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """BM25 over the index's chunks: per query, up to k (chunk row id, score), best first."""
        import bm25s

        if self._bm25 is None:
            ids, texts = [], []
            for i, c in self.index.iter_chunks():
                ids.append(i)
                texts.append(c.text)
            model = bm25s.BM25()
            if texts:
                model.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
            self._bm25 = (model, ids)
        model, ids = self._bm25
        if not ids:
            return [[] for _ in queries]
        vocab = model.vocab_dict
        out = []
        for q in queries:
            tokens = [t for t in bm25s.tokenize([q], stopwords="en", return_ids=False, show_progress=False)[0] if t in vocab]
            if not tokens:  # only stop words or words the corpus never uses: BM25 has nothing to say
                out.append([])
                continue
            docs, scores = model.retrieve([tokens], k=min(k, len(ids)), show_progress=False)
            out.append([(ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0]) if s > 0])
        return out


def _rrf(rankings: list[list[tuple[Hashable, float]]]) -> list[tuple[Hashable, float]]:
    """Reciprocal rank fusion of rankings of (key, score), best first: sum of 1/(RRF_K + rank)."""
    fused: dict = {}
    for ranking in rankings:
        for rank, (i, _) in enumerate(ranking, 1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda p: -p[1])


def aggregate(hits: list[tuple[str, float]], how: str = "max") -> list[tuple[str, float]]:
    """Chunk hits (doc_id, score), best first -> documents, best first. `how`: "max" (a document's
    best chunk), "sum" (the sum of its chunks' scores) or "rrf" (the sum of 1/(RRF_K + chunk rank))."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation '{how}' is not one of {AGGREGATIONS}")
    docs: dict[str, float] = {}
    for rank, (doc_id, score) in enumerate(hits, 1):
        if how == "max":
            docs.setdefault(doc_id, score)
        else:
            docs[doc_id] = docs.get(doc_id, 0.0) + (score if how == "sum" else 1.0 / (RRF_K + rank))
    if how == "max":  # the order the documents' best chunks come in (hits are ranked already)
        return list(docs.items())
    return sorted(docs.items(), key=lambda p: -p[1])  # stable: ties keep the order of their best chunk


def _load_reranker(path: str):
    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"reranker '{path}' is not a folder; pass a local sentence-transformers "
                                "CrossEncoder folder, or leave the reranker unset")
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(Path(path).expanduser()), device="cpu")


_CACHE: dict[tuple, Retriever] = {}
_CACHE_LOCK = threading.Lock()


def get_retriever(index: str | Path = DEFAULT_INDEX, hybrid: bool = False, reranker: str | None = None) -> Retriever:
    """One Retriever per (index, hybrid, reranker) per process; reopened when the index changed on disk."""
    key = (str(index_path(index).resolve()), hybrid, reranker)
    with _CACHE_LOCK:
        r = _CACHE.get(key)
        if r is None:
            r = _CACHE[key] = Retriever(index, hybrid=hybrid, reranker=reranker)
            return r
    try:
        r.refresh()
    except FileNotFoundError:
        with _CACHE_LOCK:
            _CACHE.pop(key, None)
        raise
    return r


def rank_documents(passages: list[Passage], how: str = "max") -> list[tuple[str, float]]:
    """Documents ranked from their passages (see `aggregate`); "max": in the order their best passage ranks."""
    return aggregate([(p.doc_id, p.score) for p in passages], how)


def recall_at(ranked_doc_ids: list[list[str]], gold: list[str], ks=(1, 5, 10)) -> dict[int, float]:
    """Share of questions whose gold document is among the first k ranked documents."""
    n = max(1, len(gold))
    return {k: sum(g in ids[:k] for ids, g in zip(ranked_doc_ids, gold)) / n for k in ks}
