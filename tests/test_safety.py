"""ingest.safety on the generated hostile corpus and on odd-but-valid files (no model, no index)."""
from __future__ import annotations

import json

import pytest

from ingest.safety import (
    SafetyLimits,
    UnsafeInput,
    check_file,
    check_filename,
    check_question,
    check_text,
    clean_question,
    decode_text,
    safe_upload_name,
    sniff,
)
from tests.hostile.generate import generate, generate_good


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    return out, generate(out)


def test_corpus_has_at_least_60_cases(hostile):
    out, cases = hostile
    assert len(cases) >= 60
    assert json.loads((out / "cases.json").read_text()) == cases
    assert len({c["file"] for c in cases}) == len(cases)


def test_every_check_stage_case_is_refused_with_its_reason(hostile):
    out, cases = hostile
    for case in cases:
        if case["stage"] == "check":
            reason = check_file(out / case["file"])
        elif case["stage"] == "name":
            reason = check_filename(case["upload_name"])
        else:
            continue
        assert reason, f"{case['file']} was accepted"
        assert case["expect"].lower() in reason.lower(), (case, reason)
        assert "\n" not in reason and len(reason) < 400
        shown = case["upload_name"] if case["stage"] == "check" else None
        if shown:
            assert shown in reason  # names the value


def test_load_stage_cases_pass_the_byte_checks_and_the_text_check_refuses_empty(hostile):
    out, cases = hostile
    for case in cases:
        if case["stage"] == "load":
            assert check_file(out / case["file"]) is None, case
    assert "no text" in check_text("  \n\t ", "x.pdf", ".pdf")


def test_odd_encodings_decode_and_pass(tmp_path):
    expected = generate_good(tmp_path)
    for name, text in expected.items():
        assert check_file(tmp_path / name) is None, name
        assert decode_text((tmp_path / name).read_bytes(), name) == text, name


def test_valid_documents_pass(tmp_path, shared_data):
    from tests.hostile.generate import _docx, _pdf

    (tmp_path / "ok.pdf").write_bytes(_pdf())
    (tmp_path / "ok.docx").write_bytes(_docx())
    (tmp_path / "owner_only.pdf").write_bytes(_pdf(owner_only=True))  # opens without a password
    import io
    import os
    import zipfile

    buf = io.BytesIO()  # a DOCX whose first member is a large thumbnail: "word/" is not in the first 8 KB
    with zipfile.ZipFile(buf, "w") as z, zipfile.ZipFile(io.BytesIO(_docx())) as src:
        z.writestr("docProps/preview.bin", os.urandom(20000))
        for item in src.infolist():
            z.writestr(item.filename, src.read(item.filename))
    (tmp_path / "thumb_first.docx").write_bytes(buf.getvalue())
    for p in list(tmp_path.iterdir()) + sorted((shared_data / "sample" / "docs").iterdir()):
        assert check_file(p) is None, p
    for p in sorted((shared_data / "sample" / "medquad" / "docs").iterdir()):
        assert check_file(p) is None, p


def test_size_limit_is_configurable(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    p.write_text("hello world\n" * 100)
    assert check_file(p) is None
    reason = check_file(p, SafetyLimits(max_file_bytes=1000))
    assert "over the 1,000 bytes limit" in reason and "LORACLE_MAX_FILE_BYTES" in reason
    monkeypatch.setenv("LORACLE_MAX_FILE_BYTES", "1000")
    assert SafetyLimits.from_env().max_file_bytes == 1000
    assert "limit" in check_file(p)
    monkeypatch.setenv("LORACLE_MAX_FILE_BYTES", "lots")
    with pytest.raises(UnsafeInput, match="LORACLE_MAX_FILE_BYTES='lots'"):
        SafetyLimits.from_env()


def test_sniff():
    assert sniff(b"") == "empty"
    assert sniff(b"%PDF-1.4 ...") == "pdf"
    assert sniff("héllo wörld".encode()) == "text"
    assert sniff("中文文本，医学问题。".encode() * 20) == "text"
    assert sniff("utf16 text".encode("utf-16-le")) == "text"
    assert sniff(bytes(range(256))) == "binary"
    assert sniff(b"Notes on the %PDF-1.7 header and on file formats in general.") == "text"
    assert sniff(b"\n\n%PDF-1.4\n1 0 obj") == "pdf"


def test_safe_upload_name():
    stored, shown = safe_upload_name("Résumé of trial (final).PDF", b"data")
    assert stored == "Resume-of-trial-final.pdf" and shown == "Résumé of trial (final).PDF"
    assert safe_upload_name("pubmed-123_v2.txt", b"a")[0] == "pubmed-123_v2.txt"  # same doc id as from the CLI
    assert safe_upload_name(".bashrc.txt", b"a")[0] == "bashrc.txt"  # no hidden files
    assert safe_upload_name("名前.txt", b"a")[0].startswith("upload-")
    assert safe_upload_name("名前.txt", b"a")[0] != safe_upload_name("名前.txt", b"b")[0]
    for bad in ("../../x.txt", "a\x00.txt", "a" * 300 + ".txt", "", "a\u202e.txt"):
        with pytest.raises(UnsafeInput):
            safe_upload_name(bad, b"a")


@pytest.mark.parametrize(
    "question, expect",
    [("", "empty"), ("   \n\t", "empty"), ("\x00\x01\x1b", "empty"), ("x" * 2001, "2,001 characters"),
     (None, "must be text")],
)
def test_bad_questions(question, expect):
    reason = check_question(question)
    assert reason and expect in reason
    with pytest.raises(UnsafeInput):
        clean_question(question)


def test_clean_question_strips_controls():
    assert clean_question("  Is\x00 aspirin\x1b safe?\u202e \r\n ") == "Is aspirin safe?"
    assert clean_question("line one\n\n  line two") == "line one\nline two"
    assert check_question("x" * 2001, SafetyLimits(max_question_chars=5000)) is None
