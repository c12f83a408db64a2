"""Engine speed on the real default model, measured side by side in one run; prints ratios.

  adapter switch time        answers alternating base/lora vs the same mode twice, 1 new token each
  4 modes batched vs 1       engine.compare (one generate call) vs one lora+rag answer (target <= 1.5x)
  LoRA unmerged vs base      decode time per token with the adapter on vs off (target <= 1.15x)
  tokens/s at batch 1 and 4  with torch's default threads ("before") and the engine's setting ("after")
  decision scoring cost      the same answer with the yes/no/maybe options scored vs free (target < 2%)

Uses adapters/medical-pubmedqa when installed, else a random-init LoRA (same shape as training's
default) in a temporary registry. Rows are forced to the same length (eos ignored) so that times compare.
The CPU may be shared: every figure is the median of a few repeats, taken interleaved.
Usage: python benchmarks/engine.py [--new-tokens 24] [--repeats 3] [--index pubmedqa] [-k 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "Do statins reduce the risk of stroke in elderly patients with high cholesterol?"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_of(fn, repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def adapter_root(info) -> tuple[str, str]:
    from app import registry
    from app.config import DEFAULT_ADAPTER

    try:
        a = registry.get(DEFAULT_ADAPTER)
        registry.check_compatible(a, info.name)
        return str(a.path.parent), f"{a.label} (shipped)"
    except (FileNotFoundError, ValueError):
        from tests.tiny_adapter import card_for, make_adapter

        root = Path(tempfile.mkdtemp(prefix="loracle-bench-")) / "adapters"
        staging = make_adapter(info.path, root.parent / "staging", rank=16, std=0.02,
                               targets=("q_proj", "k_proj", "v_proj", "o_proj"))
        registry.install(staging, DEFAULT_ADAPTER, card_for(info.path), root)
        return str(root), "random-init LoRA r=16 on q,k,v,o (no shipped adapter yet)"


def scoring_cost(engine, ad: str, n: int, r: int) -> None:
    """Same prompt, same length: scored (option log-probs + forced opening) vs free, interleaved, with and
    without passages; the extra work is one log-softmax over the vocabulary per row."""
    for label, kw in (("question only", {}), ("with passages", {"retrieval": True})):
        free_s, scored_s = [], []
        for _ in range(r * 2):
            free_s.append(timed(lambda: engine.answer(QUESTION, adapter=ad, max_new_tokens=n, decide=False, **kw)))
            scored_s.append(timed(lambda: engine.answer(QUESTION, adapter=ad, max_new_tokens=n, decide=True, **kw)))
        fr, sc = statistics.median(free_s), statistics.median(scored_s)
        print(f"decision scoring vs free answer, {label}: {sc / fr:.3f}x ({(sc / fr - 1) * 100:+.1f}%; free "
              f"{fr:.3f} s, scored {sc:.3f} s, {n} tokens; target < 2%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--index", default="pubmedqa")
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--scoring-only", action="store_true", help="measure only the decision-scoring cost")
    args = ap.parse_args()

    import torch

    from app.config import DEFAULT_ADAPTER, EngineConfig, default_threads
    from app.engine import Engine, Request
    from app.models import resolve

    info = resolve(None)
    root, what = adapter_root(info)
    t0 = time.perf_counter()
    engine = Engine(EngineConfig(adapters_dir=root, adapters=(), max_new_tokens=args.new_tokens))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.load_adapter(DEFAULT_ADAPTER)
    adapter_load_s = time.perf_counter() - t0
    engine.backend.force_length = True
    n, r, ad = args.new_tokens, args.repeats, DEFAULT_ADAPTER
    print(f"model {info.name}; adapter {what}; cores {os.cpu_count()}; engine threads {torch.get_num_threads()}; "
          f"load avg {os.getloadavg()[0]:.1f} (shared CPU: absolute times vary, ratios are side by side)")
    print(f"engine start {load_s:.2f} s; adapter load from disk {adapter_load_s:.3f} s")
    engine.answer(QUESTION, max_new_tokens=2)
    engine.answer(QUESTION, adapter=ad, max_new_tokens=2)

    if args.scoring_only:
        return scoring_cost(engine, ad, n, r)

    # adapter switch: alternating modes vs repeating one mode, one new token per answer
    same = alt = 0.0
    for _ in range(r * 2):
        same += timed(lambda: engine.answer(QUESTION, adapter=ad, max_new_tokens=1))
        same += timed(lambda: engine.answer(QUESTION, adapter=ad, max_new_tokens=1))
        alt += timed(lambda: engine.answer(QUESTION, max_new_tokens=1))
        alt += timed(lambda: engine.answer(QUESTION, adapter=ad, max_new_tokens=1))
    switch_ms = (alt - same) / (r * 4) * 1000
    with engine._lock:
        t0 = time.perf_counter()
        for _ in range(100):
            engine.model.set_adapter(ad)
            with engine.model.disable_adapter():
                pass
        toggle_us = (time.perf_counter() - t0) / 200 * 1e6
    print(f"adapter switch: {switch_ms:+.1f} ms per answer (alternating vs same mode, noise level); "
          f"PEFT toggle {toggle_us:.0f} us; weights never reloaded")

    # LoRA unmerged vs base decode, batch 1, interleaved
    base_s, lora_s = [], []
    for _ in range(r):
        base_s.append(timed(lambda: engine.answer(QUESTION, max_new_tokens=n)))
        lora_s.append(timed(lambda: engine.answer(QUESTION, adapter=ad, max_new_tokens=n)))
    b, lo = statistics.median(base_s), statistics.median(lora_s)
    print(f"LoRA unmerged vs base decode: {lo / b:.2f}x  (base {n / b:.1f} tok/s, lora {n / lo:.1f} tok/s; "
          f"target <= 1.15x)")

    scoring_cost(engine, ad, n, r)

    # four modes batched vs one single-mode answer
    have_index = True
    try:
        from app.retrieve import get_retriever

        get_retriever(args.index).search(QUESTION, k=1)
    except Exception as exc:  # no index built: compare the two non-retrieval modes instead
        have_index = False
        print(f"(index '{args.index}' unavailable: {exc}; four-mode figure skipped)")
    if have_index:
        one_s, four_s = [], []
        for _ in range(r):
            one_s.append(timed(lambda: engine.answer(QUESTION, adapter=ad, retrieval=True, index=args.index,
                                                     k=args.k, max_new_tokens=n)))
            four_s.append(timed(lambda: engine.compare(QUESTION, adapter=ad, index=args.index, k=args.k,
                                                       max_new_tokens=n)))
        one, four = statistics.median(one_s), statistics.median(four_s)
        engine.backend.prefill_rows = False  # the plain padded batch, for comparison
        padded = timed(lambda: engine.compare(QUESTION, adapter=ad, index=args.index, k=args.k, max_new_tokens=n))
        engine.backend.prefill_rows = True
        a = engine.answer(QUESTION, adapter=ad, retrieval=True, index=args.index, k=args.k, max_new_tokens=n)
        seq = 2 * b + 2 * one
        print(f"4 modes batched vs one lora+rag answer: {four / one:.2f}x  (batched {four:.2f} s, one {one:.2f} s, "
              f"4 sequential ~{seq:.2f} s, padded batch without per-row prefill {padded:.2f} s; k={args.k}, rag prompt {a.timings['prompt_tokens']} tokens; target <= 1.5x)")
    two = median_of(lambda: engine.answer_batch([Request(QUESTION), Request(QUESTION, ad)]), r)
    print(f"2 modes (base+lora) batched vs one base answer: {two / b:.2f}x")

    # tokens/s at batch 1 and 4: torch's default threads (before) vs the engine's setting (after)
    def tps(batch: int, tokens: int, repeats: int) -> float:
        reqs = [Request(QUESTION, max_new_tokens=tokens) for _ in range(batch)]
        return batch * tokens / median_of(lambda: engine.answer_batch(reqs), repeats)

    after = {bs: tps(bs, n, r) for bs in (1, 4)}
    torch.set_num_threads(os.cpu_count() or 2)  # "before" can be very slow on a busy CPU: fewer tokens
    before = {bs: tps(bs, max(4, n // 3), 1) for bs in (1, 4)}
    torch.set_num_threads(default_threads())
    print(f"tokens/s batch 1: before ({os.cpu_count()} threads) {before[1]:.1f} -> after ({default_threads()} "
          f"thread(s)) {after[1]:.1f}")
    print(f"tokens/s batch 4: before {before[4]:.1f} -> after {after[4]:.1f}")
    print(f"load avg at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
