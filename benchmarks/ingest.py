"""Ingest throughput: chunks/s of the full pipeline (load -> chunk -> embed -> write the index) vs a
raw `SentenceTransformer.encode` of the very same chunk texts, side by side in one run.
Target: ratio >= 0.90 (loading and chunking overlap with embedding in a background thread).

    .venv/bin/python benchmarks/ingest.py [--files 100] [--records 300]

Two inputs: N mixed-format files from ../shared/data/pubmedqa/docs (txt/md/html/pdf through the real
loaders) and N records of the shipped JSONL corpus. The raw encode of the pipeline's chunk texts is
timed twice and averaged, because the CPU is shared and its speed drifts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.config import IngestConfig, home  # noqa: E402
from ingest.embed import get_embedder  # noqa: E402
from ingest.index import Index  # noqa: E402
from ingest.pipeline import ingest_paths  # noqa: E402

SHARED_DOCS = home().parent / "shared" / "data" / "pubmedqa" / "docs"


def raw_encode_s(texts: list[str], batch_size: int) -> float:
    model = get_embedder().model
    t0 = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return time.perf_counter() - t0


def measure(label: str, inputs: list[Path], work: Path) -> float:
    cfg = IngestConfig()
    target = work / f"ix-{label}"
    t0 = time.perf_counter()
    report = ingest_paths(inputs, index=target, config=cfg)
    pipeline_s = time.perf_counter() - t0
    assert not report.rejected, report.rejected[:3]
    ix = Index.open(target)
    texts = [c.text for _, c in ix.iter_chunks()]
    ix.close()
    raw_before = raw_encode_s(texts, cfg.batch_size)
    raw_after = raw_encode_s(texts, cfg.batch_size)
    raw_s = (raw_before + raw_after) / 2
    n = len(texts)
    ratio = (n / pipeline_s) / (n / raw_s)
    print(f"{label:<22} {len(report.added):>5} docs {n:>6} chunks | pipeline {n / pipeline_s:7.1f} chunks/s "
          f"| raw encode {n / raw_s:7.1f} chunks/s (runs {raw_before:.1f}s, {raw_after:.1f}s) | ratio {ratio:.2f}")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100, help="mixed-format files from shared/data/pubmedqa/docs")
    ap.add_argument("--records", type=int, default=300, help="records of data/pubmedqa/corpus.jsonl")
    args = ap.parse_args()
    print("load average (1, 5, 15 min) at start: %.1f %.1f %.1f on %d cores" % (*os.getloadavg(), os.cpu_count()))
    get_embedder().encode(["warm up the model"] * 8)  # load + warm, outside every timing
    from ingest.load import use_packaged_spacy_model, load

    use_packaged_spacy_model()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ratios = []
        if SHARED_DOCS.is_dir() and args.files:
            files = sorted(SHARED_DOCS.iterdir())
            step = max(1, len(files) // args.files)
            picked = files[::step][:args.files]
            formats = {}
            for p in picked:
                formats[p.suffix] = formats.get(p.suffix, 0) + 1
            # one-time parser start-up (unstructured + spaCy ~1.4 s, pdfminer ~1.5 s) is paid once per process,
            # like loading the embedder: warm each format on a file outside the timed set
            for ext in formats:
                load(next(p for p in files if p.suffix == ext and p not in picked))
            print(f"files: {formats}")
            ratios.append(measure("mixed-format files", picked, work))
        if args.records:
            lines = (home() / "data" / "pubmedqa" / "corpus.jsonl").read_text().splitlines()[:args.records]
            corpus = work / "corpus.jsonl"
            corpus.write_text("\n".join(lines) + "\n")
            ratios.append(measure("JSONL corpus records", [corpus], work))
            shutil.rmtree(work / "ix-JSONL corpus records", ignore_errors=True)
    print(f"worst ratio {min(ratios):.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
