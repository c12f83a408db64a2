"""Generation backends: where the tokens come from. The engine does prompts, retrieval, adapters' registry
checks and locking; a backend turns chat messages + an adapter name into text.

- LocalBackend: transformers + PEFT in this process; all rows of a batch in ONE generate() call with
  mixed-adapter rows (`adapter_names=[..., "__base__"]`) and left padding.
- OpenAIBackend: any OpenAI-compatible chat-completions server, e.g. vLLM started with
  `--enable-lora --lora-modules medical-pubmedqa=adapters/medical-pubmedqa`; the adapter name is sent
  as the `model` field and the base model's name when no adapter is wanted.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app import prompts
from app.config import BASE_ADAPTER


@dataclass
class GenItem:
    messages: list[dict]
    adapter: str | None  # backend adapter name; None -> base model
    max_new_tokens: int
    # score yes/no/maybe at the first position and open with the best: the calibration offsets ({} for none);
    # None: free generation
    decide: dict[str, float] | None = None


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    option_logprobs: dict[str, float] | None = None  # yes/no/maybe log-probs at the first position (scored rows)
    seconds: float | None = None  # this row's own generation time (scheduler); None: the batch's
    batch_size: int | None = None  # the largest batch the row decoded in (scheduler)
    cancelled: bool = False  # stopped early because its client went away


class LocalBackend:
    kind = "local"

    def __init__(self, spec: str | None = None, dtype: str = "float32", repetition_penalty: float = 1.0,
                 threads: int | None = None):
        from app.models import load

        import torch

        from app.config import default_threads

        torch.set_num_threads(threads or default_threads())
        self.base_model, self.tokenizer, self.info = load(spec, dtype=dtype)
        self.model = self.base_model  # becomes a PeftModel when the first adapter is loaded
        self.repetition_penalty = repetition_penalty
        self.force_length = False  # benchmarks: every row generates exactly max_new_tokens (eos ignored)
        self.prefill_rows = True  # prompts of very different lengths: prefill each row alone, decode together
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.base_model.generation_config, "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos = sorted(i for i in ids if i is not None)
        self._option_ids: dict[str, int] | None = None

    def load_adapter(self, name: str, path: Path, replace: bool = False) -> None:
        from peft import PeftModel

        if replace:
            self.model.delete_adapter(name)
        if self.model is self.base_model:
            self.model = PeftModel.from_pretrained(self.base_model, str(path), adapter_name=name)
            self.model.eval()
        else:
            self.model.load_adapter(str(path), adapter_name=name)

    def render(self, messages: list[dict]) -> str:
        return prompts.render(self.tokenizer, messages)

    def prompt_room(self, messages: list[dict]) -> tuple[int, int | None]:
        """(tokens of the rendered prompt, the model's context length or None when its config does not say)."""
        n = len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])
        return n, getattr(self.base_model.config, "max_position_embeddings", None)

    def _gen_config(self, max_new_tokens: int):
        from transformers import GenerationConfig

        # the repetition penalty runs as our own processor, after the decision scorer (see _processors)
        # repetition_penalty=1.0 explicitly: else a model's generation_config.json could add a default penalty
        # ahead of the decision scorer
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0,
                                **({"min_new_tokens": max_new_tokens} if self.force_length else {}),
                                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos)

    def _processors(self, items: list[GenItem], mask):
        """Decision scorer first (it must see the model's raw log-probs), then the repetition penalty."""
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

        from app.decision import DecisionProcessor, option_ids

        scorer = None
        if any(i.decide is not None for i in items):
            if self._option_ids is None:
                self._option_ids = option_ids(self.tokenizer)
            scorer = DecisionProcessor(self._option_ids, [i.decide for i in items])
        procs = LogitsProcessorList([scorer] if scorer else [])
        if self.repetition_penalty != 1.0:  # left padding is not part of a row's text: not penalised
            procs.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty,
                                                          prompt_ignore_length=(mask == 0).sum(dim=1)))
        return procs, scorer

    def make_streamer(self):
        from transformers import TextIteratorStreamer

        return TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def generate(self, items: list[GenItem], streamer=None) -> tuple[list[Generation], float]:
        """All rows in ONE generate() call (mixed adapters, left padding); the caller holds the engine lock.
        When prompt lengths differ a lot (a 60-token question beside a 700-token RAG prompt), padding would
        multiply the compute-bound prefill, so each row's prompt is prefilled alone and the caches are
        stitched into one left-padded batch cache before the joint decode. Returns rows and seconds."""
        texts = [self.render(i.messages) for i in items]
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        stitch = self.prefill_rows and len(items) > 1 and len(self._buckets(lengths)) > 1
        return self._generate_once(items, texts, streamer, prefill_rows=stitch)

    @staticmethod
    def _buckets(lengths: list[int], max_ratio: float = 2.0, min_gap: int = 128) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        buckets: list[list[int]] = []
        for i in order:
            if buckets and (lengths[i] <= max_ratio * lengths[buckets[-1][0]]
                            or lengths[i] - lengths[buckets[-1][0]] < min_gap):
                buckets[-1].append(i)
            else:
                buckets.append([i])
        return buckets

    def _adapter_ctx(self, name: str | None):
        import contextlib

        if self.model is self.base_model:
            return contextlib.nullcontext()
        if name is None:
            return self.model.disable_adapter()
        if self.model.active_adapter != name:  # set_adapter walks every module: skip if already set
            self.model.set_adapter(name)
        return contextlib.nullcontext()

    def _prefill(self, enc, names):
        """KV cache of prompt[:-1] for every row, each computed alone (no padding, its own adapter) and
        stitched into one left-padded batch cache; generate() then only runs the last prompt token."""
        import torch
        from transformers import DynamicCache

        mask = enc["attention_mask"]
        width = mask.shape[1]
        per_row = []
        for r, name in enumerate(names):
            ids = enc["input_ids"][r, width - int(mask[r].sum()):width - 1][None]
            with self._adapter_ctx(name):
                out = self.model(input_ids=ids, use_cache=True)
                per_row.append(out.cache if hasattr(out, "cache") else out.past_key_values)
        cache = DynamicCache(config=self.base_model.config)
        for layer in range(len(per_row[0].layers)):
            keys, values = [], []
            for c in per_row:
                k, v = c.layers[layer].keys, c.layers[layer].values
                pad = width - 1 - k.shape[2]
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            cache.update(torch.cat(keys), torch.cat(values), layer)
        return cache

    def _generate_once(self, items: list[GenItem], texts: list[str], streamer=None, prefill_rows: bool = False):
        import torch

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        names = [i.adapter for i in items]
        procs, scorer = self._processors(items, enc["attention_mask"])
        kwargs = dict(enc, generation_config=self._gen_config(max(i.max_new_tokens for i in items)),
                      streamer=streamer, logits_processor=procs)
        with torch.inference_mode():
            t0 = time.perf_counter()
            if prefill_rows:
                kwargs["cache"] = self._prefill(enc, names)
            if self.model is self.base_model:
                out = self.model.generate(**kwargs)
            elif len(set(names)) == 1 and names[0] is None:
                with self.model.disable_adapter():
                    out = self.model.generate(**kwargs)
            elif len(set(names)) == 1:  # one adapter for all rows: plain LoRA path, no per-row grouping
                if self.model.active_adapter != names[0]:  # set_adapter walks every module: skip if set
                    self.model.set_adapter(names[0])
                out = self.model.generate(**kwargs)
            else:
                out = self.model.generate(**kwargs, adapter_names=[n or BASE_ADAPTER for n in names])
            seconds = time.perf_counter() - t0
        width = enc["input_ids"].shape[1]
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        rows = []
        for r, item in enumerate(items):
            ids = out[r, width:].tolist()[: item.max_new_tokens]
            for j, t in enumerate(ids):
                if t in self.eos:
                    ids = ids[:j]
                    break
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            rows.append(Generation(text, int(lengths[r]), len(ids), scorer.logprobs[r] if scorer else None))
        return rows, seconds


