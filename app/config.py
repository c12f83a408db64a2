"""Application defaults: the one place the engine's settings and the adapter store location are set.

Every entry point (CLI, UI, evaluation, benchmarks) starts from `EngineConfig.from_env()` and overrides
only what its user asked for; tests pass their own values (tiny model, temporary folders).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from app.types import MODES

from ingest.config import DEFAULT_INDEX, home  # ingest owns the index default (it may not import app)

DEFAULT_ADAPTER = "medical-pubmedqa"
DEFAULT_K = 3  # passages per question when neither the user nor the adapter's card says otherwise
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
BASE_CALIBRATION_FILE = "base-calibration.json"  # beside the registry: offsets of the base and rag modes


def default_threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


def adapters_dir() -> Path:
    """Adapter registry root: $LORACLE_ADAPTERS, else <home>/adapters."""
    return Path(os.environ.get("LORACLE_ADAPTERS", home() / "adapters"))


def _help(text: str, env: str | None = None, **kw):
    return field(metadata={"help": text, **({"env": env} if env else {})}, **kw)


@dataclass
class EngineConfig:
    POSITIVE: ClassVar[tuple[str, ...]] = ("k", "passage_chars", "max_new_tokens", "threads", "max_batch", "queue_limit")
    base_model: str | None = _help("base model: built-in name, local folder or hub id "
                                   "(default smollm2-135m-instruct)", "LORACLE_BASE_MODEL", default=None)
    adapters_dir: str | None = _help("adapter registry folder (default adapters/)", "LORACLE_ADAPTERS", default=None)
    # adapters loaded at start; None -> default_adapter when the registry has a compatible one
    adapters: tuple[str, ...] | None = _help("adapters to load at start (default: the default adapter)", default=None)
    default_adapter: str = _help("adapter used by compare and the UI when none is named", "LORACLE_ADAPTER",
                                 default=DEFAULT_ADAPTER)
    index: str = _help("index for retrieval when neither the request nor the adapter names one", "LORACLE_INDEX",
                       default=DEFAULT_INDEX)
    k: int = _help("passages per question when neither the request nor the adapter's card says", "LORACLE_K",
                   default=DEFAULT_K)
    passage_chars: int | None = _help("characters shown per passage (default: whole chunks) unless the adapter "
                                      "says", default=None)
    hybrid: bool = _help("dense + BM25 retrieval", default=False)
    max_new_tokens: int = _help("generation budget per answer", "LORACLE_MAX_NEW_TOKENS", default=128)
    template: str | None = _help("prompt template (default: cited with passages, plain without)", default=None)
    repetition_penalty: float = _help("greedy decoding's repetition penalty (small models loop without)",
                                      default=1.1)
    decisions: bool = _help("score yes/no/maybe from the options' log-likelihoods when a question calls for a "
                            "decision (off: free generation, the decision is read from the text)", default=True)
    calibrate: bool = _help("apply the calibration offsets stored with the adapter / base model", default=True)
    dtype: str = _help("torch dtype of the base model", default="float32")
    # torch intra-op threads; None -> half the cores (at least 1). Decoding a 135M model is a long chain of
    # tiny ops: with 2 threads on 2 busy shared cores each step waits on the other thread (measured
    # 0.4-0.6 tokens/s vs 10.5 tokens/s with 1 thread at batch 1; see benchmarks/engine.py).
    threads: int | None = _help("torch CPU threads (default: half the cores)", "LORACLE_THREADS", default=None)
    backend: str = _help("local (transformers + PEFT) or openai (an OpenAI-compatible server)", "LORACLE_BACKEND",
                         default="local")
    server_url: str = _help("server for --backend openai", "LORACLE_SERVER_URL", default="http://127.0.0.1:8000/v1")
    scheduler: bool = _help("continuous batching: one worker decodes every caller's requests together (off: one "
                            "generate() call at a time under a lock)", default=True)
    max_batch: int = _help("rows decoded together by the scheduler", "LORACLE_MAX_BATCH", default=8)
    queue_limit: int = _help("requests allowed to wait for a row; more are answered 'busy'", "LORACLE_QUEUE_LIMIT",
                             default=32)
    audit: bool = _help("record every answer in the audit log (app.audit; $LORACLE_AUDIT names its file)",
                        default=True)
    audit_hash_questions: bool = _help("store questions in the audit log as SHA-256 hashes, not clear text",
                                       default=False)
    audit_retention: int = _help("answers kept in the audit log; the oldest are dropped beyond it",
                                 "LORACLE_AUDIT_RETENTION", default=100_000)
    route_threshold: float | None = _help("adapter='auto': the least routing score for an adapter to be chosen "
                                          "(default: app.routing's measured threshold)", default=None)

    def adapters_root(self) -> Path:
        return Path(self.adapters_dir) if self.adapters_dir else adapters_dir()

    @classmethod
    def from_env(cls, **overrides) -> "EngineConfig":
        """Defaults, then the LORACLE_* environment variables named in the fields' metadata, then `overrides`
        (None values are ignored, so callers can pass unset CLI flags through)."""
        from app.cliconfig import field_types

        values = {}
        for f, kind, _ in field_types(cls):
            env = f.metadata.get("env")
            if env and os.environ.get(env):
                raw = os.environ[env]
                try:
                    values[f.name] = int(raw) if kind is int else raw
                except ValueError:
                    raise ValueError(f"${env}={raw!r} is not valid for {f.name}; unset it or give a number") from None
                if f.name in cls.POSITIVE and values[f.name] < 1:
                    raise ValueError(f"${env}={raw!r}: {f.name} must be at least 1; unset it or give a larger number")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class EvalConfig:
    """Settings of one `loracle eval` run; the CLI mirrors these fields."""

    data: str
    modes: tuple[str, ...] = MODES
    adapter: str | None = None  # registry name, "name@vN", or folder; None -> the engine's default adapter
    index: str | None = None  # None -> the adapter card's index, else the engine's (pubmedqa)
    k: int | None = None  # None -> the adapter card's k for lora modes, else the engine's (3)
    passage_chars: int | None = None  # None -> the adapter card's, else whole chunks
    decisions: str = "scored"  # "scored" (option log-likelihoods), "free" (parsed from text), or "both"
    calibrate: bool = True  # apply stored calibration offsets (the summary reports both either way)
    few_shot: int = 0  # with N > 0 the "fewshot" mode puts N labelled examples from few_shot_data in the prompt
    few_shot_data: str | None = None  # QA JSONL the examples come from; never the evaluated set
    out: str | None = None  # None -> runs/eval-<UTC time>
    limit: int | None = None
    sample: int | None = None  # a seeded random sample of N questions (file order kept), after --limit
    max_new_tokens: int = 48  # enough for a decision and a sentence
    questions_per_batch: int = 1  # each batch holds these questions in all their modes
    split_by_retrieval: bool = True  # rows with passages in their own batch (no padding of short prompts)
    base_model: str | None = None
    judge: str | None = None  # None: no judge; "" or "default": the base model; else a model spec
    save_to_card: bool = False
    replace_card_eval: bool = False  # let save_to_card replace a stored evaluation that covers more
    resume: bool = False  # keep the modes already complete in `out`, run only the missing ones
    n_resamples: int = 1000
    seed: int = 0
    threads: int | None = None

    FIELD_HELP: ClassVar[dict[str, str]] = {
        "data": "QA JSONL file (id, question, optional context_doc_id, final_decision, long_answer)",
        "adapter": "adapter NAME, NAME@vN or folder (default: medical-pubmedqa)",
        "index": "index for rag modes (default: the adapter card's, else pubmedqa)",
        "k": "passages per question (default: the adapter card's for lora modes, else 3)",
        "passage_chars": "characters per passage (default: the adapter card's, else whole chunks)",
        "decisions": "scored (option log-likelihoods), free (read from generated text) or both",
        "calibrate": "apply stored calibration offsets (the report shows both either way)",
        "few_shot": "add the fewshot mode: the base model with N labelled examples in the prompt",
        "few_shot_data": "labelled QA JSONL the few-shot examples come from (never the evaluated set)",
        "out": "output folder (default runs/eval-<UTC time>)",
        "limit": "evaluate only the first N questions",
        "sample": "evaluate a random sample of N questions (seeded by --seed; file order kept)",
        "max_new_tokens": "generation budget per answer",
        "questions_per_batch": "questions per generate() batch, each in all its modes",
        "split_by_retrieval": "rows with passages in a batch of their own (less padding on CPU)",
        "base_model": "base model spec (default smollm2-135m-instruct)",
        "save_to_card": "store the summary in the adapter's card.json under its version",
        "replace_card_eval": "with --save-to-card: replace a stored evaluation that has more questions, other "
                             "modes or another question set (refused otherwise, before evaluating)",
        "resume": "keep the modes already complete in --out and run only the missing ones",
        "n_resamples": "bootstrap resamples",
        "seed": "bootstrap and few-shot seed",
        "threads": "torch CPU threads",
    }
    FIELD_CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"decisions": ("scored", "free", "both")}
    POSITIVE: ClassVar[tuple[str, ...]] = ("k", "passage_chars", "limit", "sample", "max_new_tokens",
                                           "questions_per_batch", "n_resamples", "threads")


DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class TrainConfig:
    data: str
    name: str
    base_model: str | None = None  # app.models spec; None -> the default base model
    epochs: float = 1.0
    lr: float = 3e-4
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    layers: int | None = None  # adapt only the last N transformer layers (backward stops there: cheaper)
    max_len: int = 1024  # tokens per example (prompt + target); passages are shortened to fit
    grad_accum: int = 8  # examples per optimizer step (micro-batch is one example: no padding waste)
    warmup: float = 0.06  # fraction of optimizer steps
    val_fraction: float = 0.05  # held out: validation loss, and the only items calibration may use
    evals: int = 3  # validation passes during training (plus one at the end)
    decision_weight: float = 1.0  # loss weight of the yes/no/maybe token relative to an explanation token
    class_balance: bool = False  # scale the decision token's weight by 1/(share of its class)
    retrieval_aware: bool = False
    index: str = DEFAULT_INDEX
    gold_fraction: float = 0.8  # of the examples with passages, how many include the gold document
    no_passage_fraction: float = 0.3  # examples with the plain template (serves the `lora` mode)
    conclusion_fraction: float = 0.0  # of the examples with the gold document, how many also show its conclusion
    resample: bool = False  # draw a fresh passage plan (which items get passages, gold or not, order) each epoch
    k: int = 3
    passage_chars: int | None = None  # characters kept per passage; None: whole chunks (app.prompts.PASSAGE_CHARS)
    answer_tokens: int | None = None  # generation budget the card asks for at answer time; None: the engine's
    seed: int = 0
    split_seed: int | None = None  # seed of the validation split; None: `seed`
    seeds: int = 1  # > 1: train seeds seed, seed+1, ... on one validation split and install their merge
    limit: int | None = None  # use only the first N items of the data file
    parent: str | None = None  # adapter to continue training from (name in the registry)
    adapters_dir: str | None = None  # registry root; None -> app.config.adapters_dir()
    threads: int | None = 2  # torch threads; None leaves torch's default

    FIELD_HELP: ClassVar[dict[str, str]] = {
        "data": "QA JSONL file (fields: question, long_answer, final_decision, context_doc_id)",
        "name": "adapter name in the registry (a new version when it exists)",
        "base_model": "base model spec: built-in name, local folder or hub id (default smollm2-135m-instruct)",
        "target_modules": "comma-separated module names to adapt",
        "layers": "adapt only the last N transformer layers (default: all)",
        "max_len": "tokens per example (prompt + target); passages are shortened to fit",
        "grad_accum": "examples per optimizer step",
        "val_fraction": "share held out for validation loss (and the only items calibration may use)",
        "decision_weight": "loss weight of the yes/no/maybe token relative to an explanation token",
        "class_balance": "weight the decision token by 1 / (share of its class)",
        "retrieval_aware": "RAFT-style: training prompts carry retrieved passages from --index",
        "index": "index the passages come from",
        "gold_fraction": "share of passage-carrying examples that include the gold document",
        "no_passage_fraction": "share of examples with no passages (plain template)",
        "conclusion_fraction": "share of gold-carrying examples that also show the item's conclusion (long_answer) "
                               "as a passage of the gold document: easy reading examples",
        "resample": "draw a fresh passage plan every epoch (which items get passages, gold or distractors, their order)",
        "k": "passages per training prompt (and the adapter's answer-time k)",
        "answer_tokens": "new tokens per answer the adapter's card asks for (long answers need more; default: the engine's)",
        "passage_chars": "characters kept per passage (default: whole chunks)",
        "split_seed": "seed of the validation split (default: --seed); runs with different seeds and one split "
                      "share their held-out questions, so they can be compared or ensembled on them",
        "seeds": "train this many runs (seeds --seed, --seed + 1, ...; one validation split) and install their "
                 "equal-weight merge: one adapter, the cost of one at answer time, N times the training time",
        "limit": "use only the first N items",
        "parent": "continue training from this registered adapter",
        "adapters_dir": "registry folder (default adapters/)",
        "threads": "torch CPU threads",
    }

    def __post_init__(self):
        from app import registry

        registry.check_name(self.name) if self.name else None
        for key in ("gold_fraction", "no_passage_fraction", "conclusion_fraction", "val_fraction", "warmup"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"--{key.replace('_', '-')} {getattr(self, key)} must lie between 0 and 1")
        for key in ("epochs", "lr", "decision_weight"):
            if getattr(self, key) <= 0:
                raise ValueError(f"--{key.replace('_', '-')} {getattr(self, key)} must be above 0")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"--layers {self.layers} must be at least 1 (or leave it out to adapt every layer)")
        if self.k < 1 or self.max_len < 64 or self.rank < 1 or self.grad_accum < 1:
            raise ValueError("-k, --rank and --grad-accum must be at least 1 and --max-len at least 64")
        if self.seeds < 1:
            raise ValueError(f"--seeds {self.seeds} must be at least 1 (1: one run, no merge)")
        if self.seeds * self.rank > 512:
            raise ValueError(f"--seeds {self.seeds} x --rank {self.rank} = a merged rank of {self.seeds * self.rank}, "
                             "above the 512 that vLLM serves; use fewer seeds or a lower --rank")
        if self.seeds > 1 and self.parent:
            raise ValueError(f"--seeds {self.seeds} with --parent {self.parent}: a merge of seeds starts each from "
                             "a fresh adapter; leave out --parent (a new version of an existing name still "
                             "records its previous version as parent)")
