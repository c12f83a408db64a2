"""Checks on untrusted input: uploaded or pointed-at files, their names, and questions.

Each `check_*` function returns None when the input is fine, else ONE line that names the value,
says what is wrong and how to fix it (ready for a per-file error list or the UI). The `*_or_raise`
style helpers (`decode_text`, `safe_upload_name`, `clean_question`) raise `UnsafeInput` (a
ValueError) with the same kind of line. Nothing here executes or fully parses the content: files are
recognised by their leading bytes (`ingest.formats.sniff`, which uses the `filetype` package) and
checked against the one format table (`ingest.formats.FORMATS`), zip members by their declared sizes,
PDFs through pypdf's cross-reference reader, XML through defusedxml's entity-free parser.

Limits live in `SafetyLimits` (defaults below, `max_file_bytes` from `IngestConfig`); every field
can be overridden with an environment variable LORACLE_<FIELD>, e.g. LORACLE_MAX_FILE_BYTES=104857600.
"""
from __future__ import annotations

import codecs
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ingest.config import IngestConfig
from ingest.formats import (FORMATS, MARKUP_FORMATS, PROSE_FORMATS, content_kind, format_of, looks_utf16, sniff,
                            supported_extensions)


class UnsafeInput(ValueError):
    """Input refused before it reaches a parser or the model; the message is one readable line."""


@dataclass
class SafetyLimits:
    max_file_bytes: int = IngestConfig.max_file_bytes  # one uploaded/ingested file
    max_line_chars: int = 100_000  # longest line in a .txt/.md file (about 15k words with no line break)
    max_unzipped_bytes: int = 200 * 1024 * 1024  # sum of a DOCX's declared member sizes
    max_zip_ratio: float = 100.0  # uncompressed/compressed, for DOCX members over 1 MiB
    max_zip_members: int = 2_000
    max_pdf_pages: int = 2_000
    max_name_bytes: int = 255  # an uploaded file's name, UTF-8 bytes (the usual file system limit)
    max_question_chars: int = 2_000

    @classmethod
    def from_env(cls, config: IngestConfig | None = None) -> "SafetyLimits":
        """Defaults, then `config.max_file_bytes`, then LORACLE_<FIELD> environment variables."""
        limits = cls(max_file_bytes=(config or IngestConfig()).max_file_bytes)
        for f in fields(cls):
            raw = os.environ.get(f"LORACLE_{f.name.upper()}")
            if raw is None:
                continue
            try:
                value = float(raw) if f.type in (float, "float") else int(raw)
            except ValueError:
                raise UnsafeInput(f"LORACLE_{f.name.upper()}='{raw}' is not a number; set it to e.g. "
                                  f"{getattr(limits, f.name)}") from None
            if value <= 0:  # every limit is a size, a count or a ratio
                raise UnsafeInput(f"LORACLE_{f.name.upper()}='{raw}' must be above 0; set it to e.g. "
                                  f"{getattr(limits, f.name)}")
            setattr(limits, f.name, value)
        return limits


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} GB"


# --- text decoding ---------------------------------------------------------------------------
_BAD_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def decode_text(data: bytes, name: str = "text") -> str:
    """Bytes of a text file -> str. UTF-8 (with or without BOM), UTF-16/32 with a BOM or ASCII-heavy
    UTF-16 without one, else Windows-1252/Latin-1. Binary data (NUL bytes, many control
    characters) raises UnsafeInput."""
    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                text = data.decode(enc)
            except UnicodeDecodeError as exc:
                raise UnsafeInput(f"'{name}' starts with a {enc.upper()} byte-order mark but is not valid {enc.upper()} "
                                  f"({exc.reason} at byte {exc.start}); re-save it as UTF-8") from None
            return _refuse_binary(text, name)
    guessed = looks_utf16(data)
    if guessed:
        try:
            return _refuse_binary(data.decode(guessed), name)
        except UnicodeDecodeError:
            pass
    if b"\x00" in data:
        raise UnsafeInput(f"'{name}' contains NUL bytes, so it is binary, not text; upload the original "
                          f"document (PDF, DOCX, HTML, Markdown or text) instead")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    return _refuse_binary(text, name)


def _refuse_binary(text: str, name: str) -> str:
    bad = len(_BAD_CONTROL.findall(text[:200_000]))
    if bad and bad > 0.01 * min(len(text), 200_000):
        raise UnsafeInput(f"'{name}' is binary data, not text ({bad:,} control characters); upload the original "
                          f"document (PDF, DOCX, HTML, Markdown or text) instead")
    return text.replace("\x00", "")


