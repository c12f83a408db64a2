"""One base model, adapters on/off and retrieval on/off per request: answer, batch, compare, stream.

The base model is loaded once. Registry adapters are loaded side by side into one PeftModel, each
under its registry name; a request picks one (or none) and nothing is ever reloaded. A batch of
requests in different modes runs as ONE generate() call with PEFT mixed-adapter rows
(`adapter_names=[..., "__base__"]`) and left padding; when prompt lengths differ a lot, each row is
prefilled alone and the caches are stitched for the joint decode (app.backends.LocalBackend). Generation is serialised by a lock, and the
adapter choice is made inside it, so threads sharing an engine never see each other's choice.
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from app import prompts, registry
from app.config import EngineConfig
from app.types import MODES, Answer, Passage, mode_of
from ingest.safety import clean_question


@dataclass
class Request:
    question: str
    adapter: str | None = None  # registry name or adapter folder; None -> base model
    retrieval: bool = False
    k: int | None = None
    index: str | None = None
    max_new_tokens: int | None = None


@dataclass
class _Loaded:
    name: str  # PEFT adapter name (= registry name)
    label: str  # "name@vN"
    path: Path
    version: int


@dataclass
class _Prepared:
    request: Request
    adapter: _Loaded | None
    passages: list[Passage] = field(default_factory=list)
    messages: list = field(default_factory=list)
    retrieval_s: float = 0.0
    max_new_tokens: int = 0


class Engine:
    def __init__(self, config: EngineConfig | None = None):
        from app.backends import make_backend

        self.config = config or EngineConfig()
        self.backend = make_backend(self.config)
        self.info = self.backend.info
        self._lock = threading.RLock()
        self._adapters: dict[str, _Loaded] = {}
        self.warnings: list[str] = []
        wanted = self.config.adapters
        if wanted is None:
            try:
                self.load_adapter(self.config.default_adapter)
            except (FileNotFoundError, ValueError) as exc:
                self.warnings.append(f"default adapter not loaded: {exc}")
        else:
            for name in wanted:
                self.load_adapter(name)

    @property
    def tokenizer(self):
        return self.backend.tokenizer

    @property
    def base_model(self):
        return self.backend.base_model

    @property
    def model(self):
        """The PeftModel holding every loaded adapter (the plain base model before the first one)."""
        return self.backend.model

    # --- adapters -------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.config.adapters_root()

    def _resolve(self, name_or_path: str) -> tuple[str, registry.AdapterInfo]:
        """(PEFT adapter name, info) for "name", "name@vN" or an adapter folder. The current registry
        version is loaded under its plain name; other versions and outside folders get their own name."""
        path = Path(name_or_path).expanduser()
        if ("/" in name_or_path or name_or_path.startswith(".")) and path.is_dir():
            info = registry.read_folder(path)
        elif "@" in name_or_path:
            name, _, ver = name_or_path.partition("@")
            if not ver.lstrip("v").isdigit():
                raise ValueError(f"adapter '{name_or_path}': write a version as NAME@vN, e.g. {name}@v1")
            info = registry.get(name, self.root, version=int(ver.lstrip("v")))
        else:
            info = registry.get(name_or_path, self.root)
        info.name = registry.check_name(re.sub(r"[^A-Za-z0-9_-]", "-", info.name)[:64])
        if info.path.resolve() == (self.root / info.name).resolve():
            return info.name, info
        digest = hashlib.sha1(str(info.path.resolve()).encode()).hexdigest()[:8]
        return f"{info.name}__v{info.version}_{digest}", info

    def load_adapter(self, name_or_path: str) -> str:
        """Load an adapter (registry name, "name@vN" or folder) next to the others; returns its PEFT name,
        which requests may use. An adapter already loaded at its current version is not loaded again."""
        key, info = self._resolve(name_or_path)
        registry.check_compatible(info, self.info.name)
        if getattr(self.backend, "base_model", None) is not None:  # local weights: check shapes before PEFT
            registry.check_shapes(info, self.backend.base_model, self.info.name)
        with self._lock:
            have = self._adapters.get(key)
            if have and have.version == info.version and have.path == info.path:
                return key
            self.backend.load_adapter(key, info.path, replace=have is not None)
            self._adapters[key] = _Loaded(key, info.label, info.path, info.version)
        return key

    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    def adapter_label(self, name: str) -> str:
        return self._adapters[name].label

    def _adapter_for(self, name: str | None) -> _Loaded | None:
        if not name:
            return None
        if "__v" in name and name in self._adapters:  # a key load_adapter returned for a version/folder
            return self._adapters[name]
        return self._adapters[self.load_adapter(name)]  # cheap when loaded at the current version

    # --- prompts and retrieval ------------------------------------------------------------------
    def _retrieve(self, preps: list[_Prepared]) -> None:
        groups: dict[tuple[str, int], list[_Prepared]] = {}
        for p in preps:
            if p.request.retrieval:
                key = (p.request.index or self.config.index, p.request.k or self.config.k)
                groups.setdefault(key, []).append(p)
        for (index, k), items in groups.items():
            from app.retrieve import get_retriever

            questions = list(dict.fromkeys(p.request.question for p in items))
            t0 = time.perf_counter()
            results = get_retriever(index, hybrid=self.config.hybrid).search_many(questions, k)
            took = (time.perf_counter() - t0) / len(items)
            by_q = dict(zip(questions, results))
            for p in items:
                p.passages, p.retrieval_s = list(by_q[p.request.question]), took

    def _prepare(self, requests: list[Request]) -> list[_Prepared]:
        preps = []
        for r in requests:
            r = replace(r, question=clean_question(r.question))  # length limit, control characters
            preps.append(_Prepared(r, self._adapter_for(r.adapter),
                                   max_new_tokens=r.max_new_tokens or self.config.max_new_tokens))
        self._retrieve(preps)
        for p in preps:
            p.messages = prompts.build_messages(p.request.question, p.passages or None, self.config.template)
        return preps

    # --- generation -----------------------------------------------------------------------------
    def _generate(self, preps: list[_Prepared], streamer=None):
        from app.backends import GenItem

        items = [GenItem(p.messages, p.adapter.name if p.adapter else None, p.max_new_tokens) for p in preps]
        with self._lock:  # the adapter choice is made inside the backend call, under the lock
            return self.backend.generate(items, streamer=streamer)

    def _answer(self, p: _Prepared, gen, seconds: float, batch: int) -> Answer:
        timings = {"retrieval_s": round(p.retrieval_s, 4), "prompt_tokens": gen.prompt_tokens,
                   "generation_s": round(seconds, 4), "new_tokens": gen.new_tokens,
                   "tokens_per_s": round(gen.new_tokens / seconds, 2) if seconds > 0 else 0.0, "batch_size": batch}
        return Answer(text=gen.text, mode=mode_of(p.adapter.name if p.adapter else None, bool(p.passages)),
                      adapter=p.adapter.label if p.adapter else None, passages=p.passages,
                      citations=prompts.parse_citations(gen.text, p.passages), timings=timings,
                      question=p.request.question)

    # --- public API -----------------------------------------------------------------------------
    def answer(self, question: str, adapter: str | None = None, retrieval: bool = False, k: int | None = None,
               index: str | None = None, max_new_tokens: int | None = None) -> Answer:
        return self.answer_batch([Request(question, adapter, retrieval, k, index, max_new_tokens)])[0]

    def answer_batch(self, requests: list[Request]) -> list[Answer]:
        """All requests in one mixed-adapter generate() call; answers in request order."""
        if not requests:
            return []
        preps = self._prepare(list(requests))
        rows, seconds = self._generate(preps)
        return [self._answer(p, gen, seconds, len(preps)) for p, gen in zip(preps, rows)]

    def compare(self, question: str, adapter: str | None = None, index: str | None = None,
                k: int | None = None, max_new_tokens: int | None = None) -> dict[str, Answer]:
        """The question in all four modes, batched: {"base", "lora", "rag", "lora+rag"} -> Answer."""
        adapter = adapter or self.config.default_adapter
        reqs = [Request(question, adapter if "lora" in m else None, "rag" in m, k, index, max_new_tokens)
                for m in MODES]
        return dict(zip(MODES, self.answer_batch(reqs)))

    def stream(self, question: str, adapter: str | None = None, retrieval: bool = False, k: int | None = None,
               index: str | None = None, max_new_tokens: int | None = None) -> Iterator[str | Answer]:
        """Yield text deltas as they are generated; the last item is the final Answer."""
        prep = self._prepare([Request(question, adapter, retrieval, k, index, max_new_tokens)])[0]
        streamer = self.backend.make_streamer()
        if streamer is None:  # backend without token streaming: one delta with the whole text
            rows, seconds = self._generate([prep])
            if rows[0].text:
                yield rows[0].text
            yield self._answer(prep, rows[0], seconds, 1)
            return
        result: dict = {}

        def run():
            try:
                result["out"] = self._generate([prep], streamer=streamer)
            except BaseException as exc:  # surfaced to the consumer below
                result["error"] = exc
                streamer.end()

        worker = threading.Thread(target=run, name="loracle-generate", daemon=True)
        worker.start()
        started = False
        for delta in streamer:
            if not started:  # the final text is stripped; keep the streamed text identical to it
                delta = delta.lstrip()
                started = bool(delta)
            if delta:
                yield delta
        worker.join()
        if "error" in result:
            raise result["error"]
        rows, seconds = result["out"]
        yield self._answer(prep, rows[0], seconds, 1)
