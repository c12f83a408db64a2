"""`loracle eval`: a question set in the four modes, with metrics, charts and regression reports."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


EVAL_DESCRIPTION = ("Run every question of a QA JSONL file in every mode (batched across modes) and write "
        "results.jsonl, summary.json, summary.md and PNG charts into --out. With --compare A B, report "
        "which questions got worse/better from A to B; A and B are results folders or adapters "
        "(NAME, NAME@vN or a folder) evaluated now on --data.")
CALIBRATE_DESCRIPTION = (
    "Score the yes/no/maybe options of every labelled question in each mode, fit per-mode offsets that maximise "
    "macro-F1, print a k-fold cross-validated estimate, and store the offsets: base and rag modes beside the "
    "registry (base-calibration.json, per base model), lora and lora+rag modes in the adapter's card. Never "
    "calibrate on the set you report.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a question set in the four modes; write results, metrics, charts",
                       description=EVAL_DESCRIPTION)
    from app.cliconfig import add_arguments
    from app.evaluate import EvalConfig

    add_arguments(p, EvalConfig, skip=("modes", "judge"))
    p.add_argument("--modes", default=None, help="comma-separated modes (default: base,lora,rag,lora+rag; "
                   "lora,lora+rag when --compare evaluates adapters; fewshot is added by --few-shot N)")
    p.add_argument("--judge", nargs="?", const="default", default=None, metavar="MODEL",
                   help="score faithfulness of rag answers with a local judge model (default: the base model)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="regression report of B against A (results folders or adapters)")
    p.set_defaults(func=_run_eval)
    register_calibrate(sub)


def _run_eval(args: argparse.Namespace) -> int:
    from app.cliconfig import from_args
    from app.evaluate import EvalConfig, run_compare, run_eval
    from app.types import MODES

    compare_runs = args.compare and not all((Path(s) / "results.jsonl").is_file() for s in args.compare)
    if not args.data and (not args.compare or compare_runs):
        raise ValueError("--data FILE.jsonl is required (unless --compare names two results folders)")
    modes = args.modes.split(",") if args.modes else (["lora", "lora+rag"] if compare_runs else list(MODES))
    cfg = from_args(EvalConfig, args, skip=("modes",), modes=tuple(modes))
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        from tqdm import tqdm

        if bar is None or bar.total != total or done < bar.n:
            bar = tqdm(total=total, unit="answer", desc="eval", file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    if args.compare:
        report = run_compare(cfg, args.compare[0], args.compare[1], progress=progress)
        print(report["markdown"])
        print(f"written: {report['out']}/compare.md, compare.json")
        return 0
    result = run_eval(cfg, progress=progress)
    from app.eval_report import summary_markdown

    print(summary_markdown(result.summary))
    print(f"written: {', '.join(result.extra['written'])}")
    if result.extra.get("card"):
        print(f"stored in the card of {result.extra['card']}")
    return 0


def register_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit yes/no/maybe calibration offsets on a labelled set and store them",
                       description=CALIBRATE_DESCRIPTION)
    p.add_argument("--data", required=True, help="labelled QA JSONL (final_decision yes/no/maybe)")
    p.add_argument("--modes", default="base,rag,lora,lora+rag", help="comma-separated modes (default: all four)")
    p.add_argument("--adapter", default=None, help="adapter for the lora modes (default: medical-pubmedqa)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N questions")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for the printed estimate (default 5)")
    p.add_argument("--dry-run", action="store_true", help="fit and print, store nothing")
    p.add_argument("--replace", action="store_true",
                   help="store even over offsets fitted on more questions (refused by default)")
    p.add_argument("--base-model", default=None, help="base model spec (default smollm2-135m-instruct)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from app import calibration, registry
    from app.config import DEFAULT_ADAPTER, EngineConfig
    from app.engine import Engine
    from app.evaluate import load_questions, parse_modes
    from app.models import sha256_file

    asked = parse_modes(args.modes)
    if "top1" in asked:
        raise ValueError("--modes top1: the extractive baseline makes no yes/no/maybe decision, so it has no "
                         "offsets; calibrate base, rag, lora or lora+rag")
    modes = [m for m in asked if m != "fewshot"]
    items = load_questions(args.data, args.limit)
    engine = Engine(EngineConfig.from_env(base_model=args.base_model, threads=args.threads, adapters=()))
    stored = []
    base_modes = [m for m in modes if not m.startswith("lora")]
    groups = [(base_modes, None, items, None)] if base_modes else []
    lora_modes = [m for m in modes if m.startswith("lora")]
    if lora_modes:
        ref, info = engine.resolve(args.adapter or DEFAULT_ADAPTER)
        if ref.key != ref.name and not args.dry_run:
            raise ValueError(f"{args.adapter} is not the registry's current version of an adapter; offsets are "
                             f"stored in the current version's card only (use --dry-run to just print them)")
        ref = engine.load_adapter(ref)
        if "lora+rag" in lora_modes:
            engine.build_card_index(ref)
        kept, note = calibration.items_for_adapter(items, info.card, sha256_file(Path(args.data)), ref.label)
        groups.append((lora_modes, ref, kept, note))
    for group_modes, ref, group_items, note in groups:
        if not args.dry_run:  # before the fit: minutes of scoring, then a refusal, would waste them
            stored_table = (calibration.load_base(engine.root, engine.info.name) if ref is None
                            else registry.get(ref.name, engine.root).card.calibration or {})
            calibration.check_replace(stored_table, group_modes, sum(1 for it in group_items if it.final_decision),
                                      Path(args.data).name, args.replace)
    for group_modes, ref, group_items, note in groups:
        scores: dict = {}
        table = calibration.fit(engine, group_items, group_modes, ref, data=args.data, scores=scores)
        if note:
            table["fitted_on"]["note"] = note
        gold = [it.final_decision for it in group_items if it.final_decision]
        for mode in group_modes:
            cv = calibration.cross_validate(scores[mode], gold, args.folds)
            print(f"{mode:9s} offsets {table[mode]}  {args.folds}-fold CV on {cv['n']}: accuracy "
                  f"{cv['accuracy']:.3f} macro-F1 {cv['macro_f1']:.3f} (uncalibrated {cv['uncalibrated_accuracy']:.3f}"
                  f" / {cv['uncalibrated_macro_f1']:.3f})")
        if args.dry_run:
            continue
        if ref is None:
            stored.append(str(calibration.save_base(engine.root, engine.info.name, table)))
        else:
            registry.record_calibration(ref.name, table, engine.root)
            stored.append(f"card of {ref.label}")
    print("stored in: " + (", ".join(stored) if stored else "nothing (--dry-run)"))
    return 0
