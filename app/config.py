"""Application defaults: the one place the engine's settings and the adapter store location are set.

The CLI and UI mirror these fields; tests pass their own values (tiny model, temporary folders).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ingest.config import home

DEFAULT_ADAPTER = "medical-pubmedqa"
DEFAULT_INDEX = "pubmedqa"
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


def default_threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


def adapters_dir() -> Path:
    """Adapter registry root: $LORACLE_ADAPTERS, else <home>/adapters."""
    return Path(os.environ.get("LORACLE_ADAPTERS", home() / "adapters"))


@dataclass
class EngineConfig:
    base_model: str | None = None  # app.models spec; None -> $LORACLE_BASE_MODEL or smollm2-135m-instruct
    adapters_dir: str | None = None  # None -> adapters_dir()
    # adapters loaded at start; None -> default_adapter when the registry has a compatible one
    adapters: tuple[str, ...] | None = None
    default_adapter: str = DEFAULT_ADAPTER  # used by compare() and the UI when no adapter is named
    index: str = DEFAULT_INDEX
    k: int = 3  # the shipped adapter was trained retrieval-aware with k=3 (see adapters/medical-pubmedqa)
    hybrid: bool = False
    max_new_tokens: int = 128
    template: str | None = None  # None -> "cited" with passages, "plain" without (app.prompts.TEMPLATES)
    repetition_penalty: float = 1.1  # small models loop under pure greedy decoding
    dtype: str = "float32"
    # torch intra-op threads; None -> half the cores (at least 1). Decoding a 135M model is a long chain of
    # tiny ops: with 2 threads on 2 busy shared cores each step waits on the other thread (measured
    # 0.4-0.6 tokens/s vs 10.5 tokens/s with 1 thread at batch 1; see benchmarks/engine.py).
    threads: int | None = None
    backend: str = "local"  # "local" (transformers + PEFT) or "openai" (HTTP server, see app.backends)
    server_url: str = "http://127.0.0.1:8000/v1"  # for backend="openai"

    def adapters_root(self) -> Path:
        return Path(self.adapters_dir) if self.adapters_dir else adapters_dir()
