"""Continuous batching for the local backend: every request (UI sessions, API clients, CLI) goes into one
queue; one worker thread decodes all active rows together, one token per step.

- A request that arrives while others decode is prefilled alone (its own adapter, no padding) and joins
  the batch at the next step: its KV cache is left-padded to the batch's width and concatenated.
- A finished or cancelled row leaves at once (its cache rows are dropped and the all-padding columns on
  the left trimmed), so a short answer never waits for the longest one and a client that went away
  stops consuming compute.
- Rows of different adapters share one forward pass (PEFT's `adapter_names`); the yes/no/maybe scoring
  and the repetition penalty are applied per row, exactly as `LocalBackend.generate` applies them.
- FIFO admission up to `max_batch` active rows: nobody starves. At most `queue_limit` requests wait;
  beyond that `submit` raises `Busy` (the API answers 503 + Retry-After, the UI says "busy").
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


class Busy(RuntimeError):
    """The scheduler's queue is full: try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 2.0):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Row:
    item: object  # app.backends.GenItem
    prompt: list[int]
    on_text: Callable[[str], None] | None = None
    cancel: threading.Event | None = None
    done: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    logprobs: dict | None = None
    result: object = None  # app.backends.Generation
    error: BaseException | None = None
    emitted: str = ""
    cache: object = None  # its own KV cache between prefill and joining the batch
    finished: bool = False
    batch: int = 1  # the largest batch it decoded in
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


