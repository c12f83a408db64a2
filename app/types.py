"""Plain dataclasses passed between the application stages."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass(frozen=True)
class AdapterRef:
    """One adapter version resolved once (like vLLM's LoRARequest): who it is, where, and the backend's name."""

    name: str  # registry name
    version: int
    path: Path
    key: str  # the name the backend knows it by (the registry name for the current version)

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"


@dataclass
class Answer:
    """One answer: text, the mode really used, passages and citations, the decision when one was asked for,
    the answer-time settings used (k, passage length, template, index, and where they came from), timings."""

    text: str
    mode: str  # the mode really used: one of MODES
    adapter: str | None  # "name@version" or None
    passages: list[Passage] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # retrieval_s, prompt_tokens, generation_s, tokens_per_s
    question: str = ""
    decision: Any = None  # app.decision.Decision or None
    settings: dict[str, Any] = field(default_factory=dict)
    route: dict[str, Any] | None = None  # adapter="auto": {"adapter": name or None, "score": best score}
    notes: list[str] = field(default_factory=list)  # e.g. "adapter X is disabled: answered by the base model"
    answer_id: str = ""  # the audit log's id for this answer ("" when the log is off); feedback refers to it

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
