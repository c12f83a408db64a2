"""Application defaults: the one place the engine's settings and the adapter store location are set.

Every entry point (CLI, UI, evaluation, benchmarks) starts from `EngineConfig.from_env()` and overrides
only what its user asked for; tests pass their own values (tiny model, temporary folders).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

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

    def adapters_root(self) -> Path:
        return Path(self.adapters_dir) if self.adapters_dir else adapters_dir()

    @classmethod
    def from_env(cls, **overrides) -> "EngineConfig":
        """Defaults, then the LORACLE_* environment variables named in the fields' metadata, then `overrides`
        (None values are ignored, so callers can pass unset CLI flags through)."""
        values = {}
        for f in fields(cls):
            env = f.metadata.get("env")
            if env and os.environ.get(env):
                raw = os.environ[env]
                kind = type(getattr(cls(), f.name)) if getattr(cls(), f.name) is not None else str
                try:
                    values[f.name] = int(raw) if f.name in ("k", "max_new_tokens", "threads") else kind(raw)
                except ValueError:
                    raise ValueError(f"${env}={raw!r} is not valid for {f.name}; unset it or give a number") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
