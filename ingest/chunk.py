"""Document -> Chunks with langchain-text-splitters (the only place langchain is used); the
splitter's output is turned into the project's own `Chunk` at once."""
from __future__ import annotations

from bisect import bisect_right
from functools import lru_cache
from typing import Any

from ingest.config import ChunkConfig
from ingest.types import Chunk, Document

UNITS = ("char", "token")


def validate(config: ChunkConfig) -> None:
    if config.unit not in UNITS:
        raise ValueError(f"chunk unit '{config.unit}' is not one of {UNITS}; pass --chunk-unit char or token")
    if config.size <= 0 or not 0 <= config.overlap < config.size:
        raise ValueError(f"chunk size {config.size} / overlap {config.overlap}: need size > 0 and 0 <= overlap < size")


@lru_cache(maxsize=8)
def _splitter(size: int, overlap: int, unit: str, tokenizer_path: str | None):
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    if unit == "token":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_path)
        return RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tok, chunk_size=size, chunk_overlap=overlap, add_start_index=True, strip_whitespace=True)
    return RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap, add_start_index=True, strip_whitespace=True)


def location_of(page: Any, section: Any, last_page: Any = None) -> str:
    """"p. 3, Methods"; "pp. 3-4, Methods" for a chunk that runs onto later pages."""
    parts = []
    if page is not None and last_page is not None and last_page != page:
        parts.append(f"pp. {page}-{last_page}")
    elif page is not None:
        parts.append(f"p. {page}")
    if section:
        parts.append(str(section))
    return ", ".join(parts)


def chunk(doc: Document, config: ChunkConfig | None = None, tokenizer_path: str | None = None) -> list[Chunk]:
    """Split one document. `tokenizer_path` (the embedder's folder) is needed when config.unit == "token"."""
    config = config or ChunkConfig()
    validate(config)
    if config.unit == "token" and not tokenizer_path:
        raise ValueError("token-based chunking needs the embedder's tokenizer; pass tokenizer_path")
    splitter = _splitter(config.size, config.overlap, config.unit, tokenizer_path if config.unit == "token" else None)
    spans = doc.metadata.get("spans") or [[0, len(doc.text), None, None]]
    starts = [s[0] for s in spans]
    title = doc.metadata.get("title") or doc.doc_id
    chunks = []
    for n, piece in enumerate(splitter.create_documents([doc.text])):
        start = int(piece.metadata.get("start_index", -1))
        if start < 0 or doc.text[start:start + len(piece.page_content)] != piece.page_content:
            start = doc.text.find(piece.page_content)
        end = start + len(piece.page_content)
        _, _, page, section = spans[max(0, bisect_right(starts, start) - 1)]
        last_page = spans[max(0, bisect_right(starts, end - 1) - 1)][2]
        chunks.append(Chunk(
            chunk_id=f"{doc.doc_id}#{n}", doc_id=doc.doc_id, text=piece.page_content, start=start, end=end,
            metadata={"source": doc.source, "title": title, "location": location_of(page, section, last_page),
                      "page": page, "section": section, "format": doc.metadata.get("format")},
        ))
    return chunks
