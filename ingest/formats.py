"""What files ingestion reads and how their content is recognised: the one format table.

`FORMATS` maps a file extension to the format name the loaders use (and record as
`metadata["format"]`); `sniff` says what a file's leading bytes are. Both `ingest.load` (which loader
to run) and `ingest.safety` (does the content match the name?) decide from these, so the two can
never disagree about what is supported.
"""
from __future__ import annotations

import codecs
import re
from pathlib import Path

FORMATS = {
    ".pdf": "pdf", ".docx": "docx", ".html": "html", ".htm": "html", ".md": "md", ".markdown": "md",
    ".txt": "txt", ".text": "txt", ".xml": "xml", ".jsonl": "jsonl",
}
BINARY_FORMATS = {"pdf", "docx"}  # recognised by their leading bytes; every other format is text
MARKUP_FORMATS = {"html", "xml"}  # screened for entity declarations before a parser sees them
PROSE_FORMATS = {"txt", "md"}  # line-length checked: markup is often minified onto one line, prose is not


def supported_extensions() -> list[str]:
    return sorted(FORMATS)


def format_of(path: str | Path) -> str | None:
    """The format named by the file's extension (case-insensitive), None when unsupported."""
    return FORMATS.get(Path(path).suffix.lower())


def content_kind(fmt: str) -> str:
    """What `sniff` must say for a file of format `fmt`: 'pdf', 'docx', or 'text'."""
    return fmt if fmt in BINARY_FORMATS else "text"


def sniff(head: bytes) -> str:
    """What the leading bytes say the file is: 'pdf', 'docx', 'zip', 'ole' (old Office or an
    encrypted Office file), another binary format's extension (from `filetype`), 'text' or 'empty'."""
    import filetype

    if not head:
        return "empty"
    at = head.find(b"%PDF-", 0, 1024)  # the PDF spec allows junk before the header
    if at == 0 or (at > 0 and (not head[:at].strip() or b" obj" in head)):
        return "pdf"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "ole"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "docx" if b"word/" in head else "zip"
    if head.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "text"
    kind = filetype.guess(head)
    if kind is not None:
        return kind.extension
    if looks_utf16(head) is None and (b"\x00" in head or len(re.findall(rb"[\x01-\x08\x0e-\x1f]", head)) > 0.1 * len(head)):
        return "binary"
    return "text"


def looks_utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM: ASCII-heavy text has a zero in every other byte."""
    sample = data[:4096]
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.05 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.4 * len(even) and odd.count(0) < 0.05 * len(odd):
        return "utf-16-be"
    return None
