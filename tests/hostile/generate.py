"""Generate the hostile-upload corpus: files and upload names that must each be refused with a clear
one-line reason, without crashing and without touching an existing index.

    python tests/hostile/generate.py OUT_DIR      # writes OUT_DIR/<case files> and OUT_DIR/cases.json

Everything is made here from a seed (no checked-in binaries). `cases.json` lists one entry per case:
  file         the file on disk (relative to OUT_DIR)
  upload_name  the name a browser would send for it (differs from `file` for hostile-name cases)
  expect       a word the refusal reason must contain (case-insensitive)
  cli          whether the case can be given to `loracle ingest` (hostile names exist only in uploads)
  stage        "check": ingest.safety.check_file refuses it; "name": check_filename refuses the upload name;
               "load": well-formed but no text comes out, refused after loading (check_text)
  upload       absent or true when the UI upload path can receive it (pipes and devices cannot be uploaded)
`generate_good(OUT_DIR)` writes odd-but-valid files (UTF-16, BOMs, Latin-1) that must be accepted.
"""
from __future__ import annotations

import io
import json
import os
import random
import sys
import zipfile
from pathlib import Path

PROSE = ("Programmed cell death is a regulated process in multicellular organisms. "
         "This study examined whether vaccine storage in community clinics met cold chain guidelines. ") * 4
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00>\x00"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 44 + b"PE\x00\x00"
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
SQLITE = b"SQLite format 3\x00" + b"\x10\x00\x01\x01\x00@  " + b"\x00" * 80
PICKLE = b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x02id\x94\x85\x94R\x94."


def _pdf(text: str | None = PROSE, password: str | None = None, owner_only: bool = False) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    if password is not None or owner_only:
        pdf.set_encryption(owner_password="owner-secret", user_password=None if owner_only else password)
    pdf.add_page()
    if text:
        pdf.set_font("helvetica", size=11)
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def _zero_page_pdf() -> bytes:
    from pypdf import PdfWriter

    buf = io.BytesIO()
    PdfWriter().write(buf)
    return buf.getvalue()


def _docx(text: str = PROSE) -> bytes:
    import docx

    d = docx.Document()
    d.add_paragraph(text)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def _rezip(base: bytes, replace: dict[str, bytes] | None = None, drop: set[str] = frozenset(),
           extra: dict[str, bytes] | None = None, level: int = 6) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(base))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as dst:
        for item in src.infolist():
            if item.filename in drop:
                continue
            dst.writestr(item.filename, (replace or {}).get(item.filename, src.read(item.filename)))
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return out.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def _document_xml(body: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + body).encode()


LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
          + "".join(f' <!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">\n' for i in range(1, 10))
          + ']>\n<lolz>&lol9;</lolz>\n')
XXE = '<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<r>&x;</r>\n'


