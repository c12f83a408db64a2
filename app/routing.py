"""Per-question adapter routing: send a question to the adapter whose training questions it is closest to,
or to no adapter when it is far from all of them (out of scope).

Each adapter folder may carry a routing summary, written by `build_summary`:
  routing.safetensors   key "questions": its training questions' L2-normalised embeddings, float16 (n, dim)
  routing.json          {"format", "embedder", "dim", "count", "created", "source"}
An adapter's score for a question is the mean cosine similarity of the question to its 5 nearest training
questions. A question whose best score is below the threshold is out of scope: no adapter. Otherwise the
adapter is chosen among those at or above the threshold by a linear head (class-balanced softmax regression
over the summaries, fitted when the Router loads, well under a second): with two or more adapters the raw
top-5 score alone favours the adapter with the larger, denser question set (measured: 25 of 50 PubMedQA dev
questions went to a 3000-question MedQuAD summary; with the head, 50 of 50). With one adapter the head is
not needed and the rule is exactly "score >= threshold".

The default threshold was measured (benchmarks/routing.py): PubMedQA and MedQuAD dev questions against
summaries of their training questions, plus 30 general questions (tests/data/out_of_domain.jsonl). The best
score of every general question was <= 0.289, of every PubMedQA dev question >= 0.349: 0.32 sits in the gap.

    router = Router(Path("adapters"))
    router.route(["Do statins prevent dementia?", "How long do I boil an egg?"])
    # -> [Route("medical-pubmedqa", 0.62, {...}), Route(None, 0.21, {...})]
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

SUMMARY_WEIGHTS, SUMMARY_META = "routing.safetensors", "routing.json"
SUMMARY_KEY = "questions"
TOP_K = 5  # training questions averaged per adapter score
HEAD_STEPS, HEAD_LR, HEAD_L2 = 300, 5.0, 1e-4  # the adapter-choice head's fit (see _fit_head)
DEFAULT_THRESHOLD = 0.32  # measured: benchmarks/routing.py (README "Measured figures")
FORMAT = 1


@dataclass
class Route:
    adapter: str | None  # registry name, or None: no adapter is close enough (out of scope)
    score: float  # the best adapter's score (mean cosine of the top-5 nearest training questions)
    scores: dict[str, float] = field(default_factory=dict)  # adapter name -> score
    probs: dict[str, float] = field(default_factory=dict)  # adapter name -> the head's probability


def _embedder(embedder=None, name: str | None = None):
    """The given embedder, else the shipped one (ingest.embed.get_embedder: loaded once per process, offline)."""
    if embedder is not None:
        return embedder
    from ingest.embed import DEFAULT_EMBEDDER, get_embedder

    return get_embedder(name or DEFAULT_EMBEDDER)


def _atomic_write(folder: Path, fname: str, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # readable like the adapter's other files (mkstemp makes it 0600)
        os.replace(tmp, folder / fname)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_summary(adapter_dir: Path, questions: list[str], embedder=None, source: str = "") -> Path:
    """Embed an adapter's training questions and write routing.safetensors + routing.json into its folder
    (each to a temp file, then renamed); returns the routing.safetensors path. `source` (e.g. the data file,
    relative) is recorded. Example: `build_summary(Path("adapters/medical-pubmedqa"), questions)`."""
    import numpy as np

    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {folder} does not exist")
    texts = [q.strip() for q in questions if isinstance(q, str) and q.strip()]
    if not texts:
        raise ValueError("a routing summary needs at least one training question; none given")
    emb = _embedder(embedder)
    vecs = np.asarray(emb.encode(texts), dtype="float32")
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return _write_summary(folder, vecs, emb.name, source)


def _write_summary(folder: Path, rows, embedder_name: str, source: str) -> Path:
    """routing.safetensors (float16 rows) + routing.json, each to a temp file, then renamed."""
    import numpy as np
    from safetensors.numpy import save_file

    rows = np.ascontiguousarray(rows.astype("float16"))
    _atomic_write(folder, SUMMARY_WEIGHTS,
                  lambda tmp: save_file({SUMMARY_KEY: rows}, tmp, metadata={"embedder": embedder_name}))
    meta = {"format": FORMAT, "embedder": embedder_name, "dim": int(rows.shape[1]), "count": int(rows.shape[0]),
            "top_k": TOP_K, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": source}
    _atomic_write(folder, SUMMARY_META, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return folder / SUMMARY_WEIGHTS


def merge_summaries(sources: list[Path], adapter_dir: Path, source: str = "") -> Path | None:
    """The routing summary of a merged adapter: the union of its sources' training questions (rows seen in
    several sources kept once). None when no source has a summary; a ValueError when their embedders differ."""
    import numpy as np

    found = [load_summary(p) for p in sources if (Path(p) / SUMMARY_WEIGHTS).is_file()]
    if not found:
        return None
    embedders = {meta.get("embedder") for meta, _ in found}
    if len(embedders) > 1:
        raise ValueError(f"the sources' routing summaries use different embedders ({', '.join(map(str, embedders))});"
                         " rebuild them with `loracle adapters route-summary NAME --data QA.jsonl`")
    rows = np.unique(np.concatenate([m.astype("float16") for _, m in found]), axis=0)
    return _write_summary(Path(adapter_dir), rows, embedders.pop(), source)


def load_summary(adapter_dir: Path):
    """(meta dict, float32 (n, dim) matrix) of an adapter folder's summary; FileNotFoundError when it has none."""
    from safetensors.numpy import load_file

    folder = Path(adapter_dir)
    if not (folder / SUMMARY_WEIGHTS).is_file() or not (folder / SUMMARY_META).is_file():
        raise FileNotFoundError(f"adapter {folder} has no routing summary; build one with "
                                f"`loracle adapters route-summary {folder.name} --data QA.jsonl`")
    meta = json.loads((folder / SUMMARY_META).read_text())
    matrix = load_file(str(folder / SUMMARY_WEIGHTS))[SUMMARY_KEY].astype("float32")
    return meta, matrix


