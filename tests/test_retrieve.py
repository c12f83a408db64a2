"""Retrieval over a real index of the sample documents (fixture `sample_index`), on both vector
stores: the Milvus copy (`store_index`) shares the FAISS index's chunk store and derives its
collection from it on first open, as the index does after a crash."""
from __future__ import annotations

import json
import shutil

import pytest

from app.retrieve import Retriever, aggregate, get_retriever
from ingest.index import Index
from ingest.pipeline import ingest_paths


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def store_index(request, sample_index, tmp_path_factory):
    if request.param == "faiss":
        return sample_index
    path = tmp_path_factory.mktemp("milvus") / "sample"
    shutil.copytree(sample_index, path, ignore=shutil.ignore_patterns("index.faiss", ".lock"))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["vectors"] = {"store": "milvus", "uri": "vectors.db", "collection": "loracle_sample"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    ix = Index.open(path)  # an empty collection: re-synced from chunks.sqlite
    assert ix.store == "milvus" and len(ix) == manifest["counts"]["chunks"] > 0
    ix.close()
    return path


def dev_items(shared_data):
    return [json.loads(line) for line in (shared_data / "sample" / "dev.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("hybrid", [False, True])
def test_dev_questions_find_their_abstract(store_index, shared_data, hybrid):
    items = dev_items(shared_data)
    r = Retriever(store_index, hybrid=hybrid)
    results = r.search_many([it["question"] for it in items], k=5)
    hits = sum(it["context_doc_id"] in {p.doc_id for p in ps} for it, ps in zip(items, results))
    top1 = sum(ps[0].doc_id == it["context_doc_id"] for it, ps in zip(items, results))
    assert hits >= 9 and top1 >= 8, (hits, top1)
    for ps in results:
        assert [p.rank for p in ps] == [1, 2, 3, 4, 5]
        assert all(a.score >= b.score for a, b in zip(ps, ps[1:]))
        for p in ps:
            assert p.chunk.text and p.chunk.metadata["title"].startswith("PubMed ")
            assert p.chunk.metadata["source"].startswith(str(shared_data / "sample" / "docs"))
            assert isinstance(p.location, str)


def test_passages_carry_page_and_section(store_index):
    ps = Retriever(store_index).search("Group B streptococcus carriage in pregnant women in Israel", k=2)
    assert ps[0].doc_id == "pubmed-17220021" and ps[0].location.startswith("p. 1")
    assert ps[0].chunk.metadata["page"] == 1


def test_bad_queries(store_index):
    r = Retriever(store_index, hybrid=True)
    with pytest.raises(ValueError, match="non-empty"):
        r.search("   ")
    with pytest.raises(ValueError, match="k must be"):
        r.search("stroke", k=0)
    assert len(r.search("the of and", k=3)) == 3  # BM25 has nothing; dense still answers
    with pytest.raises(FileNotFoundError, match="loracle ingest"):
        Retriever(store_index.parent / "nope")


@pytest.mark.parametrize("store", ["faiss", "milvus"])
def test_get_retriever_is_cached_and_sees_new_documents(shared_data, tmp_path, store):
    docs = shared_data / "sample" / "docs"
    target = tmp_path / "ix"
    Index.create(target, store=store).close()
    ingest_paths([docs / "pubmed-9854965.md"], index=target)
    r = get_retriever(target, hybrid=True)
    assert get_retriever(target, hybrid=True) is r
    q = "Treadmill training after stroke: secondary benefits?"
    assert {p.doc_id for p in r.search(q, k=3)} == {"pubmed-9854965"}
    ingest_paths([docs / "pubmed-18955431.txt"], index=target)  # another writer, same process or not
    r2 = get_retriever(target, hybrid=True)
    assert r2 is r and r.search(q, k=1)[0].doc_id == "pubmed-18955431"
    shutil.rmtree(target)
    with pytest.raises(FileNotFoundError, match="was removed"):
        get_retriever(target, hybrid=True)


def test_cross_encoder_rerank_orders_by_its_scores(sample_index, tmp_path):
    """A tiny random BERT cross-encoder built offline: checks the plumbing, not the quality."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ingest.embed import resolve_embedder

    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=1)
    folder = tmp_path / "tiny-reranker"
    BertForSequenceClassification(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_embedder("all-MiniLM-L6-v2")).save_pretrained(folder)
    r = Retriever(sample_index, reranker=str(folder), candidates=10)
    q = "music and stress in ventilated patients"
    ps = r.search(q, k=4)
    assert len(ps) == 4 and all(a.score >= b.score for a, b in zip(ps, ps[1:]))
    direct = CrossEncoder(str(folder)).predict([(q, p.chunk.text) for p in ps])
    assert [round(float(s), 4) for s in direct] == [round(p.score, 4) for p in ps]
    with pytest.raises(FileNotFoundError, match="reranker"):
        Retriever(sample_index, reranker=str(tmp_path / "none"))


def test_documents_ranked_from_chunks():
    hits = [("a", 0.9), ("b", 0.8), ("b", 0.7), ("c", 0.6), ("b", 0.5)]
    assert aggregate(hits, "max") == [("a", 0.9), ("b", 0.8), ("c", 0.6)]
    assert [d for d, _ in aggregate(hits, "sum")] == ["b", "a", "c"]
    assert [d for d, _ in aggregate(hits, "rrf")] == ["b", "a", "c"]
    with pytest.raises(ValueError, match="aggregation 'mean' is not one of"):
        aggregate(hits, "mean")
