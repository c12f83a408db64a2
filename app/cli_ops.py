"""`loracle ops rollback|disable|enable|status|events|audit-export|bias-probe` (oversight of the adapters in
service, each change written to the audit log) and `loracle adapters route-summary` (the routing summary)."""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

_ROOT_HELP = "registry folder (default: adapters/, env LORACLE_ADAPTERS)"


def default_who() -> str:
    """The OS user running the command (the --who default)."""
    from app.audit import current_user

    return current_user()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ops", help="oversight: roll back, disable or enable an adapter; audit log export; bias probe")
    osub = p.add_subparsers(dest="ops_command", required=True)

    def change(cmd: str, help_: str):
        q = osub.add_parser(cmd, help=help_)
        q.add_argument("name", help="adapter name")
        q.add_argument("--reason", required=True, help="why (free text, stored in the audit log)")
        q.add_argument("--who", default=None, help="who makes the change (default: the OS user)")
        q.add_argument("--root", default=None, help=_ROOT_HELP)
        return q

    q = change("rollback", "make an earlier version current again (as a new version: history is append-only)")
    q.add_argument("--to-version", type=int, required=True, help="the version to bring back, e.g. 1")
    q.set_defaults(func=_run_rollback)
    change("disable", "take an adapter out of service until enabled (all versions)").set_defaults(
        func=functools.partial(_run_service, disabled=True))
    change("enable", "put a disabled adapter back in service").set_defaults(
        func=functools.partial(_run_service, disabled=False))

    q = osub.add_parser("status", help="each adapter: current version, enabled or disabled (by whom, why)")
    q.add_argument("--root", default=None, help=_ROOT_HELP)
    q.add_argument("--json", action="store_true", help="JSON output")
    q.set_defaults(func=_run_status)

    q = osub.add_parser("events", help="the oversight events in the audit log, newest first")
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--json", action="store_true", help="JSON output")
    q.set_defaults(func=_run_events)

    q = osub.add_parser("audit-export", help="write the audit log (answers or oversight events) as CSV or JSON")
    q.add_argument("--out", required=True, help="file to write")
    q.add_argument("--format", choices=("csv", "json"), default=None, help="default: from the --out suffix, else csv")
    q.add_argument("--table", choices=("answers", "events"), default="answers")
    q.set_defaults(func=_run_audit_export)

    q = osub.add_parser("bias-probe", help="counterfactual bias probe: decision flip rate per mode when only the "
                                           "patient group changes; --save stores it in the adapter's card")
    q.add_argument("name", help="adapter name")
    q.add_argument("--modes", default="base,lora,rag,lora+rag", help="comma-separated modes")
    q.add_argument("--index", default=None, help="index for the rag modes (default: the adapter's, else pubmedqa)")
    q.add_argument("--templates", default="research", choices=("research", "consumer"),
                   help="question templates: research (PubMedQA-style) or consumer (MedQuAD-style consumer health)")
    q.add_argument("--base-model", default=None, help="base model spec (default smollm2-135m-instruct)")
    q.add_argument("--root", default=None, help=_ROOT_HELP)
    q.add_argument("--save", action="store_true", help="store the result in the card (extra.bias_probe)")
    q.add_argument("--json", action="store_true", help="JSON output")
    q.set_defaults(func=_run_bias_probe)

    adapters = sub.choices.get("adapters")  # `loracle adapters route-summary` joins the adapters group
    groups = [a for a in getattr(adapters, "_actions", []) if isinstance(a, argparse._SubParsersAction)]
    target = groups[0] if groups else osub
    q = target.add_parser("route-summary", help="(re)build an adapter's routing summary from its training questions")
    q.add_argument("name", help="adapter name")
    q.add_argument("--data", required=True, help="QA JSONL with the adapter's training questions")
    q.add_argument("--root", default=None, help=_ROOT_HELP)
    q.set_defaults(func=_run_route_summary)


def _audit_event(kind: str, name: str, args: argparse.Namespace, detail: dict) -> str:
    from app.audit import AuditLog

    return AuditLog().event(kind, name, args.who or default_who(), args.reason, detail)


def _reason(args: argparse.Namespace) -> None:
    if not args.reason.strip():
        raise ValueError("--reason must say why (it is kept in the audit log)")


