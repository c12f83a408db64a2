"""The full pipeline with real files, the real MiniLM embedder and real FAISS / Milvus (milvus-lite):
incremental ingest, remove, reopen, bad input, locking, atomic/consistent on-disk state. Store-level
tests run on both vector stores (`store` parameter)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from ingest.config import ChunkConfig, IngestConfig
from ingest.index import Index, IndexLockedError, list_indexes, remove_index
from ingest.pipeline import ensure_default_index, ingest_paths, remove
from ingest.types import Chunk
from tests.test_ingest_load import make_docx

MIXED = ["pubmed-17089900.txt", "pubmed-9854965.md", "pubmed-23386371.html", "pubmed-17220021.pdf"]
MEDQUAD_XML = "medquad-GARD-0000989.xml"


@pytest.fixture()
def docs(tmp_path, shared_data) -> Path:
    """A folder with one file of every supported format (txt, md, html, pdf from sample/docs,
    MedQuAD xml, and a DOCX made here)."""
    d = tmp_path / "docs"
    d.mkdir()
    for name in MIXED:
        shutil.copy(shared_data / "sample" / "docs" / name, d)
    shutil.copy(shared_data / "sample" / "medquad" / "docs" / MEDQUAD_XML, d)
    make_docx(d / "aspirin.docx")
    return d


STORES = ["faiss", "milvus"]


def new_index(target: Path, store: str, **kw) -> Path:
    """An empty index at `target` whose vectors live in `store` (ingest_paths then adds to it)."""
    Index.create(target, store=store, **kw).close()
    return target


def search_docs(index: Index, query: str, k: int = 3) -> list[str]:
    from ingest.embed import get_embedder

    _, ids = index.search(get_embedder(index.embedder).encode([query]), k)
    return [c.doc_id for c in index.get_chunks(ids[0]) if c]


def file_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != ".lock"}


def test_incremental_lifecycle(docs, tmp_path):
    target = tmp_path / "ix"
    first = ingest_paths([docs], index=target)
    assert sorted(first.added) == sorted([Path(n).stem for n in MIXED] + ["medquad-GARD-0000989", "aspirin"])
    assert first.rejected == [] and first.chunks_added >= 6

    ix = Index.open(target)
    manifest = ix.manifest
    assert manifest["embedder"] == {"name": "all-MiniLM-L6-v2", "dim": 384, "normalized": True}
    assert manifest["counts"] == {"documents": 6, "chunks": first.chunks_added} and len(ix) == first.chunks_added
    assert {d["doc_id"]: len(d["sha256"]) for d in manifest["documents"]}["aspirin"] == 64
    before = {c.chunk_id: i for i, c in ix.iter_chunks()}
    ix.close()
    on_disk = file_bytes(target)

    again = ingest_paths([docs], index=target)  # unchanged: no parse, no embedding, no write
    assert again.added == [] and again.chunks_added == 0 and sorted(again.skipped) == sorted(first.added)
    assert file_bytes(target) == on_disk

    txt = docs / "pubmed-17089900.txt"
    txt.write_text(txt.read_text() + "\n\nADDENDUM: Zoledronic acid relieved the bone pain of Paget disease.\n")
    changed = ingest_paths([docs], index=target)
    assert changed.added == ["pubmed-17089900"] and changed.replaced == ["pubmed-17089900"]
    ix = Index.open(target)
    after = {c.chunk_id: i for i, c in ix.iter_chunks()}
    untouched = {k: v for k, v in before.items() if not k.startswith("pubmed-17089900#")}
    assert {k: after[k] for k in untouched} == untouched  # other documents' chunks kept their ids
    assert all(after[k] not in before.values() for k in after if k.startswith("pubmed-17089900#"))
    assert len(ix) == len(after) and ix.manifest["generation"] == 2
    assert search_docs(ix, "zoledronic acid relieved bone pain of Paget disease")[0] == "pubmed-17089900"
    ix.close()

    removed = remove(["pubmed-17220021", "no-such-doc"], index=target)
    assert removed.removed == ["pubmed-17220021"] and removed.rejected[0][0] == "no-such-doc"

    reopened = Index.open(target)  # from disk, in a fresh object
    assert [d["doc_id"] for d in reopened.documents()] == sorted(
        ["aspirin", "medquad-GARD-0000989", "pubmed-17089900", "pubmed-23386371", "pubmed-9854965"])
    assert len(reopened) == sum(d["chunks"] for d in reopened.documents())
    assert "pubmed-17220021" not in search_docs(reopened, "Group B streptococcus carriage in pregnant women", k=10)
    assert search_docs(reopened, "symptoms of anterior polar cataract")[0] == "medquad-GARD-0000989"
    assert search_docs(reopened, "aspirin for tension headache relief")[0] == "aspirin"
    hit = reopened.get_chunks(reopened.search(reopened_vec(reopened, "aspirin relief placebo"), 1)[1][0])[0]
    assert hit.metadata["title"] == "Aspirin and headache" and hit.metadata["source"].endswith("aspirin.docx")
    reopened.close()


def reopened_vec(index: Index, text: str):
    from ingest.embed import get_embedder

    return get_embedder(index.embedder).encode([text])


def test_bad_input_is_rejected_and_the_rest_ingested(docs, tmp_path):
    target = tmp_path / "ix"
    ingest_paths([docs / "pubmed-9854965.md"], index=target)
    on_disk = file_bytes(target)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.txt").write_bytes(b"")
    (bad / "corrupt.pdf").write_bytes(b"%PDF-1.7\n1 0 obj garbage")
    (bad / "binary.txt").write_bytes(bytes(range(256)) * 16)
    (bad / "slides.pptx").write_bytes(b"PK\x03\x04whatever")

    report = ingest_paths([bad], index=target)  # only bad files: the index is not touched at all
    reasons = {Path(p).name: r for p, r in report.rejected}
    assert set(reasons) == {"empty.txt", "corrupt.pdf", "binary.txt", "slides.pptx"}
    # (reasons come from ingest.safety's screening when present, else from ingest.load)
    assert "empty" in reasons["empty.txt"] and "corrupt" in reasons["corrupt.pdf"]
    assert "binary" in reasons["binary.txt"] and "unsupported" in reasons["slides.pptx"] and "'.pptx'" in reasons["slides.pptx"]
    assert all("\n" not in r for r in reasons.values())
    assert file_bytes(target) == on_disk

    shutil.copy(docs / "pubmed-23386371.html", bad)
    mixed = ingest_paths([bad, tmp_path / "missing.txt"], index=target)
    assert mixed.added == ["pubmed-23386371"] and len(mixed.rejected) == 5
    assert ("%s" % (tmp_path / "missing.txt"), "file not found") in mixed.rejected
    ix = Index.open(target)
    assert [d["doc_id"] for d in ix.documents()] == ["pubmed-23386371", "pubmed-9854965"]
    ix.close()


@pytest.mark.parametrize("store", STORES)
def test_second_writer_is_refused_and_failed_writes_roll_back(docs, tmp_path, store):
    target = new_index(tmp_path / "ix", store)
    ingest_paths([docs / "pubmed-9854965.md"], index=target)
    ix = Index.open(target)
    on_disk = file_bytes(target)
    with ix.writer():
        with pytest.raises(IndexLockedError, match="being written by another process"):
            ingest_paths([docs / "pubmed-17089900.txt"], index=target)
    with pytest.raises(RuntimeError, match="boom"):
        with ix.writer() as w:
            w.remove("pubmed-9854965")
            raise RuntimeError("boom")
    assert file_bytes(target) == on_disk and len(ix) > 0 and ix.document("pubmed-9854965")
    ix.close()


def test_faiss_file_out_of_step_is_rebuilt_from_the_store(docs, tmp_path):
    target = tmp_path / "ix"
    ingest_paths([docs / "pubmed-9854965.md", docs / "pubmed-17089900.txt"], index=target)
    (target / "index.faiss").unlink()  # as after a crash between the store commit and the FAISS write
    ix = Index.open(target)
    assert len(ix) == ix.manifest["counts"]["chunks"]
    assert search_docs(ix, "motor neuron disease dementia and aphasia")[0] == "pubmed-9854965"
    ix.close()


def test_embedder_and_settings_are_checked(docs, tmp_path):
    target = tmp_path / "ix"
    cfg = IngestConfig(chunk=ChunkConfig(size=400, overlap=40))
    first = ingest_paths([docs / "pubmed-9854965.md"], index=target, config=cfg)
    with pytest.raises(ValueError, match="built with embedder 'all-MiniLM-L6-v2'.*--embedder all-MiniLM-L6-v2"):
        Index.open(target, embedder="BAAI/bge-small-en-v1.5")
    with pytest.raises(ValueError, match="built with embedder 'all-MiniLM-L6-v2'"):
        ingest_paths([docs / "pubmed-17089900.txt"], index=target, config=IngestConfig(embedder="other-model"))
    # config=None keeps the index's own chunker; a new chunker re-chunks unchanged files
    assert ingest_paths([docs / "pubmed-9854965.md"], index=target).skipped == ["pubmed-9854965"]
    rechunked = ingest_paths([docs / "pubmed-9854965.md"], index=target, config=IngestConfig())
    assert rechunked.replaced == ["pubmed-9854965"] and rechunked.chunks_added < first.chunks_added
    ix = Index.open(target)  # the new chunker is now the index's own: a plain re-run skips, not re-chunks back
    assert (ix.manifest["chunker"]["size"], ix.manifest["chunker"]["overlap"]) == (ChunkConfig().size, ChunkConfig().overlap)
    ix.close()
    assert ingest_paths([docs / "pubmed-9854965.md"], index=target).skipped == ["pubmed-9854965"]


def test_named_indexes_jsonl_corpus_and_default_index(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LORACLE_INDEXES", str(tmp_path / "indexes"))
    monkeypatch.setenv("LORACLE_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "home" / "data" / "pubmedqa" / "corpus.jsonl"
    corpus.parent.mkdir(parents=True)
    shutil.copy(shared_data / "sample" / "corpus.jsonl", corpus)
    seen = []
    path = ensure_default_index(progress=lambda done, total, name: seen.append((done, total)))
    assert path == tmp_path / "indexes" / "pubmedqa" and list_indexes() == ["pubmedqa"]
    assert seen[-1] == (20, 20)
    ix = Index.open("pubmedqa")
    assert ix.manifest["counts"]["documents"] == 20 and 20 <= len(ix) <= 60
    assert ix.document("pubmed-9854965")["metadata"]["year"] == 1998
    mtime = (path / "manifest.json").stat().st_mtime_ns
    ix.close()
    assert ensure_default_index() == path and (path / "manifest.json").stat().st_mtime_ns == mtime
    remove_index("pubmedqa")
    assert list_indexes() == []
    with pytest.raises(ValueError, match="index name"):
        Index.open("bad name!")
    json.loads((tmp_path / "home" / "data" / "pubmedqa" / "corpus.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("store", STORES)
def test_crash_after_store_commit_is_repaired_on_open(docs, tmp_path, store):
    """Simulate a crash after the SQLite commit but before the vector + manifest writes: FAISS gets its
    old file back; the Milvus collection loses the second batch's vectors (its insert never ran)."""
    target = new_index(tmp_path / "ix", store)
    ingest_paths([docs / "pubmed-9854965.md"], index=target)
    old_manifest = (target / "manifest.json").read_bytes()
    old_faiss = (target / "index.faiss").read_bytes() if store == "faiss" else None
    ix = Index.open(target)
    before = set(ix.chunk_ids().tolist())
    ix.close()
    ingest_paths([docs / "pubmed-17089900.txt"], index=target)
    if store == "faiss":
        (target / "index.faiss").write_bytes(old_faiss)
    else:  # undo the second batch's insert in the collection by hand
        ix = Index.open(target)
        ix._vectors._delete([i for i in ix.chunk_ids().tolist() if i not in before])
        ix.close()
    (target / "manifest.json").write_bytes(old_manifest)
    ix = Index.open(target)
    assert search_docs(ix, "zoledronic acid for Paget disease of bone", k=1) == ["pubmed-17089900"]
    assert [d["doc_id"] for d in ix.manifest["documents"]] == ["pubmed-17089900", "pubmed-9854965"]
    assert len(ix) == ix.manifest["counts"]["chunks"] == sum(d["chunks"] for d in ix.documents())
    assert json.loads((target / "manifest.json").read_text())["counts"] == ix.manifest["counts"]
    ix.close()
    assert ingest_paths([docs], index=target).added  # and writing on top of it works


