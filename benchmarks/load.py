"""Load test: N client threads share ONE app.engine.Engine (as the UI's sessions and API clients do) and
ask questions in all four modes, switching between two adapters, while one more client keeps ingesting
documents into the index the RAG modes search. Loopback only: everything runs in this process.

Side by side in one run: the same 8-client load served one generate() call at a time (the engine's lock,
`scheduler=False`) and through the continuous-batching scheduler; then 32 clients against a small queue
bound, where extra requests must get a clean Busy and memory must stay flat.

Afterwards every answer is checked against a replay of the same request on the idle engine (greedy
decoding, so equal inputs give equal text): the mode and adapter the answer records must be the ones
asked for, and its text must be what that adapter (with those passages) produces; a mismatch is
cross-talk between users. Prints p50/p95 latency per mode and the throughput.

    python benchmarks/load.py [--seconds 90] [--clients 8] [--max-new-tokens 24] [--flood-seconds 60]

uses the real default base model (SmolLM2-135M-Instruct) with the shipped adapter when it is installed
plus a random LoRA (or two random ones), and a copy of indexes/pubmedqa (or the sample docs); nothing
outside a temporary folder is written. tests/test_load.py runs the same harness on the tiny model.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Do statins reduce the risk of stroke in elderly patients?",
    "Is vaccine storage in community clinics adequate?",
    "Does smoking cessation improve lung function after one year?",
    "Is laparoscopic surgery safer than open surgery for appendicitis?",
    "Are children with asthma more likely to develop allergies?",
    "Does vitamin D supplementation prevent fractures?",
]


@dataclass
class Record:
    client: int
    question: str
    adapter: str | None
    retrieval: bool
    streamed: bool
    seconds: float
    answer: object  # app.types.Answer


@dataclass
class LoadResult:
    records: list[Record] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ingested: int = 0  # documents added by the ingesting client
    ingest_calls: int = 0
    elapsed_s: float = 0.0
    mismatches: list[str] = field(default_factory=list)
    busy: int = 0  # requests answered "busy" (queue full): clean refusals, not errors
    rss_mb: tuple[float, float] = (0.0, 0.0)  # resident memory at the start and the end
    text_checked: int = 0  # answers whose text was compared with a replay
    check_s: float = 0.0

    def summary(self) -> dict:
        lat = sorted(r.seconds for r in self.records)

        def pct(xs, q):
            return round(statistics.quantiles(xs, n=100, method="inclusive")[q - 1], 3) if len(xs) > 1 else (
                round(xs[0], 3) if xs else None)

        by_mode: dict[str, list[float]] = {}
        for r in self.records:
            by_mode.setdefault(r.answer.mode, []).append(r.seconds)
        return {
            "answers": len(self.records), "errors": len(self.errors), "cross_talk": len(self.mismatches),
            "busy": self.busy, "rss_mb_start_end": self.rss_mb,
            "seconds": round(self.elapsed_s, 1), "throughput_per_s": round(len(self.records) / self.elapsed_s, 2),
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95),
            "per_mode": {m: {"n": len(v), "p50_s": pct(sorted(v), 50), "p95_s": pct(sorted(v), 95)}
                         for m, v in sorted(by_mode.items())},
            "adapters": sorted({str(r.answer.adapter) for r in self.records}),
            "streamed": sum(r.streamed for r in self.records),
            "ingest_calls": self.ingest_calls, "docs_ingested": self.ingested,
            "text_checked": self.text_checked, "check_s": round(self.check_s, 1),
        }


def run_load(engine, adapters: tuple[str, str], seconds: float, clients: int = 8, ingest=None,
             questions: list[str] = QUESTIONS, max_new_tokens: int | None = None, seed: int = 0,
             ingest_pause_s: float = 0.5, max_replays: int = 60) -> LoadResult:
    """Drive `engine` from `clients` threads for `seconds`; `ingest(i) -> docs added` runs in a loop in
    one more thread meanwhile. Returns the records, errors and the cross-talk check."""
    from app.scheduler import Busy

    result = LoadResult()
    rss0 = rss_mb()
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    modes = [(None, False), ("A", False), (None, True), ("A", True)]

    def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        i = 0
        while time.perf_counter() < deadline:
            adapter, retrieval = modes[(n + i) % 4]
            if adapter:
                adapter = adapters[rng.randrange(2)]
            question = rng.choice(questions)
            streamed = rng.random() < 0.25
            t0 = time.perf_counter()
            try:
                if streamed:
                    deltas, answer = [], None
                    for item in engine.stream(question, adapter=adapter, retrieval=retrieval,
                                              max_new_tokens=max_new_tokens):
                        if isinstance(item, str):
                            deltas.append(item)
                        else:
                            answer = item
                    if "".join(deltas).strip() != answer.text.strip():
                        raise AssertionError(f"streamed text {''.join(deltas)!r} != answer {answer.text!r}")
                else:
                    answer = engine.answer(question, adapter=adapter, retrieval=retrieval,
                                           max_new_tokens=max_new_tokens)
                rec = Record(n, question, adapter, retrieval, streamed, time.perf_counter() - t0, answer)
                with lock:
                    result.records.append(rec)
            except Busy as exc:
                with lock:
                    result.busy += 1
                time.sleep(min(exc.retry_after, 1.0))
            except Exception as exc:  # noqa: BLE001 - counted, the test asserts there are none
                with lock:
                    result.errors.append(f"client {n}: {type(exc).__name__}: {exc}")
            i += 1

    def ingester() -> None:
        i = 0
        while time.perf_counter() < deadline:
            try:
                added = ingest(i)
                with lock:
                    result.ingested += added
                    result.ingest_calls += 1
            except Exception as exc:  # noqa: BLE001
                with lock:
                    result.errors.append(f"ingest {i}: {type(exc).__name__}: {exc}")
            i += 1
            time.sleep(ingest_pause_s)

    threads = [threading.Thread(target=client, args=(n,), name=f"load-client-{n}") for n in range(clients)]
    if ingest is not None:
        threads.append(threading.Thread(target=ingester, name="load-ingest"))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.elapsed_s = time.perf_counter() - t0
    result.rss_mb = (rss0, rss_mb())
    t0 = time.perf_counter()
    result.mismatches, result.text_checked = check_cross_talk(engine, result.records, max_new_tokens, max_replays, seed)
    result.check_s = time.perf_counter() - t0
    return result


def check_cross_talk(engine, records: list[Record], max_new_tokens: int | None = None, max_replays: int = 60,
                     seed: int = 0) -> tuple[list[str], int]:
    """Every answer's recorded mode and adapter must be the ones asked for. Then distinct requests
    (question, adapter, passages) are replayed alone on the idle engine, all of them up to
    `max_replays`, else a seeded sample: each answer of a replayed request must have its text.
    Returns (problems, answers whose text was checked)."""
    from app import prompts
    from app.backends import GenItem
    from app.types import mode_of

    bad, groups = [], {}
    for r in records:
        a = r.answer
        want_mode = mode_of(r.adapter, r.retrieval and bool(a.passages))
        want_label = engine.adapter_ref(r.adapter).label if r.adapter else None
        if a.mode != want_mode or a.adapter != want_label:
            bad.append(f"client {r.client} asked ({r.adapter}, rag={r.retrieval}) got ({a.adapter}, {a.mode})")
            continue
        key = (r.question, r.adapter, tuple(p.chunk.chunk_id + p.chunk.text for p in a.passages))
        groups.setdefault(key, []).append(r)
    keys = list(groups)
    if len(keys) > max_replays:
        keys = random.Random(seed).sample(keys, max_replays)
    checked = 0
    for key in keys:
        first = groups[key][0]
        a = first.answer
        messages = prompts.build_messages(first.question, a.passages or None, a.settings.get("template"),
                                          a.settings.get("passage_chars"))
        scored = a.decision is not None and a.decision.source == "scored"
        item = GenItem(messages, first.adapter, max_new_tokens or engine.config.max_new_tokens,
                       a.decision.offsets if scored else None)
        if engine.scheduler is not None:  # alone on the idle engine, through the same decode path
            want = engine.scheduler.generate([item])[0][0].text
        else:
            with engine._lock:
                want = engine.backend.generate([item])[0][0].text
        for r in groups[key]:
            checked += 1
            if r.answer.text != want:
                bad.append(f"client {r.client} ({r.adapter}, rag={r.retrieval}) text {r.answer.text[:60]!r} != "
                           f"replay {want[:60]!r}")
    return bad, checked


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def make_ingest(index: Path, folder: Path, texts: list[str]):
    """An ingest(i) that writes two new small documents and adds them to `index`."""
    from ingest.pipeline import ingest_paths

    def ingest(i: int) -> int:
        batch = folder / f"batch{i:04d}"
        batch.mkdir(parents=True)
        for j in range(2):
            (batch / f"load-{i:04d}-{j}.txt").write_text(f"Load document {i}-{j}\n\n{texts[(2 * i + j) % len(texts)]}\n")
        report = ingest_paths([batch], index=index)
        if report.rejected:
            raise RuntimeError(f"ingest rejected {report.rejected}")
        return len(report.added)

    return ingest


def main() -> int:
    import json
    import shutil

    sys.path.insert(0, str(REPO))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--flood-seconds", type=float, default=60)
    ap.add_argument("--flood-clients", type=int, default=32)
    ap.add_argument("--flood-queue", type=int, default=8, help="queue_limit during the flood")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()

    from app import registry
    from app.config import DEFAULT_ADAPTER, EngineConfig, adapters_dir
    from app.engine import Engine
    from app.models import resolve
    from ingest.index import index_path
    from ingest.pipeline import ingest_paths
    from tests.tiny_adapter import make_adapter

    tmp = Path(tempfile.mkdtemp(prefix="loracle-load-"))
    try:
        info = resolve(None)
        root = tmp / "adapters"
        names = []
        shipped = adapters_dir() / DEFAULT_ADAPTER
        if shipped.is_dir():
            shutil.copytree(shipped, root / DEFAULT_ADAPTER)
            names.append(DEFAULT_ADAPTER)
        card = {"base_model": {"name": info.name, "sha256": info.sha256}, "training_data": {"path": "random"},
                "hyperparameters": {"rank": 8}}
        for n in range(2 - len(names)):
            name = f"random-lora-{n}"
            registry.install(make_adapter(info.path, tmp / f"staging-{n}", seed=n + 1, rank=8, std=0.02), name,
                             card, root)
            names.append(name)
        index = tmp / "index"
        if (index_path("pubmedqa") / "manifest.json").is_file():
            shutil.copytree(index_path("pubmedqa"), index, ignore=shutil.ignore_patterns(".lock"))
        else:
            ingest_paths([REPO / "tests" / "data" / "sample" / "docs"], index=index)
        texts = [json.loads(line)["text"][:800] for line in
                 open(REPO / "data" / "pubmedqa" / "corpus.jsonl")][:200]
        engine = Engine(EngineConfig(adapters_dir=str(root), adapters=tuple(names), index=str(index),
                                     max_new_tokens=args.max_new_tokens))
        engine.answer(QUESTIONS[0], retrieval=True, max_new_tokens=2)  # warm up retrieval and generation
        scheduler, pair = engine.scheduler, (names[0], names[1])
        print(f"base {info.name}; adapters {names}; {args.clients} clients + 1 ingesting, {args.seconds:.0f} s each")
        engine.scheduler = None  # serialised: one generate() call at a time under the engine's lock
        serial = run_load(engine, pair, args.seconds, args.clients, ingest=make_ingest(index, tmp / "docs1", texts),
                          max_new_tokens=args.max_new_tokens)
        engine.scheduler = scheduler
        batched = run_load(engine, pair, args.seconds, args.clients, ingest=make_ingest(index, tmp / "docs2", texts),
                           max_new_tokens=args.max_new_tokens)
        scheduler.queue_limit = args.flood_queue
        flood = run_load(engine, pair, args.flood_seconds, args.flood_clients, max_new_tokens=args.max_new_tokens,
                         max_replays=10)
        one, many, fl = serial.summary(), batched.summary(), flood.summary()
        print(json.dumps({"serialised": one, "scheduler": many, "flood": fl, "scheduler_stats": scheduler.stats()},
                         indent=1))
        print(f"throughput scheduler / serialised: {many['throughput_per_s'] / max(one['throughput_per_s'], 1e-9):.2f}x;"
              f" p95 latency {many['p95_s']} s vs {one['p95_s']} s; errors {many['errors']} / {one['errors']}; "
              f"cross-talk {many['cross_talk']} / {one['cross_talk']}")
        print(f"{args.flood_clients} clients, queue_limit {args.flood_queue}: {fl['answers']} answers, {fl['busy']} "
              f"busy, {fl['errors']} errors, RSS {fl['rss_mb_start_end'][0]} -> {fl['rss_mb_start_end'][1]} MB")
        result = batched
        result.errors += serial.errors + flood.errors
        result.mismatches += serial.mismatches + flood.mismatches
        for line in (result.errors + result.mismatches)[:10]:
            print("PROBLEM:", line)
        return 1 if result.errors or result.mismatches else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