class OpenAIBackend:
    """Client for an OpenAI-compatible /chat/completions server (standard library only)."""

    kind = "openai"

    def __init__(self, url: str, base_model: str, timeout: float = 120.0, api_key: str | None = None):
        from app.models import ModelInfo

        self.url = url.rstrip("/")
        self.base_name = base_model
        self.timeout = timeout
        self.api_key = api_key
        self.info = ModelInfo(spec=base_model, name=base_model, path=Path(self.url), sha256="")
        self.tokenizer = None
        self.model = self.base_model = None

    def _call(self, method: str, route: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + route, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise RuntimeError(f"generation server {self.url}{route} answered HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise RuntimeError(f"cannot reach generation server {self.url} ({exc}); start it (e.g. `vllm serve "
                               f"MODEL --enable-lora --lora-modules NAME=adapters/NAME`) or use the local "
                               f"backend") from None

    def models(self) -> list[str]:
        return [m.get("id") for m in self._call("GET", "/models").get("data", [])]

    def load_adapter(self, name: str, path: Path, replace: bool = False) -> None:
        served = self.models()
        if name not in served:
            raise ValueError(f"adapter '{name}' is not served by {self.url} (serves: {', '.join(served) or 'none'});"
                             f" start the server with --lora-modules {name}={path}")

    def make_streamer(self):
        return None

    def generate(self, items: list[GenItem], streamer=None) -> tuple[list[Generation], float]:
        t0 = time.perf_counter()
        rows = []
        for item in items:  # the server batches concurrent work itself; requests stay simple here
            body = {"model": item.adapter or self.base_name, "messages": prompts.neutralize_messages(item.messages),
                    "max_tokens": item.max_new_tokens, "temperature": 0.0}
            reply = self._call("POST", "/chat/completions", body)
            try:
                text = reply["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise RuntimeError(f"generation server {self.url} sent no choices[0].message.content: "
                                   f"{str(reply)[:200]}") from None
            usage = reply.get("usage") or {}
            rows.append(Generation(text.strip(), int(usage.get("prompt_tokens", 0)),
                                   int(usage.get("completion_tokens", 0))))
        return rows, time.perf_counter() - t0


def make_backend(config) -> LocalBackend | OpenAIBackend:
    if config.backend == "local":
        return LocalBackend(config.base_model, config.dtype, config.repetition_penalty, config.threads)
    if config.backend == "openai":
        from app.models import DEFAULT_BASE_MODEL, BUILTIN_MODELS

        spec = config.base_model or DEFAULT_BASE_MODEL
        name = BUILTIN_MODELS[spec].display_name if spec in BUILTIN_MODELS else spec
        return OpenAIBackend(config.server_url, name)
    raise ValueError(f"unknown backend '{config.backend}'; choose 'local' or 'openai'")