def _cases(rng: random.Random) -> list[tuple[str, bytes | None, str, str | None]]:
    """(file name, content or None for special files, expected word, upload name or None)."""
    pdf = _pdf()
    docx = _docx()
    half = lambda b: b[: len(b) // 2]  # noqa: E731
    rand = lambda n: bytes(rng.getrandbits(8) for _ in range(n))  # noqa: E731
    rand_no_nul = bytes((rng.getrandbits(8) or 1) for _ in range(4000))
    big_doc = b"<w:t>" + b"A" * (30 << 20) + b"</w:t>"
    c: list[tuple[str, bytes | None, str, str | None]] = [
        # empty / whitespace
        ("empty.txt", b"", "empty", None),
        ("empty.md", b"", "empty", None),
        ("empty.html", b"", "empty", None),
        ("empty.pdf", b"", "empty", None),
        ("empty.docx", b"", "empty", None),
        ("whitespace.txt", b" \n\t\n   \r\n" * 50, "no text", None),
        ("bom_only.txt", b"\xef\xbb\xbf", "no text", None),
        ("utf16_bom_only.md", b"\xff\xfe", "no text", None),
        # content does not match the extension
        ("pdf_renamed.txt", pdf, "PDF", None),
        ("docx_renamed.md", docx, "DOCX", None),
        ("png_renamed.txt", PNG + rand(200), "PNG", None),
        ("jpeg_renamed.html", JPEG + rand(200), "JPG", None),
        ("elf_renamed.txt", ELF + rand(300), "ELF", None),
        ("exe_renamed.md", EXE + rand(300), "EXE", None),
        ("gzip_renamed.txt", b"\x1f\x8b\x08\x00" + rand(300), "GZ", None),
        ("sqlite_renamed.txt", SQLITE + rand(200), "SQLITE", None),
        ("zip_renamed.xml", _zip({"a.txt": b"hello"}), "ZIP", None),
        ("text_renamed.pdf", PROSE.encode(), "plain text", None),
        ("html_renamed.pdf", b"<html><body><p>" + PROSE.encode() + b"</p></body></html>", "plain text", None),
        ("text_renamed.docx", PROSE.encode(), "plain text", None),
        ("pdf_renamed.docx", pdf, "PDF", None),
        ("docx_renamed.pdf", docx, "DOCX", None),
        ("plain_zip.docx", _zip({"notes.txt": PROSE.encode()}), "zip", None),
        ("encrypted_office.docx", OLE + rand(1000), "password", None),
        ("random.pdf", rand(3000), "pdf", None),
        ("random.docx", rand(3000), "docx", None),
        # unsupported types
        ("program.exe", EXE + rand(100), "unsupported", None),
        ("model.pkl", PICKLE, "unsupported", None),
        ("legacy.doc", OLE + rand(1000), "unsupported", None),
        ("script.sh", b"#!/bin/sh\nrm -rf /\n", "unsupported", None),
        ("README", PROSE.encode(), "unsupported", None),
        ("report.pdf.exe", EXE, "unsupported", None),
        # binary renamed text, broken encodings
        ("nul_bytes.txt", PROSE.encode()[:200] + b"\x00\x00\x01\x02" + PROSE.encode()[:200], "NUL", None),
        ("random_bytes.txt", rand(4000), "binary", None),
        ("random_no_nul.md", rand_no_nul, "binary", None),
        ("control_chars.txt", bytes(rng.choice(list(range(1, 9)) + [0x0e, 0x1b, 0x7f]) for _ in range(3000)), "binary", None),
        ("utf16_bom_broken.txt", b"\xff\xfe" + "ok".encode("utf-16-le") + b"\x00\xd8\x41", "UTF-16", None),
        ("binary.xml", b"\x00\x01\x02\x03" * 500, "binary", None),
        # huge single lines
        ("huge_line.txt", ("word " * 60_000).encode(), "single line", None),
        ("huge_token.md", b"x" * 300_000, "single line", None),
        # PDF
        ("encrypted.pdf", _pdf(password="user-secret"), "password", None),
        ("truncated.pdf", half(pdf), "corrupt", None),
        ("header_only.pdf", b"%PDF-1.7\n" + rand(2000), "corrupt", None),
        ("zero_pages.pdf", _zero_page_pdf(), "no pages", None),
        ("blank_page.pdf", _pdf(text=None), "no text", None),
        # DOCX
        ("zip_bomb_ratio.docx", _rezip(docx, replace={"word/document.xml": big_doc}, level=9), "zip bomb", None),
        ("zip_bomb_total.docx", _rezip(docx, extra={f"word/media/pad{i}.bin": b"\x00" * (20 << 20) for i in range(12)},
                                       level=9), "zip bomb", None),
        ("zip_many_members.docx", _rezip(docx, extra={f"customXml/pad{i}.xml": b"<a/>" for i in range(2100)}),
         "members", None),
        ("no_document_xml.docx", _rezip(docx, drop={"word/document.xml"}), "not a Word document", None),
        ("truncated.docx", half(docx), "corrupt", None),
        ("bad_central_dir.docx", docx[:-22] + b"\x00" * 22, "corrupt", None),
        ("laughs.docx", _rezip(docx, replace={"word/document.xml": LAUGHS.encode()}), "DTD", None),
        ("xxe.docx", _rezip(docx, replace={"word/document.xml": XXE.encode()}), "DTD", None),
        ("empty_body.docx", _rezip(docx, replace={"word/document.xml": _document_xml(
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body/></w:document>')}),
         "no text", None),
        # markup
        ("billion_laughs.xml", LAUGHS.encode(), "entit", None),
        ("xxe.xml", XXE.encode(), "entit", None),
        ("xxe.html", ('<!DOCTYPE html [<!ENTITY x SYSTEM "file:///etc/passwd">]><html><body><p>&x; '
                      + PROSE + "</p></body></html>").encode(), "entit", None),
        ("malformed.xml", b"<?xml version='1.0'?>\n<doc><a>unclosed<b></a></doc>", "well-formed", None),
        ("script_only.html", b"<html><head><script>alert(1)</script><style>p{}</style></head><body></body></html>",
         "no text", None),
        ("empty_tags.html", b"<!DOCTYPE html><html><head><title></title></head><body><div></div></body></html>",
         "no text", None),
        # too large (sparse: costs no disk and is refused before it is read)
        ("too_big.txt", None, "limit", None),
        ("too_big.pdf", None, "limit", None),
    ]
    # hostile names on good content: only an upload can carry them (the browser sends the name)
    good = PROSE.encode()
    c += [
        ("name_traversal.txt", good, "path", "../../etc/cron.d/evil.txt"),
        ("name_windows_traversal.txt", good, "path", "..\\..\\windows\\win.ini.txt"),
        ("name_absolute.txt", good, "path", "/etc/passwd.txt"),
        ("name_dotdot.txt", good, "path", ".."),
        ("name_nul.txt", good, "NUL", "notes\x00.txt"),
        ("name_nul_ext.txt", good, "NUL", "notes.txt\x00.exe"),
        ("name_control.txt", good, "control", "\x1b[31mred.txt"),
        ("name_newline.txt", good, "control", "notes\n.txt"),
        ("name_bidi.txt", good, "direction", "notes\u202etxt.exe.txt"),
        ("name_long_ascii.txt", good, "long", "a" * 300 + ".txt"),
        ("name_long_utf8.txt", good, "long", "名前" * 50 + ".txt"),
        ("name_empty.txt", good, "no file name", ""),
        ("name_spaces.txt", good, "no file name", "   "),
    ]
    return c


# refused only once loaded: the file is well-formed but no text comes out of it
LOAD_STAGE = {"blank_page.pdf", "empty_body.docx", "script_only.html", "empty_tags.html"}


def generate(out: str | os.PathLike, seed: int = 0, max_file_bytes: int | None = None) -> list[dict]:
    """Write every case under `out` and `out/cases.json`; returns the case list."""
    from ingest.config import IngestConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    limit = max_file_bytes or IngestConfig().max_file_bytes
    cases = []
    for fname, data, expect, upload_name in _cases(random.Random(seed)):
        path = out / fname
        if data is None:  # sparse file just over the limit
            with open(path, "wb") as f:
                f.write(b"%PDF-1.7\n" if fname.endswith(".pdf") else b"text ")
                f.truncate(limit + 1)
        else:
            path.write_bytes(data)
        stage = "name" if upload_name is not None else "load" if fname in LOAD_STAGE else "check"
        cases.append({"file": fname, "upload_name": upload_name if upload_name is not None else fname,
                      "expect": expect, "cli": upload_name is None, "stage": stage})
    fifo = out / "fifo.txt"  # a pipe would hang a loader that opened it
    if hasattr(os, "mkfifo") and not fifo.exists():
        os.mkfifo(fifo)
    if fifo.exists():
        cases.append({"file": "fifo.txt", "upload_name": "fifo.txt", "expect": "regular file", "cli": True,
                      "stage": "check", "upload": False})
    dev = out / "dev_zero.txt"
    if not dev.exists() and Path("/dev/zero").exists():
        dev.symlink_to("/dev/zero")
    if dev.exists():
        cases.append({"file": "dev_zero.txt", "upload_name": "dev_zero.txt", "expect": "regular file", "cli": True,
                      "stage": "check", "upload": False})
    (out / "cases.json").write_text(json.dumps(cases, indent=1, ensure_ascii=True))
    return cases


GOOD_TEXT = "Café au lait — naïve résumé: 5 µg/kg, β-blocker ≥ 2 doses."


def generate_good(out: str | os.PathLike) -> dict[str, str]:
    """Odd encodings that must be accepted; returns {file name: the text it must decode to}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    latin = "Café au lait, naïve résumé: 5 µg/kg, ± 2 doses."
    files = {
        "utf8_bom.txt": (b"\xef\xbb\xbf" + GOOD_TEXT.encode("utf-8"), GOOD_TEXT),
        "utf16le_bom.txt": (b"\xff\xfe" + GOOD_TEXT.encode("utf-16-le"), GOOD_TEXT),
        "utf16be_bom.md": (b"\xfe\xff" + GOOD_TEXT.encode("utf-16-be"), GOOD_TEXT),
        "utf16le_no_bom.txt": (GOOD_TEXT.encode("utf-16-le"), GOOD_TEXT),
        "latin1.txt": (latin.encode("latin-1"), latin),
        "cp1252.md": ("Smart “quotes” – and ‘dashes’ … 5 €".encode("cp1252"), "Smart “quotes” – and ‘dashes’ … 5 €"),
        "crlf.txt": (b"line one\r\nline two\r\n", "line one\r\nline two\r\n"),
    }
    for name, (data, _) in files.items():
        (out / name).write_bytes(data)
    return {name: text for name, (_, text) in files.items()}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    made = generate(sys.argv[1])
    print(f"wrote {len(made)} hostile cases to {sys.argv[1]}")