def check_text(text: str, name: str, ext: str = ".txt", limits: SafetyLimits | None = None) -> str | None:
    """Checks on decoded or extracted text: something to index, and no absurdly long line."""
    limits = limits or SafetyLimits.from_env()
    if not text.strip():
        return f"'{name}' has no text to index (empty, only whitespace, or a scanned/image-only document); " \
               f"add a text layer (OCR) or upload a file with text"
    if FORMATS.get(ext.lower()) in PROSE_FORMATS:
        longest = max((len(line) for line in text.splitlines()), default=0)
        if longest > limits.max_line_chars:
            return f"'{name}' has a single line of {longest:,} characters (limit {limits.max_line_chars:,}); it is " \
                   f"probably not prose; add line breaks or raise LORACLE_MAX_LINE_CHARS"
    return None


# --- per-format checks -----------------------------------------------------------------------
def _check_markup(text: str, name: str, fmt: str) -> str | None:
    if re.search(r"<!ENTITY", text, re.IGNORECASE):
        return f"'{name}' declares XML entities (<!ENTITY ...>), which can expand without bound or read local " \
               f"files; remove the DTD and upload it again"
    if fmt == "xml":
        import defusedxml.ElementTree as DET

        try:
            DET.fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", text).encode("utf-8"))  # already decoded
        except DET.ParseError as exc:
            return f"'{name}' is not well-formed XML ({exc}); fix the markup or save it as .txt"
        except Exception as exc:  # defusedxml's DTDForbidden/EntitiesForbidden/ExternalReferenceForbidden
            return f"'{name}' is refused: {type(exc).__name__} ({exc}); remove the DTD and upload it again"
    return None


def _check_pdf(path: Path, name: str, limits: SafetyLimits) -> FileCheck:
    """Opens the PDF with pypdf (once: the reader is handed on to the loader in the FileCheck)."""
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(path, strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except Exception:  # noqa: BLE001 - unsupported or broken encryption: same answer
                opened = 0
            if not opened:
                return FileCheck(f"'{name}' is a password-protected (encrypted) PDF; remove the password "
                                 f"(print or save it without protection) and upload it again")
        pages = len(reader.pages)
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError,
            RecursionError, AssertionError) as exc:
        return FileCheck(f"'{name}' is a corrupt or truncated PDF ({type(exc).__name__}: {str(exc)[:120]}); "
                         f"re-export it from the original application")
    if pages == 0:
        return FileCheck(f"'{name}' is a PDF with no pages; re-export it from the original application")
    if pages > limits.max_pdf_pages:
        return FileCheck(f"'{name}' has {pages:,} pages (limit {limits.max_pdf_pages:,}); split it or raise "
                         f"LORACLE_MAX_PDF_PAGES")
    return FileCheck(None, pdf=reader)


def _check_docx(path: Path, name: str, limits: SafetyLimits) -> str | None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            if len(members) > limits.max_zip_members:
                return f"'{name}' holds {len(members):,} zip members (limit {limits.max_zip_members:,}); a Word " \
                       f"document has a few dozen; re-save it from Word"
            total = sum(m.file_size for m in members)
            if total > limits.max_unzipped_bytes:
                return f"'{name}' would unpack to {human_bytes(total)} (limit {human_bytes(limits.max_unzipped_bytes)}); " \
                       f"this looks like a zip bomb; re-save it from Word or raise LORACLE_MAX_UNZIPPED_BYTES"
            for m in members:
                if m.file_size > 1 << 20 and m.file_size > limits.max_zip_ratio * max(m.compress_size, 1):
                    return f"'{name}' member '{m.filename}' expands {m.file_size / max(m.compress_size, 1):,.0f}x " \
                           f"(limit {limits.max_zip_ratio:,.0f}x); this looks like a zip bomb; re-save it from Word"
            names = {m.filename for m in members}
            if "word/document.xml" not in names:
                return f"'{name}' is a zip archive but not a Word document (no word/document.xml); save it as .docx " \
                       f"from a word processor"
            with zf.open("word/document.xml") as f:
                head = f.read(8192)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, ValueError) as exc:
        return f"'{name}' is a corrupt or truncated DOCX ({type(exc).__name__}: {str(exc)[:120]}); re-save it from Word"
    if re.search(rb"<!(DOCTYPE|ENTITY)", head, re.IGNORECASE):
        return f"'{name}' has a DTD/entity declarations in word/document.xml (Word never writes one); it may " \
               f"expand without bound or read local files; re-save it from Word"
    return None


