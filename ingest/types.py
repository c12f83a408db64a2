"""Plain dataclasses passed between the ingestion stages. By design no framework object (a langchain
Document, a Streamlit value) crosses a module boundary: loaders and splitters convert to these at once."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One loaded source file (or one record of a JSONL corpus)."""

    doc_id: str  # stable id: file name without extension, or the corpus record's doc_id
    source: str  # where it came from: a path or a URL
    text: str
    # title, format, sha256, spans ([start, end, page, section] per piece); a JSONL record's extra fields
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    """A span of one document's text; `start`/`end` are character offsets into `Document.text`."""

    chunk_id: str  # f"{doc_id}#{n}"
    doc_id: str
    text: str
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)  # source, location (page / section), title
