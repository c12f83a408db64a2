"""Bounded loopback load test on the tiny model: 8 clients share one Engine, all four modes, two
adapters, streaming and plain answers, while a ninth client ingests into the index being searched.
0 errors, no cross-talk (each answer equals a replay of its own request), latency figures printed.
The longer run on the real model is `python benchmarks/load.py`."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SECONDS = 15


def _harness():
    spec = importlib.util.spec_from_file_location("loracle_load_bench", REPO / "benchmarks" / "load.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_eight_clients_one_engine_while_ingesting(tiny_model_dir, shared_data, tmp_path):
    from app import registry
    from app.config import EngineConfig
    from app.engine import Engine
    from ingest.index import Index
    from ingest.pipeline import ingest_paths
    from tests.tiny_adapter import card_for, make_adapter, untie_base

    load = _harness()
    base = untie_base(tiny_model_dir, tmp_path / "base")
    root = tmp_path / "adapters"
    for name, seed in (("alpha", 1), ("beta", 2)):
        registry.install(make_adapter(base, tmp_path / f"staging-{name}", seed=seed), name, card_for(base), root)
    index = tmp_path / "index"
    ingest_paths(sorted((shared_data / "sample" / "docs").glob("*.txt"))[:4], index=index)
    texts = [json.loads(line)["text"][:400] for line in open(shared_data / "sample" / "corpus.jsonl")]
    engine = Engine(EngineConfig(base_model=str(base), adapters_dir=str(root), adapters=("alpha", "beta"),
                                 index=str(index), k=3, max_new_tokens=8))
    q = load.QUESTIONS[0]
    solo = {a: engine.answer(q, adapter=a).text for a in (None, "alpha", "beta")}
    assert len(set(solo.values())) == 3, solo  # adapters give distinct text, so cross-talk would show

    result = load.run_load(engine, ("alpha", "beta"), SECONDS, clients=8,
                           ingest=load.make_ingest(index, tmp_path / "docs", texts), max_new_tokens=8)
    summary = result.summary()
    print("\nload:", json.dumps(summary))
    assert result.errors == [], result.errors[:5]
    assert result.mismatches == [], result.mismatches[:5]
    assert set(summary["per_mode"]) == {"base", "lora", "rag", "lora+rag"}
    assert {"alpha@v1", "beta@v1"} <= set(summary["adapters"])
    assert summary["answers"] >= 40 and summary["streamed"] >= 4
    assert result.text_checked >= summary["answers"] // 2
    assert result.ingest_calls >= 1 and result.ingested == 2 * result.ingest_calls
    ix = Index.open(index)
    try:
        assert len(ix.documents()) == 4 + result.ingested
    finally:
        ix.close()


def test_readers_opening_the_index_never_make_an_ingest_fail(tmp_path):
    """A reader that opens the index just as a writer commits may repair it under the lock; the next
    writer must wait for that (milliseconds) instead of failing with IndexLockedError."""
    import threading
    import time

    from ingest.index import Index
    from ingest.pipeline import ingest_paths

    (tmp_path / "d0").mkdir()
    (tmp_path / "d0" / "first.txt").write_text("First document.\n" * 20)
    ingest_paths([tmp_path / "d0"], index=tmp_path / "ix")
    done = threading.Event()
    opens = []

    def reader():
        while not done.is_set():
            Index.open(tmp_path / "ix").close()
            opens.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    errors, t0 = [], time.perf_counter()
    try:
        for i in range(1, 41):
            (tmp_path / f"d{i}").mkdir()
            (tmp_path / f"d{i}" / f"doc{i}.txt").write_text(f"Document number {i}.\n" * 10)
            try:
                ingest_paths([tmp_path / f"d{i}"], index=tmp_path / "ix")
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        done.set()
        thread.join()
    print(f"\n40 ingests in {time.perf_counter() - t0:.1f}s beside {len(opens)} concurrent opens")
    assert errors == [] and len(opens) > 40
    ix = Index.open(tmp_path / "ix")
    try:
        assert len(ix.documents()) == 41
    finally:
        ix.close()
