"""`loracle` command line. Thin: every behaviour lives in a module that tests call directly.

Each command group is registered by its own function below; heavy imports happen inside handlers.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")


# --- ingest / index / search commands (owner: ingestion) -------------------------------------
def _ingest_commands(sub: argparse._SubParsersAction) -> None:
    pass


# --- ask / compare / adapters / train commands (owner: engine) -------------------------------
def _engine_commands(sub: argparse._SubParsersAction) -> None:
    pass


# --- eval commands (owner: evaluation) --------------------------------------------------------
def _eval_commands(sub: argparse._SubParsersAction) -> None:
    pass


# --- ui command (owner: UI) ---------------------------------------------------------------------
def _ui_commands(sub: argparse._SubParsersAction) -> None:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loracle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _ingest_commands(sub)
    _engine_commands(sub)
    _eval_commands(sub)
    _ui_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