def top_k_scores(query_vecs, matrix, k: int = TOP_K):
    """Mean cosine similarity of each query (rows, normalised) to its k nearest rows of `matrix`."""
    import numpy as np

    sims = query_vecs @ matrix.T
    k = min(k, sims.shape[1])
    top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1)


def _fit_head(summaries: dict):
    """Class-balanced softmax regression from embedding to adapter, fitted on the summaries (deterministic
    full-batch gradient descent; rows are unit vectors, so a fixed step is stable). None for fewer than 2."""
    import numpy as np

    names = list(summaries)
    if len(names) < 2:
        return None
    x = np.concatenate([summaries[n] for n in names]).astype("float32")
    y = np.concatenate([np.full(len(summaries[n]), i) for i, n in enumerate(names)])
    weight = np.array([1.0 / len(summaries[n]) for n in names], dtype="float32")[y] / len(names)
    onehot = np.eye(len(names), dtype="float32")[y]
    w, b = np.zeros((x.shape[1], len(names)), dtype="float32"), np.zeros(len(names), dtype="float32")
    for _ in range(HEAD_STEPS):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) * weight[:, None]
        w -= HEAD_LR * (x.T @ g + HEAD_L2 * w)
        b -= HEAD_LR * g.sum(axis=0)
    return w, b


