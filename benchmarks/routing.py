"""Adapter routing (app/routing.py): accuracy, out-of-domain rejection, confusion table, time per question.

Two adapters in a temporary registry, each a copy of the shipped adapter's PEFT files with a routing summary
of its own TRAIN questions: "pubmedqa" (data/pubmedqa/train.jsonl, 450) and "medquad" (a random 3000 of
the shared MedQuAD qa_train.jsonl). Routed: the PubMedQA dev questions (50), the MedQuAD dev questions
(324) and 30 general questions (tests/data/out_of_domain.jsonl), which should go to no adapter.
Targets: in-domain routing accuracy >= 95%, out-of-domain routed to None >= 80%, < 10 ms per question.

    .venv/bin/python benchmarks/routing.py [--medquad DIR] [--threshold 0.45] [--train-subset 3000]
    .venv/bin/python benchmarks/routing.py --shipped --medquad data/medquad   # the two shipped adapters
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import registry, routing  # noqa: E402
from ingest import embed as embed_module  # noqa: E402
from ingest.embed import get_embedder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OOD = "out-of-domain"


def questions(path: Path) -> list[str]:
    return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def fake_adapter(root: Path, name: str, qs: list[str], embedder, source: str) -> None:
    """The shipped adapter's PEFT files under another name, with a summary of `qs`."""
    staging = root.parent / f"staging-{name}"
    staging.mkdir()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(REPO / "adapters" / "medical-pubmedqa" / f, staging / f)
    info = registry.install(staging, name, registry.get("medical-pubmedqa", REPO / "adapters").card.to_dict(), root)
    routing.build_summary(info.path, qs, embedder, source=source)