_FIX = {"pdf": ".pdf", "docx": ".docx", "zip": ".zip (unpack it first)", "ole": ".doc/.xls (save it as .docx)"}


@dataclass
class FileCheck:
    """`reason`: None when the file may go to a loader, else the one-line refusal. `pdf`: the pypdf
    reader the PDF check opened, for `ingest.load.load(path, pdf=...)` to reuse rather than re-parse."""

    reason: str | None
    pdf: Any = None


def check_file(path: str | os.PathLike, limits: SafetyLimits | None = None, name: str | None = None) -> str | None:
    """None if `path` may be handed to a loader, else one line saying why not and what to do.

    `name` is what to call the file in messages (the uploaded name); defaults to the path's name."""
    return screen_file(path, limits, name).reason


def screen_file(path: str | os.PathLike, limits: SafetyLimits | None = None, name: str | None = None) -> FileCheck:
    """`check_file`, also handing back what the checks opened (a PDF's reader) for the loader to reuse."""
    limits = limits or SafetyLimits.from_env()
    path = Path(path)
    name = name or path.name
    fmt = format_of(path)
    reason = _check_stat(path, name, fmt, limits)
    if reason:
        return FileCheck(reason)
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError as exc:
        return FileCheck(f"'{name}' cannot be read ({exc.strerror}); check its permissions")
    reason = _check_content_kind(sniff(head), fmt, path.suffix.lower(), name)
    if reason:
        return FileCheck(reason)
    if fmt == "pdf":
        return _check_pdf(path, name, limits)
    if fmt == "docx":
        return FileCheck(_check_docx(path, name, limits))
    try:
        text = decode_text(path.read_bytes(), name)
    except UnsafeInput as exc:
        return FileCheck(str(exc))
    reason = check_text(text, name, path.suffix.lower(), limits)
    return FileCheck(reason or (_check_markup(text, name, fmt) if fmt in MARKUP_FORMATS else None))


def _check_stat(path: Path, name: str, fmt: str | None, limits: SafetyLimits) -> str | None:
    """A regular file of a supported type, neither empty nor over the size limit."""
    ext = path.suffix.lower()
    try:
        st = path.stat()
    except OSError as exc:
        return f"'{name}' cannot be read ({exc.strerror}); check the path and its permissions"
    if not stat.S_ISREG(st.st_mode):
        return f"'{name}' is not a regular file (a device, pipe, socket or folder); give a document file"
    if fmt is None:
        return f"'{name}' has an unsupported type '{ext or '(no extension)'}'; supported: " \
               f"{', '.join(supported_extensions())}"
    if st.st_size == 0:
        return f"'{name}' is empty (0 bytes); upload a file with content"
    if st.st_size > limits.max_file_bytes:
        return f"'{name}' is {human_bytes(st.st_size)}, over the {human_bytes(limits.max_file_bytes)} limit; split it " \
               f"or raise the limit (IngestConfig.max_file_bytes / LORACLE_MAX_FILE_BYTES)"
    return None


def _check_content_kind(kind: str, fmt: str, ext: str, name: str) -> str | None:
    """The leading bytes (`sniff`) must be what the extension's format promises."""
    if kind == "zip" and fmt == "docx":  # a member other than word/ may come first: the directory decides
        kind = "docx"
    if kind == content_kind(fmt):
        return None
    if kind == "ole" and fmt == "docx":
        return f"'{name}' is a password-protected (encrypted) or old-format Office file, not a .docx; remove " \
               f"the password and save it as .docx"
    hint = f"rename it to {_FIX[kind]}" if kind in _FIX else "upload the original document"
    what = {"text": "plain text", "binary": "unrecognised binary data"}.get(kind, kind.upper())
    return f"'{name}' has extension '{ext}' but its content is {what}; {hint}"


# --- names -----------------------------------------------------------------------------------
_NAME_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def check_filename(name: str, limits: SafetyLimits | None = None) -> str | None:
    """An uploaded file's name as the client sent it: no folders, no control/bidi characters, not too long."""
    limits = limits or SafetyLimits.from_env()
    shown = repr(name[:60] + ("..." if len(name) > 60 else ""))
    if not isinstance(name, str) or not name.strip():
        return "the upload has no file name; give the file a name such as notes.txt"
    if "\x00" in name:
        return f"file name {shown} contains a NUL byte; rename the file"
    if "/" in name or "\\" in name or name.strip() in {".", ".."}:
        return f"file name {shown} contains a path (/, \\ or ..); upload the file itself under a plain name"
    if _NAME_BAD.search(name):
        return f"file name {shown} contains control or text-direction characters; rename the file"
    if len(name.encode("utf-8")) > limits.max_name_bytes:
        return f"file name {shown} is {len(name.encode('utf-8'))} bytes long (limit {limits.max_name_bytes}); " \
               f"rename the file"
    return None