class Scheduler:
    def __init__(self, backend, lock: threading.RLock | None = None, max_batch: int = 8, queue_limit: int = 32):
        if max_batch < 1 or queue_limit < 1:
            raise ValueError(f"max_batch={max_batch} and queue_limit={queue_limit} must be at least 1")
        self.backend, self.lock = backend, lock or threading.RLock()
        self.max_batch, self.queue_limit = max_batch, queue_limit
        self._waiting: collections.deque[_Row] = collections.deque()
        self._active: list[_Row] = []
        self._cv = threading.Condition()
        self._cache = self._mask = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.counters = {"steps": 0, "rows_stepped": 0, "served": 0, "cancelled": 0, "busy": 0, "max_active": 0}

    # --- client side ------------------------------------------------------------------------------
    def submit(self, item, on_text: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
               wait: bool = False) -> _Row:
        """Queue one GenItem. `on_text(delta)` is called from the worker with each new piece of text, and
        with None at the end. When the queue is full: raise Busy, or with wait=True block until there is room."""
        row = _Row(item, self._tokens(item), on_text, cancel)
        self._enqueue([row], wait)
        return row

    def generate(self, items: list, wait: bool = True) -> tuple[list, float]:
        """Queue all items at once (they join the batch together) and wait for all of them; same contract as
        LocalBackend.generate: (generations in order, seconds)."""
        t0 = time.perf_counter()
        rows = [_Row(item, self._tokens(item)) for item in items]
        self._enqueue(rows, wait)
        return [self.result(row) for row in rows], time.perf_counter() - t0

    def _tokens(self, item) -> list[int]:
        return list(self.backend.tokenizer(self.backend.render(item.messages), add_special_tokens=False)["input_ids"])

    def _enqueue(self, rows: list[_Row], wait: bool) -> None:
        with self._cv:
            # a batch larger than the whole queue still gets in once the queue is empty
            while self._waiting and len(self._waiting) + len(rows) > self.queue_limit:
                if not wait:
                    self.counters["busy"] += 1
                    raise Busy(f"the engine is busy: {len(self._waiting)} requests are waiting (queue_limit="
                               f"{self.queue_limit}); try again in a few seconds", retry_after=self._retry_after())
                self._cv.wait(0.5)
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._waiting.extend(rows)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="loracle-scheduler", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def result(self, row: _Row):
        row.done.wait()
        if row.error is not None:
            raise row.error
        return row.result

    def cancel(self, row: _Row) -> None:
        if row.cancel is None:
            row.cancel = threading.Event()
        row.cancel.set()
        with self._cv:
            self._cv.notify_all()

    def stats(self) -> dict:
        with self._cv:
            active = sum(not r.finished for r in self._active)  # finished rows leave at the end of the step
            return {"waiting": len(self._waiting), "active": active, "max_batch": self.max_batch,
                    "queue_limit": self.queue_limit, **self.counters}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _retry_after(self) -> float:
        return float(max(1, min(30, round(len(self._waiting) / self.max_batch * 2))))

    # --- worker -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        while True:
            with self._cv:
                while not self._closed and not self._waiting and not self._active:
                    self._cv.wait()
                if self._closed:
                    for row in list(self._waiting) + self._active:
                        self._finish(row, RuntimeError("the scheduler was closed"))
                    return
                room = self.max_batch - len(self._active)
                joining = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                self._cv.notify_all()  # room in the queue for a waiting submitter
            try:
                with self.lock, torch.inference_mode():
                    for row in joining:
                        self._prefill(row)
                    self._join([r for r in joining if not r.finished])
                    self._leave()
                    if self._active:
                        self._step()
                        self._leave()
            except Exception as exc:  # noqa: BLE001 - every row in flight gets the error, the loop goes on
                for row in joining + self._active:
                    if not row.done.is_set():
                        self._finish(row, exc)
                self._active, self._cache, self._mask = [], None, None

    def _forward(self, names: list[str | None], **kwargs):
        from app.config import BASE_ADAPTER

        model = self.backend.model
        if model is self.backend.base_model or len(set(names)) == 1:
            with self.backend._adapter_ctx(names[0]):
                return model(**kwargs)
        return model(**kwargs, adapter_names=[n or BASE_ADAPTER for n in names])

    def _prefill(self, row: _Row) -> None:
        import torch
        from transformers import DynamicCache

        row.started = time.perf_counter()
        if row.cancelled or row.item.max_new_tokens <= 0:
            return self._finish(row)
        ids = torch.tensor([row.prompt])
        out = self._forward([row.item.adapter], input_ids=ids, cache=DynamicCache(), use_cache=True)
        row.cache = _cache_of(out)
        self._pick(row, out.logits[0, -1])

    def _join(self, rows: list[_Row]) -> None:
        """Left-pad the batch cache and the new rows' caches to one width and stack them."""
        import torch
        from torch.nn.functional import pad
        from transformers import DynamicCache

        if not rows:
            return
        parts = ([(self._cache, self._mask)] if self._active else []) + [
            (r.cache, torch.ones(1, len(r.prompt), dtype=torch.long)) for r in rows]
        width = max(mask.shape[1] for _, mask in parts)
        layers = []
        for layer in range(len(parts[0][0].layers)):
            keys = [pad(c.layers[layer].keys, (0, 0, width - m.shape[1], 0)) for c, m in parts]
            values = [pad(c.layers[layer].values, (0, 0, width - m.shape[1], 0)) for c, m in parts]
            layers.append((torch.cat(keys), torch.cat(values)))
        self._mask = torch.cat([pad(m, (width - m.shape[1], 0)) for _, m in parts])
        self._cache = DynamicCache(layers)
        for r in rows:
            r.cache = None
        self._active.extend(rows)
        with self._cv:
            self.counters["max_active"] = max(self.counters["max_active"], len(self._active))

    def _leave(self) -> None:
        """Drop finished and cancelled rows from the batch and trim the all-padding columns on the left."""
        import torch
        from transformers import DynamicCache

        for row in self._active:
            if row.cancelled and not row.finished:
                self._finish(row)
        keep = [i for i, r in enumerate(self._active) if not r.finished]
        if len(keep) == len(self._active):
            return
        self._active = [self._active[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep)
        mask = self._mask[index]
        start = int((mask.sum(dim=0) > 0).nonzero()[0])
        self._mask = mask[:, start:]
        self._cache = DynamicCache([(layer.keys[index, :, start:], layer.values[index, :, start:])
                                    for layer in self._cache.layers])

    def _step(self) -> None:
        import torch

        rows = self._active
        self._mask = torch.cat([self._mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        out = self._forward([r.item.adapter for r in rows],
                            input_ids=torch.tensor([[r.generated[-1]] for r in rows]),
                            attention_mask=self._mask, position_ids=(self._mask.sum(dim=1, keepdim=True) - 1),
                            cache=self._cache, use_cache=True)
        self._cache = _cache_of(out)
        with self._cv:
            self.counters["steps"] += 1
            self.counters["rows_stepped"] += len(rows)
        for r, logits in zip(rows, out.logits[:, -1]):
            r.batch = max(r.batch, len(rows))
            self._pick(r, logits)

    def _pick(self, row: _Row, logits) -> None:
        """Choose the row's next token: decision scoring at its first position, then the repetition penalty,
        then greedy; stream the new text; finish the row at eos or its token budget."""
        import torch

        from transformers import RepetitionPenaltyLogitsProcessor

        from app.decision import choose, option_ids

        backend, item = self.backend, row.item
        if not row.generated and item.decide is not None:  # as app.decision.DecisionProcessor does in generate()
            if backend._option_ids is None:
                backend._option_ids = option_ids(backend.tokenizer)
            row.logprobs, token = choose(logits, backend._option_ids, item.decide)
        else:
            if backend.repetition_penalty != 1.0:  # the same processor generate() applies
                seen = torch.tensor([row.prompt + row.generated])
                logits = RepetitionPenaltyLogitsProcessor(backend.repetition_penalty)(seen, logits[None])[0]
            if backend.force_length:
                logits = logits.clone()
                logits[backend.eos] = float("-inf")
            token = int(logits.argmax())
        if token in backend.eos:
            return self._finish(row)
        row.generated.append(token)
        if row.on_text is not None:
            text = backend.tokenizer.decode(row.generated, skip_special_tokens=True)
            if not text.endswith("\ufffd") and text.startswith(row.emitted) and len(text) > len(row.emitted):
                delta, row.emitted = text[len(row.emitted):], text
                row.on_text(delta)
        if len(row.generated) >= item.max_new_tokens:
            self._finish(row)

    def _finish(self, row: _Row, error: BaseException | None = None) -> None:
        from app.backends import Generation

        row.finished = True
        if error is not None:
            row.error = error
        else:
            text = self.backend.tokenizer.decode(row.generated, skip_special_tokens=True)
            seconds = time.perf_counter() - (row.started or row.submitted)
            row.result = Generation(text.strip(), len(row.prompt), len(row.generated), row.logprobs,
                                    seconds=seconds, batch_size=row.batch, cancelled=row.cancelled)
        with self._cv:
            self.counters["cancelled" if row.cancelled else "served"] += 1
        if row.on_text is not None and error is None:  # text held back (a cut multi-byte character) goes out
            if text.startswith(row.emitted) and len(text) > len(row.emitted):
                row.on_text(text[len(row.emitted):])
                row.emitted = text
        row.done.set()
        if row.on_text is not None:
            row.on_text(None)  # end of stream


def _cache_of(out):
    return out.cache if hasattr(out, "cache") else out.past_key_values