@pytest.mark.parametrize("store", STORES)
def test_hnsw_index_type_supports_replace_and_remove(docs, tmp_path, store):
    target = new_index(tmp_path / "ix", store, index_type="hnsw")
    ingest_paths([docs / "pubmed-9854965.md", docs / "pubmed-17089900.txt", docs / MEDQUAD_XML], index=target)
    assert remove(["pubmed-17089900"], index=target).removed == ["pubmed-17089900"]  # HNSW: rebuilt from the store
    ix = Index.open(target)
    assert ix.manifest["index_type"] == "hnsw" and len(ix) == sum(d["chunks"] for d in ix.documents())
    assert search_docs(ix, "motor neuron disease dementia and aphasia")[0] == "pubmed-9854965"
    assert "pubmed-17089900" not in search_docs(ix, "Paget disease of bone", k=10)
    ix.close()


@pytest.mark.parametrize("store", STORES)
def test_public_api_add_search_remove(tmp_path, store):
    """`from ingest import ingest_paths, Index` is the package's entry point; Index.add/search/remove
    work on their own, without the pipeline."""
    import subprocess
    import sys

    import ingest
    from ingest import Index as PublicIndex
    from ingest import ingest_paths as public_ingest_paths
    from ingest.chunk import chunk
    from ingest.embed import get_embedder
    from ingest.types import Document

    assert PublicIndex is Index and public_ingest_paths is ingest_paths and "ingest_paths" in dir(ingest)
    assert sorted(ingest.__all__) == sorted(ingest._EXPORTS) and all(getattr(ingest, n) for n in ingest.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ingest.nope  # noqa: B018
    lazy = ("import ingest, sys; print(any(m in sys.modules for m in ('ingest.pipeline', 'faiss', 'torch', "
            "'pymilvus')))")
    if store == "faiss":
        assert subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True).stdout.strip() == "False"

    ix = Index.create(tmp_path / "ix", store=store)
    assert ix.store == store
    embedder = get_embedder(ix.embedder)
    doc = Document("note-1", "note-1.txt", "Aspirin relieved tension headache in most adults.", {"title": "Note 1"})
    chunks = chunk(doc)
    ix.add(doc, chunks, embedder.encode([c.text for c in chunks]))
    scores, ids = ix.search(embedder.encode(["does aspirin help a headache?"]), k=3)
    assert [c.doc_id for c in ix.get_chunks(ids[0])] == ["note-1"] and scores[0][0] > 0.5
    assert ix.manifest["counts"] == {"documents": 1, "chunks": 1}
    assert ix.remove("note-1") and not ix.remove("note-1") and len(ix) == 0
    ix.close()


