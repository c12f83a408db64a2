"""Durability: SIGKILL an ingest at seeded random moments; the index must always open consistent, and
re-running the same ingest must complete it.

To keep this fast a helper process (`python -m tests.test_crash serve INDEX`) imports everything and
loads the real embedder once, then forks one child per ingest; the test kills the child with SIGKILL
after a random delay drawn from the measured length of an uninterrupted run. Each batch adds new
small text files and changes one file of the previous batch (so replace paths are hit too).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "pubmedqa" / "corpus.jsonl"  # the corpus the repository ships
MIN_KILLS = 20
MILVUS_KILLS = 8  # each run starts milvus-lite in the child (~0.5 s): fewer kills keep the test short
PER_BATCH = 4


def _serve(kind: str, arg: str) -> None:
    """Fork server: one line in ('run ARG'), one child doing the work; prints 'pid N' then 'exit STATUS'.
    kind "ingest": ARG is a folder ingested into the index given at start. kind "train": ARG is unused,
    the child trains the adapter described by the JSON TrainConfig given at start."""
    import torch

    torch.set_num_threads(1)  # no OpenMP pool in the parent: forked children must not inherit one
    if kind == "ingest":
        from ingest.pipeline import ingest_paths

        with tempfile.TemporaryDirectory() as warm:  # import and touch everything once, so children start warm
            (Path(warm) / "warm.txt").write_text("Warm up the loader, chunker, embedder and FAISS.\n")
            ingest_paths([Path(warm) / "warm.txt"], index=Path(warm) / "index")
        if "milvus" in (Path(arg) / "manifest.json").read_text():  # imported only: no gRPC thread before fork
            import milvus_lite.adapter.grpc.server  # noqa: F401
            import pymilvus  # noqa: F401

            from ingest.index import Index
            from ingest.vectors import MilvusVectors

            def slow(real):  # widen the window after the SQLite commit, so random kills land in it
                def wrapped(*a, **kw):
                    time.sleep(0.3)
                    return real(*a, **kw)
                return wrapped

            MilvusVectors.apply, Index._write_manifest = slow(MilvusVectors.apply), slow(Index._write_manifest)

        def work(folder: str) -> int:
            return 3 if ingest_paths([folder], index=arg).rejected else 0
    else:
        import peft  # noqa: F401 - imported, not run: a parent that ran training has helper threads
        import tqdm  # (tqdm's monitor, torch's pool) whose locks a forked child could inherit held

        from app.train import TrainConfig, train

        tqdm.tqdm.monitor_interval = 0
        config = TrainConfig(**json.loads(arg))

        def work(mode: str) -> int:
            if mode == "slow":  # widen the save/install window (each rename waits) so random kills land in it
                real_replace = os.replace

                def slow_replace(src, dst):
                    time.sleep(0.1)
                    real_replace(src, dst)
                    time.sleep(0.1)

                os.replace = slow_replace
            train(config)
            return 0
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, work_arg = line.strip().partition(" ")
        if cmd != "run":
            break
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = work(work_arg)
            except BaseException:  # noqa: BLE001 - report and leave without running parent cleanup
                import traceback

                traceback.print_exc()
            os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {status}", flush=True)


class HungRun(AssertionError):
    """A child ran past its limit and was killed."""


class Server:
    def __init__(self, kind: str, arg: str):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.test_crash", kind, arg], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._line() == "ready"

    def _line(self) -> str:
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"fork server died (rc {self.proc.poll()})")
        return line

    def run(self, batch: Path | str = "-", kill_after: float | None = None, limit_s: float = 300) -> tuple[bool, float]:
        """Run one job; SIGKILL it after `kill_after` s. Returns (was killed mid-run, seconds)."""
        self.proc.stdin.write(f"run {batch}\n")
        self.proc.stdin.flush()
        pid = int(self._line().split()[1])
        t0 = time.perf_counter()
        timer = threading.Timer(limit_s, os.kill, (pid, signal.SIGKILL))  # a hung child fails the test, not CI
        timer.start()
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it finished and was reaped already
                pass
        status = int(self._line().split()[1])
        timer.cancel()
        elapsed = time.perf_counter() - t0
        if elapsed >= limit_s:
            raise HungRun(f"run {batch} hung for {limit_s}s and was killed")
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL
            return True, elapsed
        assert os.WEXITSTATUS(status) == 0, f"run {batch} failed with exit code {os.WEXITSTATUS(status)}"
        return False, elapsed

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _texts(n: int) -> list[str]:
    texts = []
    with open(CORPUS) as f:
        for line in f:
            texts.append(json.loads(line)["text"][:500])
            if len(texts) == n:
                break
    return texts


def _make_batch(root: Path, i: int, texts: list[str]) -> tuple[Path, dict[str, str]]:
    """Batch i: PER_BATCH new files plus a changed copy of one file from batch i-1."""
    import hashlib

    d = root / f"batch{i:02d}"
    d.mkdir()
    names = {f"doc{i:02d}-{j}": texts[(i * PER_BATCH + j) % len(texts)] for j in range(PER_BATCH)}
    if i > 0:
        names[f"doc{i - 1:02d}-0"] = f"Revised in batch {i}.\n\n" + texts[(i * 7) % len(texts)]
    want = {}
    for stem, text in names.items():
        data = f"Document {stem}\n\n{text}\n".encode()
        (d / f"{stem}.txt").write_bytes(data)
        want[stem] = hashlib.sha256(data).hexdigest()
    return d, want


def _check_consistent(index: Path) -> dict[str, str]:
    """Open the index; manifest, vectors (FAISS or Milvus) and the chunk store must agree. Returns {doc_id: sha256}."""
    import numpy as np

    from ingest.index import Index

    ix = Index.open(index)
    try:
        docs = ix.documents()
        chunks = list(ix.iter_chunks())
        n = len(ix)
        assert n == len(chunks) == sum(d["chunks"] for d in docs), (n, len(chunks))
        manifest = json.loads((index / "manifest.json").read_text())
        assert manifest["counts"] == {"documents": len(docs), "chunks": n}, manifest["counts"]
        assert sorted(d["doc_id"] for d in manifest["documents"]) == [d["doc_id"] for d in docs]
        assert {d["doc_id"]: d["sha256"] for d in manifest["documents"]} == {d["doc_id"]: d["sha256"] for d in docs}
        if n:
            _, ids = ix.search(np.ones((1, ix.dim), "float32"), k=n)  # flat index: every vector comes back
            ids = sorted(int(i) for i in ids[0])
            assert ids == sorted(row for row, _ in chunks)
            assert all(c is not None for c in ix.get_chunks(ids))
        assert {c.doc_id for _, c in chunks} <= {d["doc_id"] for d in docs}
        return {d["doc_id"]: d["sha256"] for d in docs}
    finally:
        ix.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("store,min_kills", [("faiss", MIN_KILLS), ("milvus", MILVUS_KILLS)])
def test_sigkill_during_ingest_never_corrupts_the_index(tmp_path, store, min_kills):
    """FAISS: the file and manifest follow the SQLite commit. Milvus (milvus-lite in the child): the
    collection's deletes/inserts follow it; a kill between them is repaired by the id diff on open."""
    from ingest.index import Index

    if not CORPUS.exists():
        pytest.skip(f"{CORPUS} not found")
    rng = random.Random(1234)
    index = tmp_path / "crashy"
    Index.create(index, store=store, index_type="flat", dim=384).close()
    texts = _texts(200)
    server = Server("ingest", str(index))
    try:
        batch, want = _make_batch(tmp_path, 0, texts)
        _, clean_s = server.run(batch)  # the baseline, uninterrupted
        state = _check_consistent(index)
        assert all(state[k] == v for k, v in want.items())
        live_kills, outcomes, i, hangs, limit_s = 0, {"before commit": 0, "after commit": 0, "after exit": 0}, 0, 0, 120
        while live_kills < min_kills:
            i += 1
            assert i <= 2 * min_kills, f"only {live_kills} kills landed mid-run in {i - 1} tries"
            batch, want = _make_batch(tmp_path, i, texts)
            # half the points anywhere in the run, half near its end, where the commit writes happen
            at = rng.uniform(0.0, 1.05) if i % 2 else rng.uniform(0.75, 1.02)
            killed, _ = server.run(batch, kill_after=at * clean_s)
            live_kills += killed
            state = _check_consistent(index)
            applied = [state.get(k) == v for k, v in want.items()]
            assert all(applied) or not any(applied), f"batch {i} half applied: {applied}"  # one call = one commit
            outcomes["after exit" if not killed else "after commit" if all(applied) else "before commit"] += 1
            try:
                _, clean_s = server.run(batch, limit_s=limit_s)  # the re-run completes it
            except HungRun:
                # milvus-lite's in-process gRPC server now and then hangs on the first open after a SIGKILL
                # (seen twice in ~20 suite runs); the hung child is killed: the index must still be whole,
                # and the next run must complete it. FAISS has no server and must never hang.
                if store != "milvus" or hangs:
                    raise
                hangs += 1
                _check_consistent(index)
                _, clean_s = server.run(batch, limit_s=limit_s)
            state = _check_consistent(index)
            assert all(state.get(k) == v for k, v in want.items()), f"re-run of batch {i} did not complete it"
        print(f"\n{store}: {live_kills} SIGKILLs mid-ingest in {i} batches; kills landed {outcomes}; "
              f"{hangs} milvus-lite hang(s); last clean ingest {clean_s:.2f}s; index {len(state)} docs")
        if store == "milvus":  # the case the id diff exists for: store committed, collection not (fully) updated
            assert outcomes["after commit"] >= 1, outcomes
    finally:
        server.close()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] in ("ingest", "train"):
    _serve(sys.argv[1], sys.argv[2])


