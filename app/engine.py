"""One base model, adapters on/off and retrieval on/off per request: answer, batch, compare, stream.

The base model is loaded once. Registry adapters are loaded side by side into one PeftModel, each
under its registry name; a request picks one (or none) and nothing is ever reloaded. A batch of
requests in different modes is decoded together with PEFT mixed-adapter rows (`adapter_names`).

With the local backend every caller's requests go through one continuous-batching scheduler
(app.scheduler): a request joins the running batch at the next step and leaves when done. Without it
(`EngineConfig.scheduler=False`, or a remote backend) each call is one generate() under a lock. The
adapter choice is made per row inside the model call, so threads never see each other's choice.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

from app import calibration, prompts, registry
from app.config import EngineConfig
from app.decision import calls_for_decision, decide
from app.types import MODES, AdapterRef, Answer, Passage, mode_of
from ingest.safety import clean_question

AUTO = "auto"  # Request.adapter: route each question to the closest adapter (app.routing), or to none
_log = logging.getLogger("loracle.engine")


class AdapterLoadError(RuntimeError):
    """A registered adapter whose weights cannot be loaded; requests for it fall back to the base model."""


class AdapterUnavailable(RuntimeError):
    """An adapter that is disabled or fails to load, where falling back to the base model would mislead
    (log-likelihood scoring: the numbers would silently be the base model's)."""


@dataclass
class Request:
    """One question and how to answer it; None means "the adapter's card, else the engine's config"."""

    question: str
    adapter: str | AdapterRef | None = None  # registry name, "name@vN", folder, or a resolved AdapterRef
    retrieval: bool = False
    k: int | None = None
    index: str | None = None
    max_new_tokens: int | None = None
    decide: bool | None = None  # yes/no/maybe decision: None detects it from the question's form
    scored: bool | None = None  # score the options (True) or generate freely and parse (False); None: config
    calibrate: bool | None = None  # apply stored calibration offsets; None: config
    passage_chars: int | None = None
    examples: list[tuple[str, str]] | None = None  # few-shot (question, answer) turns put before the question
    passages: list[Passage] | None = None  # the caller's passages instead of retrieval (implies a rag mode)
    origin: str | None = None  # "ui", "cli", "api" or "eval": the entry point the audit log records


@dataclass
class _Loaded:
    ref: AdapterRef
    settings: dict  # the card's answer_settings (k, passage_chars, template, index)
    calibration: dict  # mode -> offsets, plus "fitted_on"


@dataclass
class _Prepared:
    request: Request
    adapter: _Loaded | None
    passages: list[Passage] = field(default_factory=list)
    messages: list = field(default_factory=list)
    retrieval_s: float = 0.0
    max_new_tokens: int = 0
    settings: dict = field(default_factory=dict)
    decide: bool = False
    offsets: dict | None = None  # None: free generation; {} scored without offsets
    calibration: str | None = None
    route: object = None  # app.routing.Route when the request asked for adapter="auto"
    notes: list[str] = field(default_factory=list)


class Engine:
    """One base model; adapters and retrieval switch per request, nothing is reloaded.

        engine = Engine(EngineConfig.from_env())
        ans = engine.answer("Do statins reduce stroke risk?", adapter="medical-pubmedqa", retrieval=True)
        ans.decision.label, ans.decision.probs, ans.text, [c.number for c in ans.citations]
    """

    def __init__(self, config: EngineConfig | None = None):
        from app.backends import make_backend

        self.config = config or EngineConfig.from_env()
        self.backend = make_backend(self.config)
        self.info = self.backend.info
        self._lock = threading.RLock()
        self.scheduler = None
        if self.config.scheduler and self.backend.kind == "local":
            from app.scheduler import Scheduler

            self.scheduler = Scheduler(self.backend, self._lock, self.config.max_batch, self.config.queue_limit)
        self._adapters: dict[str, _Loaded] = {}
        self.warnings: list[str] = []
        from app.audit import AuditLog

        self.audit = AuditLog(retention=self.config.audit_retention, hash_questions=self.config.audit_hash_questions,
                              enabled=self.config.audit)
        self.audit.check()
        self._router = None
        self.base_calibration = calibration.load_base(self.root, self.info.name)
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

    def resolve(self, name_or_path: str) -> tuple[AdapterRef, registry.AdapterInfo]:
        """"name", "name@vN" or an adapter folder -> (AdapterRef, registry info). The registry's current
        version is known to the backend by its plain name; other versions and outside folders get their own."""
        info = registry.find(name_or_path, self.root)
        name = registry.check_name(re.sub(r"[^A-Za-z0-9_-]", "-", info.name)[:64])
        if info.path.resolve() == (self.root / name).resolve():
            return AdapterRef(name, info.version, info.path, name), info
        digest = hashlib.sha1(str(info.path.resolve()).encode()).hexdigest()[:8]
        return AdapterRef(name, info.version, info.path, f"{name}__v{info.version}_{digest}"), info

    def load_adapter(self, name_or_path: str | AdapterRef) -> AdapterRef:
        """Load an adapter (registry name, "name@vN", folder or AdapterRef) next to the others; returns its
        AdapterRef, which requests may use. One already loaded at the same version is not loaded again.

            ref = engine.load_adapter("medical-pubmedqa@v2")
            engine.answer("Is X safe?", adapter=ref)
        """
        if isinstance(name_or_path, AdapterRef):  # pinned: the same version, even after the registry moved on
            have = self._adapters.get(name_or_path.key)
            if have and have.ref == name_or_path:
                return name_or_path
            inside = name_or_path.path.resolve().is_relative_to(self.root.resolve())
            name_or_path = f"{name_or_path.name}@v{name_or_path.version}" if inside else str(name_or_path.path)
        ref, info = self.resolve(name_or_path)
        with self._lock:
            have = self._adapters.get(ref.key)
            if have and have.ref == ref:
                return ref
            registry.check_compatible(info, self.info.name)
            if getattr(self.backend, "base_model", None) is not None:  # local weights: check shapes before PEFT
                registry.check_shapes(info, self.backend.base_model, self.info.name)
            try:
                self.backend.load_adapter(ref.key, info.path, replace=have is not None)
            except ValueError:  # a setup error that names its fix (e.g. not served by the remote server)
                raise
            except Exception as exc:  # noqa: BLE001 - unreadable weights: a failing adapter, named
                raise AdapterLoadError(f"adapter {ref.label} could not be loaded from {info.path}: {exc}") from exc
            self._adapters[ref.key] = _Loaded(ref, dict(info.card.answer_settings or {}),
                                              dict(info.card.calibration or {}))
        return ref

    def build_card_index(self, adapter: str | AdapterRef | None) -> None:
        """Build the shipped index an adapter's card names when it is not built yet. `loracle ask | compare |
        eval | calibrate` call this before answering with retrieval; the UI and `serve` build shipped indexes
        in the background instead, and answer without passages (saying so) until they are ready."""
        from ingest.pipeline import SHIPPED_INDEXES, ensure_index

        loaded, _ = self._adapter_for(None if adapter == AUTO else adapter)  # its card, as answers read it
        name = loaded.settings.get("index") if loaded else None
        if name in SHIPPED_INDEXES:
            ensure_index(name)

    def loaded_adapters(self) -> list[str]:
        """Backend names of the loaded adapters (the registry name for a current version)."""
        return list(self._adapters)

    def adapter_ref(self, key: str) -> AdapterRef:
        return self._adapters[key].ref

    def _adapter_for(self, adapter: str | AdapterRef | None) -> tuple[_Loaded | None, str | None]:
        """The loaded adapter, or (None, why) when an operator disabled it or its weights fail to load: the
        request then falls back to the base model and the answer says so."""
        loaded, why = self._adapter_or_why(adapter)
        return loaded, (f"{why}: answered by the base model" if why else None)

    def _adapter_or_why(self, adapter: str | AdapterRef | None) -> tuple[_Loaded | None, str | None]:
        if not adapter:
            return None, None
        name = adapter.name if isinstance(adapter, AdapterRef) else str(adapter).partition("@")[0]
        if "/" not in name and registry.is_disabled(name, self.root):
            return None, f"adapter {name} is disabled"
        try:
            return self._adapters[self.load_adapter(adapter).key], None  # cheap when loaded at the current version
        except AdapterLoadError as exc:
            return None, str(exc)

    def serving_key(self, adapter: str | AdapterRef | None) -> str | None:
        """The backend key of `adapter` as a request would get it now: its current version (reloaded after a
        rollback), None for the base model. A disabled or unloadable adapter raises AdapterUnavailable and a
        removed one FileNotFoundError: for callers that must not fall back to the base model unannounced."""
        loaded, why = self._adapter_or_why(adapter)
        if why:
            raise AdapterUnavailable(f"{why}; name the base model to score with it instead")
        return loaded.ref.key if loaded else None

    def router(self):
        """The adapter router for adapter="auto" (app.routing.Router over the registry), built on first use;
        `reload_router()` after installing adapters or routing summaries."""
        if self._router is None:
            from app.routing import Router

            self._router = Router(self.root, self.config.route_threshold)
        return self._router

    def reload_router(self) -> None:
        self._router = None

    def _routes(self, requests: list[Request]) -> dict[int, object]:
        auto = [i for i, r in enumerate(requests) if r.adapter == AUTO]
        if not auto:
            return {}
        return dict(zip(auto, self.router().route([requests[i].question for i in auto])))

    # --- settings, prompts and retrieval --------------------------------------------------------
    def _settings(self, r: Request, adapter: _Loaded | None) -> dict:
        """k, passage_chars, template, index: the request's, else the adapter card's, else the config's."""
        card = adapter.settings if adapter else {}
        out, source = {}, {}
        for key in ("k", "passage_chars", "template", "index"):
            asked = getattr(r, key, None)
            if asked is not None:
                out[key], source[key] = asked, "request"
            elif card.get(key) is not None:
                out[key], source[key] = card[key], f"adapter {adapter.ref.label}"
            else:
                out[key], source[key] = getattr(self.config, key), "engine config"
        return {**out, "source": source}

    def _decision_plan(self, p: _Prepared) -> None:
        r, cfg = p.request, self.config
        p.decide = calls_for_decision(r.question) if r.decide is None else bool(r.decide)
        scored = cfg.decisions if r.scored is None else r.scored
        if not (p.decide and scored and self.backend.kind == "local"):
            p.offsets = None
            return
        use = cfg.calibrate if r.calibrate is None else r.calibrate
        # after retrieval: a question whose index is not built yet is answered, and calibrated, without passages
        mode = "fewshot" if r.examples and not p.adapter and not p.passages else \
            mode_of(p.adapter.ref.key if p.adapter else None, bool(p.passages))
        table = (p.adapter.calibration if p.adapter else self.base_calibration) if use else {}
        p.offsets = dict(table.get(mode) or {})
        if p.offsets:
            owner = p.adapter.ref.label if p.adapter else f"base model {self.info.name}"
            p.calibration = f"{owner} {mode}, fitted on {calibration.fitted_on(table, mode).get('data', '?')}"

    def _retrieve(self, preps: list[_Prepared]) -> None:
        groups: dict[tuple[str, int], list[_Prepared]] = {}
        for p in preps:
            if p.request.retrieval and p.request.passages is None:
                groups.setdefault((p.settings["index"], p.settings["k"]), []).append(p)
        for (index, k), items in groups.items():
            from app.retrieve import get_retriever

            questions = list(dict.fromkeys(p.request.question for p in items))
            t0 = time.perf_counter()
            try:
                retriever = get_retriever(index, hybrid=self.config.hybrid)
            except FileNotFoundError:
                if not all(_index_from_card(p) for p in items):
                    raise  # an index the user or the config named: the error says how to build it
                for p in items:  # the adapter card's index, not built yet (e.g. the background build of medquad)
                    p.notes.append(f"index '{index}' (named by adapter {p.adapter.ref.label}) is not built yet; "
                                   f"answered without passages")
                continue
            results = retriever.search_many(questions, k)
            took = (time.perf_counter() - t0) / len(items)
            by_q = dict(zip(questions, results))
            for p in items:
                p.passages, p.retrieval_s = list(by_q[p.request.question]), took
                if not p.passages:
                    p.notes.append(f"index '{index}' returned no passages (is it empty? `loracle index list`); "
                                   "answered without passages")
                note = _chunking_note(p, retriever.index)
                if note:
                    p.notes.append(note)

    def _prepare(self, requests: list[Request]) -> list[_Prepared]:
        preps = []
        requests = [replace(r, question=clean_question(r.question),  # length, control chars
                            retrieval=r.retrieval or r.passages is not None) for r in requests]
        routes = self._routes(requests)
        off = sorted(n for n, why in self.router().skipped.items() if why == "disabled") if routes else []
        for i, r in enumerate(requests):
            notes = []
            if i in routes:  # adapter="auto": the closest adapter, or none (base model) when none is close
                r = replace(r, adapter=routes[i].adapter)
                if off:  # the closest one may be among them: say so rather than answer as if none existed
                    notes.append(f"routed among the adapters in service: {', '.join(off)} "
                                 f"{'is' if len(off) == 1 else 'are'} disabled and {'was' if len(off) == 1 else 'were'}"
                                 f" not considered")
            adapter, note = self._adapter_for(r.adapter)
            card_tokens = (adapter.settings.get("max_new_tokens") if adapter else None)
            p = _Prepared(r, adapter, max_new_tokens=r.max_new_tokens or card_tokens or self.config.max_new_tokens,
                          settings=self._settings(r, adapter), route=routes.get(i), notes=notes + ([note] if note else []))
            if r.passages is not None:  # given, not searched: no index was used
                p.passages, p.settings["index"] = list(r.passages), None
                p.settings["source"]["index"] = "request (passages given)"
            preps.append(p)
        self._retrieve(preps)
        for p in preps:
            self._decision_plan(p)
            p.messages = prompts.build_messages(p.request.question, p.passages or None, p.settings["template"],
                                                p.settings["passage_chars"], p.request.examples)
            self._check_room(p)
        return preps

    def _check_room(self, p: _Prepared) -> None:
        """Refuse a prompt that, with its answer, would not fit the model's context (it would decode garbage).
        A remote backend's server checks its own."""
        room = getattr(self.backend, "prompt_room", None)
        n, limit = room(p.messages) if room else (0, None)
        if limit and n + p.max_new_tokens > limit:
            k, turns = len(p.passages or []), len(p.request.examples or [])
            fixes = (["fewer or shorter passages (k, passage_chars)"] if k else []) + \
                (["fewer earlier turns"] if turns else []) + ["a shorter question", "fewer answer tokens"]
            raise ValueError(f"the prompt is {n:,} tokens ({k} passage(s), {turns} earlier turn(s)) and the answer may "
                             f"take {p.max_new_tokens} more, over the model's context of {limit:,} tokens; use "
                             + ", ".join(fixes[:-1]) + " or " + fixes[-1])

    # --- generation -----------------------------------------------------------------------------
    @staticmethod
    def _items(preps: list[_Prepared]) -> list:
        from app.backends import GenItem

        return [GenItem(p.messages, p.adapter.ref.key if p.adapter else None, p.max_new_tokens, p.offsets)
                for p in preps]

    def _generate(self, preps: list[_Prepared], streamer=None, wait: bool = True):
        if self.scheduler is not None and streamer is None:
            return self.scheduler.generate(self._items(preps), wait=wait)
        with self._lock:  # the adapter choice is made inside the backend call, under the lock
            return self.backend.generate(self._items(preps), streamer=streamer)

    def _answer(self, p: _Prepared, gen, seconds: float, batch: int, cancelled: bool = False) -> Answer:
        seconds = gen.seconds if gen.seconds is not None else seconds
        batch = gen.batch_size or batch
        timings = {"retrieval_s": round(p.retrieval_s, 4), "prompt_tokens": gen.prompt_tokens,
                   "generation_s": round(seconds, 4), "new_tokens": gen.new_tokens,
                   "tokens_per_s": round(gen.new_tokens / seconds, 2) if seconds > 0 else 0.0, "batch_size": batch}
        route = {"adapter": p.route.adapter, "score": round(float(p.route.score), 4)} if p.route else None
        answer = Answer(text=gen.text, mode=mode_of(p.adapter.ref.key if p.adapter else None, bool(p.passages)),
                        adapter=p.adapter.ref.label if p.adapter else None, passages=p.passages,
                        citations=prompts.parse_citations(gen.text, p.passages), timings=timings,
                        question=p.request.question, decision=self._decision(p, gen),
                        settings={**p.settings, "max_new_tokens": p.max_new_tokens},
                        route=route, notes=list(p.notes) + self._length_note(p, gen))
        self._record(p, answer, cancelled)
        return answer

    @staticmethod
    def _length_note(p: _Prepared, gen) -> list[str]:
        """A note when the answer ran into its token budget (not for decision-only runs of a token or two)."""
        if p.max_new_tokens < 16 or gen.new_tokens < p.max_new_tokens or getattr(gen, "cancelled", False):
            return []
        return [f"the answer stopped at its limit of {p.max_new_tokens} new tokens and may be cut short; allow "
                "more ('Answer tokens' in the web UI, max_tokens in the API, --max-new-tokens in the CLI)"]

    def _record(self, p: _Prepared, answer: Answer, cancelled: bool = False) -> None:
        """Audit log row; a failing log never fails the answer (the failure goes to the "loracle.engine" log)."""
        if not self.audit.enabled:
            return
        try:
            latency = answer.timings["retrieval_s"] + answer.timings["generation_s"]
            answer.answer_id = self.audit.record(answer, p.request.origin or "api", latency, route=answer.route,
                                                 cancelled=cancelled)
        except Exception as exc:  # noqa: BLE001
            _log.warning("audit log write failed: %s", exc)

    @staticmethod
    def _decision(p: _Prepared, gen):
        from app.decision import Decision

        if not p.decide:
            return None
        if gen.option_logprobs is not None:
            return decide(gen.option_logprobs, p.offsets, p.calibration)
        label = prompts.parse_decision(gen.text)
        return Decision(label, {}, {}, "parsed") if label else None

    # --- public API -----------------------------------------------------------------------------
    def answer(self, question: str, adapter: str | AdapterRef | None = None, retrieval: bool = False,
               **options) -> Answer:
        """Answer one question; `options` are Request fields (k, index, max_new_tokens, decide, scored,
        calibrate, passage_chars, examples).

            ans = engine.answer("Is aspirin useful after stroke?", adapter="medical-pubmedqa", retrieval=True)
            print(ans.decision.label if ans.decision else "-", ans.text)
        """
        return self.answer_batch([Request(question, adapter, retrieval, **options)], wait=False)[0]

    def answer_batch(self, requests: list[Request], wait: bool = True) -> list[Answer]:
        """All requests decoded together (mixed adapters); answers in request order. When the scheduler's
        queue is full: wait for room, or with wait=False raise app.scheduler.Busy.

            answers = engine.answer_batch([Request("Q1?"), Request("Q2?", adapter="medical-pubmedqa")])
        """
        if not requests:
            return []
        preps = self._prepare(list(requests))
        rows, seconds = self._generate(preps, wait=wait)
        return [self._answer(p, gen, seconds, len(preps)) for p, gen in zip(preps, rows)]

    def compare(self, question: str, adapter: str | AdapterRef | None = None, **options) -> dict[str, Answer]:
        """The question in all four modes, batched: {"base", "lora", "rag", "lora+rag"} -> Answer.

            for mode, ans in engine.compare("Do statins prevent stroke?").items(): print(mode, ans.text)
        """
        adapter = adapter or self.config.default_adapter
        reqs = [Request(question, adapter if "lora" in m else None, "rag" in m, **options) for m in MODES]
        return dict(zip(MODES, self.answer_batch(reqs, wait=False)))

    def stream(self, question: str, adapter: str | AdapterRef | None = None, retrieval: bool = False,
               cancel: threading.Event | None = None, **options) -> Iterator[str | Answer]:
        """Yield text deltas as they are generated; the last item is the final Answer. Setting `cancel` (or
        closing the generator) stops the row: it leaves the batch at the next step and the stream ends.

            for part in engine.stream("Is X safe?"): print(part if isinstance(part, str) else "", end="")
        """
        prep = self._prepare([Request(question, adapter, retrieval, **options)])[0]
        if self.scheduler is not None:
            yield from self._stream_scheduled(prep, cancel or threading.Event())
            return
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
        yield from _trimmed(streamer)
        worker.join()
        if "error" in result:
            raise result["error"]
        rows, seconds = result["out"]
        yield self._answer(prep, rows[0], seconds, 1)

    def _stream_scheduled(self, prep: _Prepared, cancel: threading.Event) -> Iterator[str | Answer]:
        deltas: queue.Queue = queue.Queue()
        row = self.scheduler.submit(self._items([prep])[0], on_text=deltas.put, cancel=cancel)
        gen = None
        try:
            yield from _trimmed(iter(deltas.get, None))
            gen = self.scheduler.result(row)
        finally:  # the consumer stopped early (closed generator, client gone): free the row
            cancel.set()
            if gen is None:  # the audit log still gets what was generated, marked cancelled, once the row leaves
                threading.Thread(target=self._record_cancelled, args=(prep, row), daemon=True).start()
        if gen.cancelled:
            self._answer(prep, gen, gen.seconds, gen.batch_size, cancelled=True)
        else:
            yield self._answer(prep, gen, gen.seconds, gen.batch_size)

    def _record_cancelled(self, prep: _Prepared, row) -> None:
        try:
            gen = self.scheduler.result(row)
            self._answer(prep, gen, gen.seconds, gen.batch_size, cancelled=True)
        except Exception as exc:  # noqa: BLE001 - a background audit write never raises into anything
            _log.warning("audit log write of a cancelled answer failed: %s", exc)


_SHARED: list[Engine] = []


def share(engine: Engine) -> Engine:
    """Make `engine` the process's shared engine (the UI pages use it instead of loading their own):
    `loracle ui --api` serves the UI and the API from one engine and one scheduler queue."""
    _SHARED[:] = [engine]
    return engine


def shared() -> Engine | None:
    return _SHARED[0] if _SHARED else None


def _trimmed(deltas) -> Iterator[str]:
    """Deltas whose concatenation equals the final (stripped) text: leading whitespace dropped, trailing
    whitespace held until more text follows."""
    started, held = False, ""
    for delta in deltas:
        if not started:
            delta = delta.lstrip()
            started = bool(delta)
        delta = held + delta
        held = delta[len(delta.rstrip()):]
        if delta.rstrip():
            yield delta.rstrip()


def _index_from_card(p: _Prepared) -> bool:
    """True when the index this request searches is the one its adapter card names (no one else asked for it)."""
    return p.request.index is None and p.adapter is not None and p.adapter.settings.get("index") == p.settings["index"]


def _chunking_note(p: _Prepared, index) -> str | None:
    """A note when the adapter was trained on passages chunked otherwise than this index's (its card says how):
    the passages it reads now are not the kind it learnt from."""
    trained = (p.adapter.settings.get("chunker") if p.adapter else None) or {}
    if not trained:
        return None
    now = asdict(index.chunk_config)
    if all(trained.get(k) == v for k, v in now.items()):
        return None
    return (f"adapter {p.adapter.ref.label} was trained on passages chunked {trained.get('size')}/"
            f"{trained.get('overlap')} {trained.get('unit')}s, index '{index.name}' is chunked {now['size']}/"
            f"{now['overlap']} {now['unit']}s: its answers may be worse; retrain the adapter on this index, or "
            f"rebuild the index with --chunk-size {trained.get('size')} --chunk-overlap {trained.get('overlap')} "
            f"(in the UI: a new index with that chunk size and overlap on the Documents page)")