def _run_rollback(args: argparse.Namespace) -> int:
    from app import registry

    _reason(args)
    info = registry.rollback(args.name, args.to_version, args.root, who=args.who or default_who(), reason=args.reason)
    replaced = info.card.extra["rollback"]["replaced_version"]
    _audit_event("rollback", args.name, args, {"from_version": replaced, "to_version": args.to_version,
                                               "new_version": info.version})
    damaged = " (its card could not be read)" if "replaced_unreadable" in info.card.extra["rollback"] else ""
    print(f"{args.name}: v{args.to_version} is current again as {info.label} (replaced v{replaced}{damaged}, kept "
          f"under versions/)")
    return 0


def _run_service(args: argparse.Namespace, disabled: bool) -> int:
    """`ops disable` / `ops enable`: the registry status and its audit event."""
    from app import registry

    _reason(args)
    change = registry.disable if disabled else registry.enable
    status = change(args.name, args.root, reason=args.reason, who=args.who or default_who())
    _audit_event("disable" if disabled else "enable", args.name, args, {"version": status["version"]})
    print(f"{args.name} disabled (v{status['version']}): {args.reason}" if disabled
          else f"{args.name} enabled (v{status['version']})")
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from app import registry

    rows = []
    for a in registry.list_adapters(args.root):
        st = registry.status(a.name, args.root)
        rows.append({"name": a.name, "version": a.version, **st})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no adapters in {registry.root_dir(args.root)}")
    for r in rows:
        state = f"DISABLED by {r.get('who') or '?'} at {r.get('time', '?')}: {r.get('reason', '')}" if r["disabled"] \
            else "enabled"
        print(f"{r['name']}@v{r['version']:<4} {state}")
    return 0


def _run_events(args: argparse.Namespace) -> int:
    from app.audit import AuditLog

    events = AuditLog().events(limit=args.limit)
    if args.json:
        print(json.dumps(events, indent=2))
    elif not events:
        print("no oversight events recorded")
    for e in [] if args.json else events:
        print(f"{e['time']}  {e['kind']:9} {e['target']:24} by {e['who']}: {e['why']}")
    return 0


def _run_audit_export(args: argparse.Namespace) -> int:
    from app.audit import AuditLog

    fmt = args.format or ("json" if args.out.lower().endswith(".json") else "csv")
    log = AuditLog()
    n = log.export(args.out, fmt, table=args.table)
    print(f"wrote {n} {args.table} rows from {log.path} to {args.out} ({fmt})")
    return 0


def _relative_source(path: Path) -> str:
    """The data file as the card may record it: relative to the repository when inside it, else its name."""
    from ingest.config import home

    try:
        return path.resolve().relative_to(home().resolve()).as_posix()
    except ValueError:
        return path.name


def _run_route_summary(args: argparse.Namespace) -> int:
    from app import registry, routing
    from app.questions import load_questions

    info = registry.get(args.name, args.root)
    questions = [item.question for item in load_questions(args.data)]
    routing.build_summary(info.path, questions, source=_relative_source(Path(args.data)))
    print(f"{info.label}: routing summary of {len(questions)} questions written to "
          f"{info.path / routing.SUMMARY_WEIGHTS}")
    return 0


def _run_bias_probe(args: argparse.Namespace) -> int:
    from app import bias, registry
    from app.config import EngineConfig
    from app.engine import Engine

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    engine = Engine(EngineConfig.from_env(base_model=args.base_model, adapters_dir=args.root, adapters=(args.name,)))
    # every mode retrieves from the same index: the one named, else the adapter's (else the engine's)
    index = args.index or (registry.get(args.name, args.root).card.answer_settings or {}).get("index")
    pairs = bias.default_pairs(bias.TEMPLATE_SETS[args.templates])
    result = bias.probe(engine, args.name, modes=modes, index=index, pairs=pairs,
                        progress=lambda done, total: print(f"\r{done}/{total} answers", end="", file=sys.stderr))
    result["template_set"] = args.templates
    print(file=sys.stderr)
    if args.save:
        info = bias.record(args.name, result, args.root)
        print(f"stored in {info.path / 'card.json'} (extra.bias_probe)", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['adapter']}: {result['pairs']} pairs from {result['templates']} templates")
    for row in bias.summary_rows(result):
        dims = ", ".join(f"{k} {v}" for k, v in row.items() if k.endswith("flips"))
        same = (f"; same passages: flip rate {row['flip rate, same passages']} over "
                f"{row['pairs with the same passages']} pairs") if row["pairs with the same passages"] is not None else ""
        print(f"  {row['mode']:9} flip rate {row['flip rate']}  ({dims}; mean |dP(yes)| {row['mean |dP(yes)|']}{same})")
    return 0
