"""Plain dataclasses passed between the application stages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ingest.types import Chunk

MODES = ("base", "lora", "rag", "lora+rag")


def mode_of(adapter: str | None, retrieval: bool) -> str:
    if adapter and retrieval:
        return "lora+rag"
    if adapter:
        return "lora"
    return "rag" if retrieval else "base"


@dataclass
class Passage:
    """A retrieved chunk with its score and 1-based rank in the result list."""

    chunk: Chunk
    score: float
    rank: int

    @property
    def doc_id(self) -> str:
        return self.chunk.doc_id

    @property
    def location(self) -> str:
        return str(self.chunk.metadata.get("location", ""))


@dataclass
class Citation:
    """A `[n]` marker found in an answer; `valid` is False when passage n was not given to the model."""

    number: int
    valid: bool
    passage: Passage | None = None


@dataclass
class Answer:
    text: str
    mode: str  # the mode really used: one of MODES
    adapter: str | None  # "name@version" or None
    passages: list[Passage] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # retrieval_s, prompt_tokens, generation_s, tokens_per_s
    question: str = ""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