class Router:
    """Routes questions among the current versions of the registry's adapters that carry a summary and are
    not disabled. `skipped` says why the others were left out. With `watch` (the default) every call first
    compares a fingerprint of the registry folder (a directory scan and a few stats, ~0.1 ms): an adapter
    installed, rolled back, removed, disabled or enabled, or a summary rebuilt, reloads the summaries before
    routing, so a disabled adapter is never routed to. `reload()` does it by hand."""

    def __init__(self, root: Path | None = None, threshold: float | None = None, embedder=None, watch: bool = True):
        self.root = root
        self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        self._embedder = embedder
        self.labels: dict[str, str] = {}  # adapter name -> "name@vN" of the version the summary belongs to
        self.skipped: dict[str, str] = {}  # adapter name -> why it is not routed to
        self._state: tuple = ({}, None, None, [])  # (summaries, head, stacked rows, row bounds): one swap in reload()
        self.watch = watch
        self._lock = threading.Lock()
        self._seen = None
        self.reload()

    def _fingerprint(self):
        """(name, inode, mtime) of every adapter folder and its summary: installs and rollbacks swap the folder
        (new inode), status and card writes rename into it (new mtime). None when the root is unreadable."""
        from app import registry

        root = registry.root_dir(self.root)
        out = []
        try:
            with os.scandir(root) as entries:
                for e in entries:
                    if e.name.startswith((".", "_")) or not e.is_dir():
                        continue
                    st = e.stat()
                    try:
                        summary = os.stat(os.path.join(e.path, SUMMARY_WEIGHTS)).st_mtime_ns
                    except OSError:
                        summary = None
                    out.append((e.name, st.st_ino, st.st_mtime_ns, summary))
        except OSError:
            return None
        return tuple(sorted(out))

    def _refresh(self) -> None:
        if self.watch and self._fingerprint() != self._seen:
            with self._lock:
                if self._fingerprint() != self._seen:  # another thread may have reloaded meanwhile
                    self.reload()

    def reload(self) -> None:
        from app import registry

        seen = self._fingerprint()

        summaries, labels, skipped, embedder_name = {}, {}, {}, None
        for info in registry.list_adapters(self.root):
            if registry.is_disabled(info.name, self.root):
                skipped[info.name] = "disabled"
                continue
            try:
                meta, matrix = load_summary(info.path)
            except FileNotFoundError:
                skipped[info.name] = "no routing summary"
                continue
            except (OSError, ValueError, KeyError) as exc:
                skipped[info.name] = f"unreadable routing summary ({exc})"
                continue
            wanted = self._embedder.name if self._embedder is not None else (embedder_name or meta.get("embedder"))
            if meta.get("embedder") != wanted:
                skipped[info.name] = f"summary made with embedder {meta.get('embedder')}, the router uses {wanted}"
                continue
            embedder_name = wanted
            summaries[info.name], labels[info.name] = matrix, info.label
        self._embedder_name = embedder_name
        import numpy as np

        bounds, start = [], 0
        for matrix in summaries.values():
            bounds.append((start, start + len(matrix)))
            start += len(matrix)
        stacked = np.concatenate(list(summaries.values())) if summaries else np.zeros((0, 1), dtype="float32")
        self._state = (summaries, _fit_head(summaries), stacked, bounds)
        self.labels, self.skipped = labels, skipped
        self._seen = seen

    @property
    def summaries(self) -> dict:
        """adapter name -> float32 (n, dim) matrix of its training questions' embeddings."""
        return self._state[0]

    @property
    def adapters(self) -> list[str]:
        return list(self._state[0])


    def embed(self, questions: list[str]):
        """The questions' normalised embeddings with the summaries' embedder (reuse them with route_vectors)."""
        import numpy as np

        emb = _embedder(self._embedder, self._embedder_name)
        q = np.asarray(emb.encode_queries(list(questions)), dtype="float32")
        return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)

    def scores(self, questions: list[str]):
        """(questions x adapters) float32 matrix of top-5 scores, and the adapter names of its columns."""
        import numpy as np

        self._refresh()
        summaries = self.summaries
        names = list(summaries)
        if not questions or not names:
            return np.zeros((len(questions), len(names)), dtype="float32"), names
        q = self.embed(questions)
        return np.stack([top_k_scores(q, summaries[n]) for n in names], axis=1), names

    def route(self, questions: list[str]) -> list[Route]:
        """One Route per question: None when no adapter scores >= threshold, else the head's choice among those
        that do (the only one, with a single adapter)."""
        self._refresh()
        if not questions or not self.adapters:
            return [Route(None, 0.0, {}) for _ in questions]
        return self.route_vectors(self.embed(questions))

    def route_vectors(self, vectors) -> list[Route]:
        """route() for questions already embedded (normalised rows) with the same embedder, e.g. the retrieval
        query vectors: routing then costs a few matrix products, no second embedding."""
        import numpy as np

        self._refresh()
        summaries, head, stacked, bounds = self._state
        names = list(summaries)
        q = np.asarray(vectors, dtype="float32").reshape(len(vectors), -1)
        if not names:
            return [Route(None, 0.0, {}) for _ in range(len(q))]
        sims = q @ stacked.T  # one product against every adapter's questions
        k = [min(TOP_K, end - start) for start, end in bounds]
        matrix = np.stack([np.partition(sims[:, start:end], end - start - kk, axis=1)[:, -kk:].mean(axis=1)
                           for (start, end), kk in zip(bounds, k)], axis=1)
        if head is not None:
            z = q @ head[0] + head[1]
            z -= z.max(axis=1, keepdims=True)
            probs = np.exp(z)
            probs /= probs.sum(axis=1, keepdims=True)
        else:
            probs = np.ones_like(matrix)
        routes = []
        for row, prow in zip(matrix, probs):
            scores = {n: round(float(v), 4) for n, v in zip(names, row)}
            chosen = {n: round(float(v), 4) for n, v in zip(names, prow)}
            eligible = [i for i, v in enumerate(row) if v >= self.threshold]
            if not eligible:
                routes.append(Route(None, float(row.max()), scores, chosen))
                continue
            best = max(eligible, key=lambda i: (prow[i], row[i]))
            routes.append(Route(names[best], float(row[best]), scores, chosen))
        return routes