def safe_upload_name(original: str, data: bytes, limits: SafetyLimits | None = None) -> tuple[str, str]:
    """(stored_name, display_name) for an upload. The stored name is rebuilt from a whitelist: the stem
    folded to ASCII with anything but [A-Za-z0-9._-] turned into '-' (so `notes.txt` stays `notes.txt`,
    its doc id stays `notes` and a changed re-upload replaces it), `upload-<sha256[:10]>` when nothing
    is left; the extension lower-cased. The display name is the checked original, kept as metadata."""
    import hashlib

    reason = check_filename(original, limits)
    if reason:
        raise UnsafeInput(reason)
    display = unicodedata.normalize("NFC", original.strip())
    stem, ext = os.path.splitext(display)
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_stem).strip("-._")[:100].strip("-._")
    slug = slug or f"upload-{hashlib.sha256(data).hexdigest()[:10]}"
    ext = ext.lower() if re.fullmatch(r"\.[a-z0-9]{1,10}", ext.lower()) else ""
    return f"{slug}{ext}", display


# --- questions -------------------------------------------------------------------------------
_Q_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def check_question(question: str, limits: SafetyLimits | None = None) -> str | None:
    limits = limits or SafetyLimits.from_env()
    if not isinstance(question, str):
        return f"the question must be text, not {type(question).__name__}"
    cleaned = _Q_CONTROL.sub(" ", question).strip()
    if not cleaned:
        return "empty question (nothing but spaces or control characters); type a question to ask"
    if len(cleaned) > limits.max_question_chars:
        return f"the question is {len(cleaned):,} characters long (limit {limits.max_question_chars:,}); shorten it " \
               f"or raise LORACLE_MAX_QUESTION_CHARS"
    return None


def clean_question(question: str, limits: SafetyLimits | None = None) -> str:
    """The question with control and text-direction characters removed and spaces collapsed; raises
    UnsafeInput when nothing is left or it is too long."""
    reason = check_question(question, limits)
    if reason:
        raise UnsafeInput(reason)
    text = unicodedata.normalize("NFC", _Q_CONTROL.sub(" ", question))
    return re.sub(r"[ \t]+", " ", re.sub(r"\s*\n\s*", "\n", text)).strip()


# --- uploads ---------------------------------------------------------------------------------
@dataclass
class StagedUploads:
    paths: list[Path]  # files written under generated names, checked, ready for ingest_paths
    shown: dict[str, str]  # stored path -> the name the user uploaded (sanitised; metadata only)
    rejected: list[tuple[str, str]]  # (uploaded name, one-line reason)


def stage_uploads(files, folder: str | os.PathLike, limits: SafetyLimits | None = None) -> StagedUploads:
    """Write uploaded `(name, bytes)` pairs into `folder` (a fresh temp folder) under safe names, refusing (with a
    reason, and without writing) the ones whose name, size or content is not acceptable. The UI calls
    this, then `ingest.pipeline.ingest_paths(staged.paths, ...)`."""
    limits = limits or SafetyLimits.from_env()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged = StagedUploads([], {}, [])
    for name, data in files:
        shown_name = repr(name) if isinstance(name, str) and _NAME_BAD.search(name) else str(name)
        try:
            stored, shown = safe_upload_name(name, data, limits)
        except UnsafeInput as exc:
            staged.rejected.append((shown_name, str(exc)))
            continue
        if len(data) > limits.max_file_bytes:
            staged.rejected.append((shown, f"'{shown}' is {human_bytes(len(data))}, over the "
                                    f"{human_bytes(limits.max_file_bytes)} limit; split it or raise the limit "
                                    f"(IngestConfig.max_file_bytes / LORACLE_MAX_FILE_BYTES)"))
            continue
        path = folder / stored
        if path.exists():
            staged.rejected.append((shown, f"'{shown}' is a second file stored as '{stored}' in this upload; only "
                                    f"the first is added; rename one and upload it again"))
            continue
        path.write_bytes(data)
        reason = check_file(path, limits, name=shown)
        if reason:
            path.unlink()
            staged.rejected.append((shown, reason))
            continue
        staged.paths.append(path)
        staged.shown[str(path)] = shown
    return staged
