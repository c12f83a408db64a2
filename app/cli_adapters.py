"""`loracle adapters list|show|remove|export-vllm|merge` and `loracle train`: the adapter registry and its inputs."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapters", help="list, show or remove adapters in the registry")
    asub = p.add_subparsers(dest="adapters_command", required=True)
    for cmd, help_, func in (("list", "list installed adapters", _run_list),
                             ("show", "show an adapter's card (NAME or NAME@vN)", _run_show),
                             ("remove", "delete an adapter and all its versions", _run_remove)):
        q = asub.add_parser(cmd, help=help_)
        if cmd != "list":
            q.add_argument("name")
        if cmd == "remove":
            q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
            q.add_argument("--reason", default="", help="why (kept with the event in the audit log)")
        q.add_argument("--root", default=None, help="registry folder (default: adapters/, env LORACLE_ADAPTERS)")
        q.add_argument("--json", action="store_true", help="JSON output")
        q.set_defaults(func=func)
    q = asub.add_parser("export-vllm", help="print the `vllm serve` command that serves every current adapter")
    q.add_argument("--root", default=None, help="registry folder (default: adapters/, env LORACLE_ADAPTERS)")
    q.add_argument("--base-model", default=None, help="the base model's hub id or folder for vLLM (default: the "
                   "adapters' base_model_name_or_path, else their card's base model)")
    q.add_argument("--host", default="127.0.0.1", help="address vLLM will listen on (default 127.0.0.1)")
    q.add_argument("--port", type=int, default=8000, help="port vLLM will listen on (default 8000)")
    q.set_defaults(func=_run_export_vllm)
    q = asub.add_parser("merge", help="install NAME as the weighted merge of adapters (a seed ensemble at one "
                        "adapter's cost)")
    q.add_argument("name", help="the merged adapter's name (an existing name gets a new version)")
    q.add_argument("sources", nargs="+", help="adapters to merge, NAME or NAME@vN (two or more)")
    q.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one positive weight per source (default: equal weights 1/n, the average)")
    q.add_argument("--base-model", default=None, help="base model to load (default: the sources' card names it)")
    q.add_argument("--root", default=None, help="registry folder (default: adapters/, env LORACLE_ADAPTERS)")
    q.set_defaults(func=_run_merge)

    from app.train import add_arguments

    p = sub.add_parser("train", help="train a LoRA adapter on a QA JSONL file and install it in the registry")
    add_arguments(p)
    p.set_defaults(func=_run_train)


def _run_list(args: argparse.Namespace) -> int:
    from app import registry

    good, bad = registry.scan(args.root)
    if args.json:
        print(json.dumps({"adapters": [{"name": a.name, "version": a.version, "base_model": a.base_model,
                                        "path": str(a.path)} for a in good],
                          "invalid": [{"path": str(p), "reason": r} for p, r in bad]}, indent=2))
        return 0
    if not good and not bad:
        print(f"no adapters in {registry.root_dir(args.root)}; train one with `loracle train`")
    if good:
        print(f"{'adapter':32} {'base model':40} evaluation stored for this version (accuracy / macro-F1 per mode, "
              f"else ROUGE-L)")
    for a in good:
        evals = a.card.evals.get(f"v{a.version}") or {}
        score = " ".join(f"{m} {_fig(v.get('accuracy'))}/{_fig(v.get('macro_f1'))}" if "accuracy" in v else
                         f"{m} ROUGE-L {_fig(v.get('rouge_l'))}" for m, v in evals.items()
                         if isinstance(v, dict) and ("accuracy" in v or "rouge_l" in v))
        print(f"{a.label:32} {a.base_model:40} {score or '–'}")
    for p, r in bad:
        print(f"INVALID {p.name}: {r}", file=sys.stderr)
    return 0


def _fig(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _run_show(args: argparse.Namespace) -> int:
    from app import registry

    info = registry.get_spec(args.name, args.root)  # NAME or NAME@vN
    unreadable: list = []
    lineage = [v.label for v in registry.versions(info.name, args.root, unreadable)]
    for path, reason in unreadable:
        print(f"INVALID {info.name} {path.name} (left out of the lineage): {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({"path": str(info.path), "lineage": lineage, "card": info.card.to_dict()}, indent=2))
    else:
        print(f"path: {info.path}\nlineage: {' -> '.join(lineage)}\n")
        print(registry.render_readme(info.card))
    return 0


def _run_remove(args: argparse.Namespace) -> int:
    from app import registry

    from app.audit import registry_event

    try:
        info = registry.get(args.name, args.root)
        what, version = f"{info.path} and its {info.version} version(s)", info.version
    except ValueError as exc:  # a damaged card: removing it is the way out
        what, version = f"{registry.root_dir(args.root) / args.name} (unreadable: {exc})", None
    if not args.yes and sys.stdin.isatty():
        if input(f"delete {what}? [y/N] ").strip().lower() != "y":
            print("kept")
            return 1
    path = registry.remove(args.name, args.root)
    registry_event("remove", args.name, {"current_version": version, "path": str(path)}, why=args.reason)
    print(f"removed {path}")
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from app.merge import merge

    from app.audit import registry_event

    info = merge(args.name, args.sources, args.weights, args.root, args.base_model)
    registry_event("install", args.name, {"version": info.version, "by": "merge", "sources": args.sources})
    rank = json.loads((info.path / "adapter_config.json").read_text())["r"]
    print(f"installed {info.label} at {info.path} (rank {rank}, from {', '.join(info.card.hyperparameters['sources'])})")
    return 0


def _run_train(args) -> int:
    from app.train import config_from_args, train

    from app.audit import registry_event

    info = train(config_from_args(args))
    registry_event("install", info.name, {"version": info.version, "by": "train", "data": args.data})
    card, nan = info.card, float("nan")
    merged = card.extra.get("merged_from") or []
    if merged:
        runs = [(f"seed {(m.get('hyperparameters') or {}).get('seed')}: ", m.get("train_loss"), m.get("val_loss"))
                for m in merged]
    else:
        runs = [("", card.loss_curve[-1].loss if card.loss_curve else nan,
                 card.val_loss_curve[-1].loss if card.val_loss_curve else nan)]
    what = f" (equal-weight merge of {len(merged)} seeds)" if merged else ""
    print(f"installed {info.label} at {info.path}{what}, {card.training_time_s or 0:.0f} s")
    for label, loss, val in runs:
        print(f"{label}train loss {_loss(loss)}, val loss {_loss(val)}")
    return 0


def _loss(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


def vllm_commands(root=None, base_model: str | None = None, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    """One `vllm serve` command per base model among the registry's current adapters (normally one)."""
    import shlex
    from pathlib import Path

    from app import registry

    groups: dict[str, list[tuple[str, Path, int]]] = {}
    for a in registry.list_adapters(root):
        cfg = json.loads((a.path / "adapter_config.json").read_text())
        base = base_model or cfg.get("base_model_name_or_path") or a.base_model
        if not base or (not base_model and Path(base).is_absolute() and not Path(base).is_dir()):
            base = a.base_model  # a trainer's machine path names no model here: the card's name does
        if not base:
            raise ValueError(f"adapter {a.name} names no base model; pass --base-model HUB_ID")
        groups.setdefault(base, []).append((a.name, a.path.resolve(), int(cfg.get("r") or 8)))
    if not groups:
        raise FileNotFoundError(f"no adapters in {registry.root_dir(root)}; train one with `loracle train`")
    out = []
    for base, items in groups.items():
        rank = max(r for _, _, r in items)
        max_rank = next((v for v in VLLM_LORA_RANKS if v >= rank), rank)
        modules = " ".join(shlex.quote(f"{name}={path}") for name, path, _ in items)
        out.append(f"vllm serve {shlex.quote(base)} --host {host} --port {port} --enable-lora "
                   f"--max-lora-rank {max_rank} --max-loras {len(items)} --lora-modules {modules}")
    return out


def _run_export_vllm(args: argparse.Namespace) -> int:
    for command in vllm_commands(args.root, args.base_model, args.host, args.port):
        print(command)
    print(f"# then: loracle ask \"...\" --adapter NAME --backend openai --server-url http://{args.host}:{args.port}/v1"
          f" (or LORACLE_BACKEND=openai LORACLE_SERVER_URL=http://{args.host}:{args.port}/v1 loracle ui)")
    return 0
