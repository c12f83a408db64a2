"""Every generated hostile file/name goes through the UI upload path and the CLI: each gets a clear
one-line refusal, nothing crashes, and the existing index is byte-for-byte unchanged.

UI upload path: the Documents page itself (Streamlit AppTest), and the two calls it makes,
`ingest.safety.stage_uploads` (safe stored names, checks) then `ingest.pipeline.ingest_paths`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.safety import stage_uploads
from tests.hostile.generate import generate, generate_good

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    return out, generate(out)


@pytest.fixture(scope="module")
def base_index(tmp_path_factory, shared_data):
    from ingest.pipeline import ingest_paths

    root = tmp_path_factory.mktemp("indexes")
    docs = sorted((shared_data / "sample" / "docs").glob("*.txt"))[:3] + sorted(
        (shared_data / "sample" / "docs").glob("*.md"))[:1]
    report = ingest_paths(docs, index=root / "base")
    assert len(report.added) == 4 and not report.rejected
    return root / "base"


def snapshot(index: Path) -> dict:
    from ingest.index import Index

    ix = Index.open(index)
    try:
        docs = [(d["doc_id"], d["sha256"], d["chunks"]) for d in ix.documents()]
        n = len(ix)
    finally:
        ix.close()
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(index.iterdir())
             if p.name in ("manifest.json", "index.faiss")}
    return {"docs": docs, "vectors": n, "files": files}


def _one_line(reason: str) -> bool:
    return bool(reason) and "\n" not in reason and "Traceback" not in reason and len(reason) < 400


def test_ui_upload_path_refuses_every_case_and_leaves_the_index_unchanged(corpus, base_index, tmp_path):
    from ingest.pipeline import ingest_paths

    out, cases = corpus
    before = snapshot(base_index)
    verdicts: dict[str, str] = {}
    staged_paths, by_path = [], {}
    for case in cases:
        if not case.get("upload", True):
            continue
        staged = stage_uploads([(case["upload_name"], (out / case["file"]).read_bytes())], tmp_path / "staged")
        if staged.rejected:
            verdicts[case["file"]] = staged.rejected[0][1]
        else:
            staged_paths += staged.paths
            by_path[str(staged.paths[0])] = case["file"]
    report = ingest_paths(staged_paths, index=base_index)  # one batch, as the page sends it
    assert report.added == [] and report.chunks_added == 0
    for path, reason in report.rejected:
        verdicts[by_path[path]] = reason
    uploadable = [c for c in cases if c.get("upload", True)]
    assert len(uploadable) >= 60
    for case in uploadable:
        reason = verdicts.get(case["file"])
        assert reason is not None, f"{case['file']} ({case['upload_name']!r}) was not refused"
        assert _one_line(reason) and case["expect"].lower() in reason.lower(), (case, reason)
    assert snapshot(base_index) == before
    assert sorted((tmp_path / "staged").iterdir()) == sorted(staged_paths)  # refused uploads are not kept


def test_good_files_in_a_hostile_batch_still_go_in(corpus, base_index, tmp_path):
    from ingest.pipeline import ingest_paths

    out, cases = corpus
    index = tmp_path / "copy"
    shutil.copytree(base_index, index)
    files = [(c["upload_name"], (out / c["file"]).read_bytes()) for c in cases[:20]]
    files.insert(7, ("Clinic notes (v2).txt", b"Cold chain storage of vaccines.\n" * 20))
    staged = stage_uploads(files, tmp_path / "staged")
    assert len(staged.paths) == 1 and staged.paths[0].name == "Clinic-notes-v2.txt"
    assert staged.shown[str(staged.paths[0])] == "Clinic notes (v2).txt"
    report = ingest_paths(staged.paths, index=index)
    assert len(report.added) == 1 and not report.rejected
    assert len(snapshot(index)["docs"]) == len(snapshot(base_index)["docs"]) + 1


def test_odd_encodings_are_ingested_with_the_right_text(tmp_path):
    from ingest.index import Index
    from ingest.pipeline import ingest_paths

    expected = generate_good(tmp_path / "good")
    report = ingest_paths([tmp_path / "good"], index=tmp_path / "enc")
    assert not report.rejected, report.rejected
    ix = Index.open(tmp_path / "enc")
    try:
        texts = {c.doc_id: c.text for _, c in ix.iter_chunks()}
    finally:
        ix.close()
    for name, text in expected.items():
        assert " ".join(text.split()) in " ".join(texts[Path(name).stem].split()), name


def test_cli_refuses_every_case_and_leaves_the_index_unchanged(corpus, base_index):
    out, cases = corpus
    before = snapshot(base_index)
    cli_cases = [c for c in cases if c["cli"]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "ingest", *[str(out / c["file"]) for c in cli_cases],
                           "--index", str(base_index)], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    assert proc.returncode in (0, 1, 2), proc.returncode
    lines = text.splitlines()
    for case in cli_cases:
        hits = [ln for ln in lines if case["file"] in ln and case["expect"].lower() in ln.lower()]
        assert hits, f"no refusal line for {case['file']} (expected '{case['expect']}'):\n" + text[-3000:]
    assert snapshot(base_index) == before
    assert json.loads((base_index / "manifest.json").read_text())["counts"]["documents"] == 4


def test_size_limit_follows_the_config_then_the_environment(tmp_path, monkeypatch):
    from ingest.config import IngestConfig
    from ingest.pipeline import ingest_paths

    f = tmp_path / "notes.txt"
    f.write_text("Vaccines must be kept cold.\n" * 80)  # 2,240 bytes
    report = ingest_paths([f], index=tmp_path / "a", config=IngestConfig(max_file_bytes=1000))
    assert report.added == [] and "over the 1,000 bytes limit" in report.rejected[0][1]
    monkeypatch.setenv("LORACLE_MAX_FILE_BYTES", "10000")  # the environment overrides the config
    assert ingest_paths([f], index=tmp_path / "b", config=IngestConfig(max_file_bytes=1000)).added == ["notes"]


def test_documents_page_refuses_every_uploaded_case(corpus, tiny_model_dir, tmp_path, monkeypatch):
    """The real Streamlit page (AppTest): all hostile uploads in one go; one row per file with its
    reason, no exception, the index unchanged."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from ingest.safety import _NAME_BAD
    from tests.ui_setup import INDEX, build_ui_home

    out, cases = corpus
    for key, value in build_ui_home(tiny_model_dir, tmp_path / "ui").items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    index = Path(os.environ["LORACLE_INDEXES"]) / INDEX
    before = snapshot(index)
    uploads = [c for c in cases if c.get("upload", True)]
    at = AppTest.from_file(str(REPO / "app" / "ui" / "pages" / "3_Documents.py"), default_timeout=120)
    at.run()
    at.file_uploader(key="uploads").set_value(
        [(c["upload_name"], (out / c["file"]).read_bytes(), "application/octet-stream") for c in uploads])
    at.run()
    at.button(key="add_docs").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error and f"{len(uploads)} file(s) rejected" in at.error[0].value
    table = at.dataframe[0].value
    rows = list(zip(table["file"], table["reason"]))
    for case in uploads:
        name = case["upload_name"]
        shown = repr(name) if _NAME_BAD.search(name) else name
        hits = [r for f, r in rows if f == shown and case["expect"].lower() in r.lower() and _one_line(r)]
        assert hits, (case, [r for f, r in rows if f == shown])
    assert snapshot(index) == before
    st.cache_resource.clear()
