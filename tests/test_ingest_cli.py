"""`loracle ingest | index | search`, run in-process through app.cli.main."""
from __future__ import annotations

import json
import shutil

from app.cli import main


def test_ingest_index_and_remove_commands(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORACLE_INDEXES", str(tmp_path / "indexes"))
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("pubmed-9854965.md", "pubmed-18955431.txt"):
        shutil.copy(shared_data / "sample" / "docs" / name, docs)
    (docs / "notes.xyz").write_text("unsupported")

    assert main(["ingest", str(docs), "--index", "mine", "--chunk-size", "0"]) == 2  # not "the default"
    assert "--chunk-size 0: give a chunk size of at least 1" in capsys.readouterr().err
    assert main(["ingest", str(docs), "--index", "mine", "--chunk-size", "600", "--chunk-overlap", "60"]) == 0
    out = capsys.readouterr().out
    assert "added 2" in out and "rejected 1" in out and "unsupported" in out and "'.xyz'" in out
    assert main(["ingest", str(docs), "--index", "mine", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["skipped"]) == ["pubmed-18955431", "pubmed-9854965"] and report["added"] == []

    assert main(["index", "list"]) == 0
    assert "mine" in capsys.readouterr().out
    assert main(["index", "show", "mine", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["chunker"]["size"] == 600 and len(shown["documents"]) == 2

    assert main(["ingest", "--remove", "pubmed-9854965", "--index", "mine"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert main(["ingest", "--remove", "pubmed-18955431", "--index", "mine"]) == 0
    capsys.readouterr()
    assert main(["search", "treadmill training", "--index", "mine"]) == 0  # empty: said, not silent
    assert "index 'mine' holds no chunks yet" in capsys.readouterr().err
    assert main(["ingest", str(docs / "pubmed-18955431.txt"), "--index", "mine"]) == 0
    shutil.copy(docs / "pubmed-18955431.txt", tmp_path / "copy-of-it.txt")  # same bytes, another name
    capsys.readouterr()
    assert main(["ingest", str(tmp_path / "copy-of-it.txt"), "--index", "mine"]) == 0
    assert "note: copy-of-it has the same content as pubmed-18955431; both are kept" in capsys.readouterr().out
    assert main(["ingest", "--remove", "copy-of-it", "--index", "mine"]) == 0
    # a typo'd index name neither creates an empty index nor passes silently
    assert main(["ingest", "--remove", "pubmed-9854965", "--index", "mnie"]) == 2
    assert "no index 'mnie'" in capsys.readouterr().err
    assert main(["ingest", str(docs / "notes.xyz"), "--index", "mnie"]) == 1
    assert "not created: no document was added" in capsys.readouterr().out
    assert not (tmp_path / "indexes" / "mnie").exists()
    assert main(["ingest", str(docs), "--index", "mine", "--embedder", "some/other-model"]) == 2
    assert "built with embedder 'all-MiniLM-L6-v2'" in capsys.readouterr().err
    assert main(["index", "remove", "mine"]) == 0
    assert main(["index", "show", "mine"]) == 2
    assert "no index" in capsys.readouterr().err


def test_ingest_into_a_milvus_store(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORACLE_INDEXES", str(tmp_path / "indexes"))
    doc = shared_data / "sample" / "docs" / "pubmed-9854965.md"
    assert main(["ingest", str(doc), "--index", "big", "--store", "milvus", "--index-type", "ivf"]) == 0
    assert "added 1" in capsys.readouterr().out
    assert main(["index", "show", "big"]) == 0
    assert "ivf Milvus vectors.db (loracle_big)" in capsys.readouterr().out
    assert main(["ingest", str(doc), "--index", "big", "--store", "faiss"]) == 2
    assert "--store faiss (it has milvus) only apply to a new index" in capsys.readouterr().err
    assert main(["search", "treadmill training after stroke", "--index", "big", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["doc_id"] == "pubmed-9854965"
    assert main(["index", "remove", "big"]) == 0 and not (tmp_path / "indexes" / "big").exists()


def test_search_command(sample_index, shared_data, tmp_path, capsys):
    assert main(["search", "Does music influence stress in mechanically ventilated patients?",
                 "--index", str(sample_index), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1]") and "pubmed-23228527" in out and "PubMed 23228527" in out

    assert main(["search", "treadmill training after stroke", "--index", str(sample_index), "--hybrid", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and hits[0]["doc_id"] == "pubmed-18955431" and hits[0]["source"].endswith(".txt")

    out_file = tmp_path / "runs.jsonl"
    assert main(["search", "--queries", str(shared_data / "sample" / "dev.jsonl"), "--index", str(sample_index),
                 "-k", "5", "--out", str(out_file)]) == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 10 and all(len(r["doc_ids"]) == len(set(r["doc_ids"])) <= 5 for r in rows)
    assert all([c.split("#")[0] for c in r["chunk_ids"]] == r["doc_ids"] for r in rows)  # each doc's best chunk
    assert "recall@1=" in capsys.readouterr().err
    assert main(["search", "--queries", str(shared_data / "sample" / "dev.jsonl"), "--index", str(sample_index),
                 "-k", "3", "--out", str(out_file)]) == 0
    assert "recall@1=" in (err := capsys.readouterr().err) and "recall@3=" in err
    assert sum(r["context_doc_id"] in r["doc_ids"] for r in rows) >= 9
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "Is it?"}\nnot json\n')
    assert main(["search", "--queries", str(bad), "--index", str(sample_index)]) == 2
    assert "bad.jsonl, line 2: not valid JSON" in capsys.readouterr().err
    # the question file is checked before the index (and its embedder) is opened
    assert main(["search", "--queries", str(tmp_path / "none.jsonl"), "--index", str(tmp_path / "no-index")]) == 2
    assert "question file" in capsys.readouterr().err