TRAIN_KILLS = 6


def _check_registry(root: Path, name: str) -> int:
    """The registry lists only complete adapters: no invalid folder, every version loads. Returns the version."""
    from safetensors import safe_open

    from app import registry

    good, bad = registry.scan(root)
    assert bad == [], bad
    assert [a.name for a in good] == [name]
    lineage = registry.versions(name, root)
    assert [a.version for a in lineage] == list(range(1, len(lineage) + 1))
    for info in lineage:
        with safe_open(str(info.path / "adapter_model.safetensors"), "pt") as f:  # reads every tensor
            assert all(f.get_tensor(k).numel() for k in f.keys())
        assert info.card["base_model"]["name"] and json.loads((info.path / "adapter_config.json").read_text())
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [name]
    return lineage[-1].version


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_during_training_never_leaves_a_half_adapter(tiny_model_dir, shared_data, tmp_path):
    rng = random.Random(99)
    root = tmp_path / "adapters"
    config = {"data": str(shared_data / "sample" / "dev.jsonl"), "name": "crashy", "base_model": str(tiny_model_dir),
              "epochs": 1, "rank": 4, "alpha": 8, "max_len": 96, "grad_accum": 2, "val_fraction": 0.2, "evals": 1,
              "limit": 5, "adapters_dir": str(root), "threads": 1}
    server = Server("train", json.dumps(config))
    try:
        server.run()
        assert _check_registry(root, "crashy") == 1
        _, clean_s = server.run("slow")
        version = _check_registry(root, "crashy")
        assert version == 2
        kills = late = 0
        for i in range(TRAIN_KILLS):
            at = rng.uniform(0.6, 1.0)  # training writes nothing before its end: save, install
            killed, _ = server.run("slow", kill_after=at * clean_s)
            kills += killed
            late += killed and any(p.name.startswith(".") for p in root.iterdir())  # died while saving/installing
            now = _check_registry(root, "crashy")
            assert now in (version, version + 1)
            version = now
        _, _ = server.run()
        assert _check_registry(root, "crashy") == version + 1
        print(f"\n{kills} SIGKILLs during training ({late} while saving/installing; clean run {clean_s:.1f}s); registry at v{version + 1}, "
              f"always complete")
        assert kills >= TRAIN_KILLS // 2
    finally:
        server.close()