def table(rows: list[list], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medquad", default="/work/shared/data/medquad", help="folder with qa_train.jsonl, qa_dev.jsonl")
    ap.add_argument("--threshold", type=float, default=routing.DEFAULT_THRESHOLD)
    ap.add_argument("--train-subset", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shipped", action="store_true", help="route with the shipped adapters' own summaries "
                    "(medical-pubmedqa, medical-consumer) instead of two stand-ins")
    args = ap.parse_args()
    medquad = Path(args.medquad)
    need = ["qa_dev.jsonl"] + ([] if args.shipped else ["qa_train.jsonl"])
    if not all((medquad / f).is_file() for f in need):
        sys.exit(f"MedQuAD QA files not found in {medquad} ({', '.join(need)}); pass --medquad DIR")
    embedder = get_embedder()
    if not args.shipped:
        train = {"pubmedqa": questions(REPO / "data/pubmedqa/train.jsonl"),
                 "medquad": questions(medquad / "qa_train.jsonl")}
        random.Random(args.seed).shuffle(train["medquad"])
        train["medquad"] = train["medquad"][: args.train_subset]
    pub, med = ("medical-pubmedqa", "medical-consumer") if args.shipped else ("pubmedqa", "medquad")
    dev = {pub: questions(REPO / "data/pubmedqa/dev.jsonl"), med: questions(medquad / "qa_dev.jsonl"),
           None: questions(REPO / "tests/data/out_of_domain.jsonl")}

    with tempfile.TemporaryDirectory() as tmp:
        root = REPO / "adapters" if args.shipped else Path(tmp) / "adapters"
        t0 = time.perf_counter()
        if args.shipped:  # the summaries the shipped adapters carry (their own training questions)
            train = {n: [""] * len(routing.load_summary(registry.get(n, root).path)[0]) for n in (pub, med)}
        else:
            for name, qs in train.items():
                fake_adapter(root, name, qs, embedder, source=name)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        router = routing.Router(root, threshold=args.threshold)
        load_s = time.perf_counter() - t0
        router.route(["warm-up question?"])
        items = [(q, gold) for gold, qs in dev.items() for q in qs]
        t0 = time.perf_counter()
        vecs = router.embed([q for q, _ in items])  # one batch
        embed_ms = (time.perf_counter() - t0) * 1000 / len(items)
        t0 = time.perf_counter()
        router.route_vectors(vecs)
        route_ms = (time.perf_counter() - t0) * 1000 / len(items)
        embed_module._QUERY_CACHE.clear()  # the single-question loop below pays each embedding
        single, single_vec = [], []
        step = max(1, len(items) // 100)
        for q, _ in items[::step]:  # one question per call, as a request would route
            t0 = time.perf_counter()
            router.route([q])
            single.append((time.perf_counter() - t0) * 1000)
        for v in vecs[::step]:  # the same questions, embedding already made (a separate loop: right after an
            t0 = time.perf_counter()  # embedding, torch's spinning threads would be timed too)
            router.route_vectors(v[None])
            single_vec.append((time.perf_counter() - t0) * 1000)
        cached = []
        for q, _ in items[::step]:  # what the engine pays with retrieval on: the query vector cache
            t0 = time.perf_counter()  # (ingest.embed.encode_queries) already holds the question's embedding
            router.route([q])
            cached.append((time.perf_counter() - t0) * 1000)

    def figures(threshold):
        router.threshold = threshold
        got = [r.adapter for r in router.route_vectors(vecs)]
        ind = [(g, gold) for g, (_, gold) in zip(got, items) if gold is not None]
        ood = [g for g, (_, gold) in zip(got, items) if gold is None]
        return got, sum(g == gold for g, gold in ind) / len(ind), sum(g is None for g in ood) / len(ood)

    print(f"summaries: {', '.join(f'{n} {len(q)} questions' for n, q in train.items())} (built in {build_s:.1f} s); "
          f"routed: {', '.join(f'{g or OOD} {len(q)}' for g, q in dev.items())}\n")
    print("threshold sweep (in-domain accuracy counts a None as wrong):\n")
    sweep = []
    for t in [round(0.25 + 0.025 * i, 3) for i in range(15)]:
        _, acc, ood = figures(t)
        sweep.append([t, f"{acc:.1%}", f"{ood:.1%}"])
    print(table(sweep, ["threshold", "in-domain accuracy", "out-of-domain -> None"]))
    got, acc, ood = figures(args.threshold)
    best = [r.score for r in router.route_vectors(vecs)]
    for gold in dev:
        vals = sorted(b for b, (_, gd) in zip(best, items) if gd == gold)
        print(f"best adapter score, {gold or OOD}: min {vals[0]:.3f}, 5th percentile "
              f"{vals[int(0.05 * (len(vals) - 1))]:.3f}, median {statistics.median(vals):.3f}, max {vals[-1]:.3f}")
    print(f"\nat threshold {args.threshold}: in-domain accuracy {acc:.1%} (target >= 95%), "
          f"out-of-domain -> None {ood:.1%} (target >= 80%)\n")
    labels = [pub, med, None]
    rows = [[gold or "out-of-domain"] + [sum(1 for g, (_, gd) in zip(got, items) if gd == gold and g == col)
                                         for col in labels] for gold in labels]
    print(table(rows, ["true \\ routed", pub, med, "None"]))
    for gold in labels:
        worst = [(s, q, g) for s, g, (q, gd) in zip(best, got, items) if gd == gold and g != gold]
        for s, q, g in sorted(worst, reverse=True)[:3]:
            print(f"  misrouted {gold or 'out-of-domain'} -> {g}: {s:.3f} {q[:90]!r}")
    p95 = lambda xs: sorted(xs)[int(0.95 * (len(xs) - 1))]  # noqa: E731
    print(f"\nrouter load (summaries + head fit): {load_s:.2f} s")
    print(f"time per question, batch of {len(items)}: embedding {embed_ms:.2f} ms + routing {route_ms:.3f} ms")
    print(f"one question per call ({len(single)} calls): route() p50 {statistics.median(single):.1f} ms, "
          f"p95 {p95(single):.1f} ms; route_vectors() on an embedding already made (e.g. retrieval's) "
          f"p50 {statistics.median(single_vec):.2f} ms, p95 {p95(single_vec):.2f} ms; route() again on the same "
          f"questions (their vectors in the query cache, as retrieval leaves them) p50 {statistics.median(cached):.2f} "
          f"ms, p95 {p95(cached):.2f} ms (target < 10 ms)")


if __name__ == "__main__":
    main()