def test_milvus_server_uri_same_code_and_remove_drops_the_collection(docs, tmp_path):
    """An http:// URI talks to a Milvus server: here milvus-lite's own gRPC server in a thread, so the
    client goes over TCP exactly as it would to a Milvus cluster."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread
    from pymilvus import MilvusClient

    server, db, port = start_server_in_thread(str(tmp_path / "server-data"))
    uri = f"http://127.0.0.1:{port}"
    try:
        target = new_index(tmp_path / "ix", "milvus", uri=uri)
        assert ingest_paths([docs / "pubmed-9854965.md", docs / "pubmed-17089900.txt"], index=target).added
        ix = Index.open(target)
        assert ix.manifest["vectors"] == {"store": "milvus", "uri": uri, "collection": "loracle_ix"}
        assert len(ix) == ix.manifest["counts"]["chunks"] and not (target / "vectors.db").exists()
        assert search_docs(ix, "motor neuron disease dementia and aphasia")[0] == "pubmed-9854965"
        ix.close()
        with pytest.raises(FileExistsError, match="already has a collection 'loracle_ix'"):
            Index.create(tmp_path / "elsewhere" / "ix", store="milvus", uri=uri)
        client = MilvusClient(uri=uri)
        assert client.has_collection("loracle_ix")
        remove_index(target)
        assert not client.has_collection("loracle_ix") and not target.exists()
        client.close()
    finally:
        server.stop(grace=0)
        db.close()


def test_bad_store_settings_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="vector store 'qdrant' is not one of .*--store milvus"):
        Index.create(tmp_path / "a", store="qdrant", dim=8)
    with pytest.raises(ValueError, match="only for the Milvus store; add --store milvus"):
        Index.create(tmp_path / "b", uri="x.db", dim=8)
    with pytest.raises(ValueError, match="index type 'ivfpq' is not one of"):
        Index.create(tmp_path / "c", index_type="ivfpq", dim=8)


def test_auto_index_type_goes_ivf_past_the_threshold_and_back(tmp_path, monkeypatch):
    """"auto" is flat below AUTO_ANN_FROM chunks and IVF-SQ8 from there; IVF deletes in place and
    goes back to flat below half the threshold. Random 16-dim vectors, no embedder."""
    import numpy as np

    from ingest import vectors
    from ingest.types import Document

    monkeypatch.setattr(vectors, "AUTO_ANN_FROM", 120)
    rng = np.random.default_rng(0)
    ix = Index.create(tmp_path / "ix", dim=16)
    assert ix.manifest["index_type"] == "auto"

    def add(n_docs: int, start: int) -> None:
        with ix.writer() as w:
            for d in range(start, start + n_docs):
                v = rng.normal(size=(10, 16)).astype("float32")
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                chunks = [Chunk(f"d{d}#{j}", f"d{d}", f"text {d} {j}", 0, 1) for j in range(10)]
                w.put(Document(f"d{d}", "x", "text"), chunks, v)

    add(10, 0)
    assert vectors.faiss_type(ix._vectors.index) == "flat" and len(ix) == 100
    add(3, 10)
    assert vectors.faiss_type(ix._vectors.index) == "ivf" and len(ix) == 130
    ids, vecs = ix.chunk_vectors()
    _, found = ix.search(vecs[:5], k=1)
    assert found[:, 0].tolist() == ids[:5].tolist()  # nprobe >= nlist here: exact
    for d in range(8):  # 130 -> 50 chunks: IVF (deleting in place) down to 60, flat below
        ix.remove(f"d{d}")
        assert vectors.faiss_type(ix._vectors.index) == ("ivf" if len(ix) >= 60 else "flat")
    assert len(ix) == 50 and vectors.faiss_type(ix._vectors.index) == "flat"
    ix.close()
    reopened = Index.open(tmp_path / "ix")
    assert len(reopened) == 50 and reopened.manifest["counts"] == {"documents": 5, "chunks": 50}
    reopened.close()


def test_missing_shipped_index_builds_as_a_background_job(shared_data, tmp_path, monkeypatch):
    """`loracle ui` / `serve` start one job that builds the shipped indexes not built yet, in order; a running
    build (its writer lock held elsewhere) is not started twice, and a built one is not rebuilt."""
    from app.jobs import build_missing_indexes, runner
    from ingest.folders import writer_lock
    from ingest.pipeline import missing_shipped_indexes

    monkeypatch.setenv("LORACLE_INDEXES", str(tmp_path / "indexes"))
    monkeypatch.setenv("LORACLE_HOME", str(tmp_path / "home"))
    assert missing_shipped_indexes() == []  # no corpus here: nothing to build
    folder = tmp_path / "home" / "data" / "medquad"
    folder.mkdir(parents=True)
    lines = (shared_data / "sample" / "medquad" / "corpus.jsonl").read_text().splitlines(keepends=True)
    (folder / "corpus-1.jsonl").write_text("".join(lines[:2]))
    assert missing_shipped_indexes() == []  # one part alone: not the shipped corpus
    (folder / "corpus-2.jsonl").write_text("".join(lines[2:]))
    assert missing_shipped_indexes() == ["medquad"]
    with writer_lock(tmp_path / "indexes" / "medquad"):
        assert build_missing_indexes() == []
    pubmedqa = tmp_path / "home" / "data" / "pubmedqa"
    pubmedqa.mkdir(parents=True)
    shutil.copy(shared_data / "sample" / "corpus.jsonl", pubmedqa / "corpus.jsonl")
    assert missing_shipped_indexes() == ["pubmedqa-1000", "pubmedqa-doc", "medquad"]
    [job] = build_missing_indexes()  # one job, one index after the other: side by side, both would be slower
    assert job.title == "build shipped indexes 'pubmedqa-1000', 'pubmedqa-doc', 'medquad'"
    assert job.targets == ("pubmedqa-1000", "pubmedqa-doc", "medquad") and build_missing_indexes() == []
    deadline = time.time() + 120
    while runner().get(job.id).active and time.time() < deadline:
        time.sleep(0.2)
    job = runner().get(job.id)
    assert job.status == "done", job.error
    assert job.progress == 1.0 and all(r.added for r in job.result) and missing_shipped_indexes() == []
    assert len(Index.open("medquad")) > 0 and Index.open("pubmedqa-1000").chunk_config.size == 1000
    assert len(Index.open("pubmedqa-doc")) == 20  # one chunk per abstract
    assert build_missing_indexes() == []


def test_a_shipped_corpus_missing_under_loracle_home_names_the_path_and_the_fix(tmp_path, monkeypatch):
    from ingest.pipeline import build_shipped_index

    monkeypatch.setenv("LORACLE_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as err:
        build_shipped_index("pubmedqa-doc")
    assert str(tmp_path / "home" / "data" / "pubmedqa" / "corpus.jsonl") in str(err.value)
    assert "LORACLE_HOME" in str(err.value)


def test_removing_from_a_missing_index_is_refused_and_creates_nothing(tmp_path):
    from ingest.pipeline import remove

    with pytest.raises(FileNotFoundError, match="no index .* to remove documents from"):
        remove(["doc-1"], index=tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_uploads_record_their_own_name_and_corpus_records_keep_their_url(tmp_path, monkeypatch):
    from ingest.pipeline import ingest_paths

    monkeypatch.setenv("LORACLE_INDEXES", str(tmp_path / "indexes"))
    staged = tmp_path / "loracle-upload-x"
    staged.mkdir()
    note = staged / "zinc.txt"
    note.write_text("Zinc lozenges shorten the common cold by about two days in adults.\n")
    corpus = staged / "papers.jsonl"
    corpus.write_text(json.dumps({"doc_id": "a1", "text": "Statins lower LDL cholesterol in most adults.",
                                  "url": "https://pubmed.example/1"}) + "\n"
                      + json.dumps({"doc_id": "a2", "text": "Aspirin reduces the risk of a second heart attack."})
                      + "\n")
    ingest_paths([note, corpus], index="up", sources={str(note): "upload: zinc.txt",
                                                      str(corpus): "upload: papers.jsonl"})
    ix = Index.open("up")
    sources = {d["doc_id"]: d["source"] for d in ix.documents()}
    ix.close()
    assert sources == {"zinc": "upload: zinc.txt", "a1": "https://pubmed.example/1", "a2": "upload: papers.jsonl"}


def test_an_index_never_takes_over_or_deletes_a_folder_holding_other_files(docs, tmp_path):
    mine = tmp_path / "notes"
    (mine / "sub").mkdir(parents=True)
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"already holds files that are not an index \(precious.txt, sub\)"):
        ingest_paths([docs / MIXED[0]], index=mine)
    assert sorted(p.name for p in mine.iterdir()) == ["precious.txt", "sub"]  # nothing written into it
    with pytest.raises(FileExistsError, match="is a file, not an index folder"):
        Index.create(mine / "precious.txt", dim=4)

    ingest_paths([docs / MIXED[0]], index=tmp_path / "ix")  # a real index, then someone's file lands beside it
    (tmp_path / "ix" / "draft.md").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files besides the index \(draft.md\)"):
        remove_index(tmp_path / "ix")
    assert (tmp_path / "ix" / "draft.md").read_text() == "mine" and Index.open(tmp_path / "ix").documents()
    (tmp_path / "ix" / "draft.md").unlink()
    remove_index(tmp_path / "ix")
    assert not (tmp_path / "ix").exists()


def test_another_file_with_a_stored_doc_id_is_refused_and_sources_are_absolute(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "moved").mkdir()
    (tmp_path / "a" / "gout.txt").write_text("Gout is an inflammatory arthritis caused by urate crystals.")
    (tmp_path / "b" / "gout.md").write_text("# Gout\n\nA different note about diet and purines.")
    (tmp_path / "moved" / "gout.txt").write_text("Gout is an inflammatory arthritis; colchicine treats flares.")
    monkeypatch.chdir(tmp_path / "a")
    first = ingest_paths(["gout.txt", "gout.txt"], index=tmp_path / "ix")  # relative, and named twice
    assert first.added == ["gout"] and not first.rejected
    stored = lambda: {d["doc_id"]: d["source"] for d in Index.open(tmp_path / "ix").documents()}  # noqa: E731
    assert stored() == {"gout": str(tmp_path / "a" / "gout.txt")}  # absolute: not tied to the folder it ran in

    other = ingest_paths([tmp_path / "b" / "gout.md"], index=tmp_path / "ix")
    assert not other.added and "already in the index from" in other.rejected[0][1]
    assert "--remove gout" in other.rejected[0][1] and stored()["gout"].endswith("a/gout.txt")
    moved = ingest_paths([tmp_path / "moved" / "gout.txt"], index=tmp_path / "ix")  # same file, new folder: update
    assert moved.added == ["gout"] and stored()["gout"] == str(tmp_path / "moved" / "gout.txt")


def test_new_chunk_settings_must_cover_every_document_of_the_index(tmp_path):
    for name in ("asthma", "gout"):
        (tmp_path / f"{name}.txt").write_text(f"{name.title()} is a chronic condition. " * 30)
    ingest_paths([tmp_path / "asthma.txt", tmp_path / "gout.txt"], index=tmp_path / "ix")
    stored = lambda: [(d["doc_id"], d["chunks"]) for d in Index.open(tmp_path / "ix").documents()]  # noqa: E731
    before = stored()
    small = IngestConfig(chunk=ChunkConfig(size=80, overlap=10))
    with pytest.raises(ValueError, match=r"1 other\(s\) \(gout\) stay chunked 700/150"):
        ingest_paths([tmp_path / "asthma.txt"], index=tmp_path / "ix", config=small)
    assert stored() == before and Index.open(tmp_path / "ix").chunk_config.size == 700  # rolled back
    both = ingest_paths([tmp_path / "asthma.txt", tmp_path / "gout.txt"], index=tmp_path / "ix", config=small)
    assert sorted(both.added) == ["asthma", "gout"] and Index.open(tmp_path / "ix").chunk_config.size == 80
