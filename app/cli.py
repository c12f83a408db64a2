"""`loracle` command line. Thin: every behaviour lives in a module that tests call directly.

Each verb group registers itself from its own module (app.cli_ingest, app.cli_answer, app.cli_adapters,
app.cli_eval, app.cli_ui, app.cli_serve); heavy imports happen inside the handlers, so `loracle --help` stays fast.
Any error ends the command with one line on stderr and exit status 2; `loracle --debug ...` shows
the traceback too.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import traceback

import ingest.config  # noqa: F401  the one place that sets the offline environment (before any HF import)
from app import cli_adapters, cli_answer, cli_eval, cli_ingest, cli_ops, cli_serve, cli_ui

# errors whose message already says what went wrong and what to do; any other kind is named too
_USER_ERRORS = (ValueError, OSError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loracle", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback too")
    sub = parser.add_subparsers(dest="command", required=True)
    for verbs in (cli_ingest, cli_answer, cli_adapters, cli_eval, cli_ui, cli_serve, cli_ops):
        verbs.register(sub)
    return parser


def error_line(exc: BaseException) -> str:
    """One line for any exception: its message with line breaks folded, the type named when it is not a
    user error (e.g. "KeyError: 'x'")."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, _USER_ERRORS) and message:
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


INTERRUPTED = {  # what an interrupted command kept: every write is all-or-nothing (a temp file or a transaction)
    "ingest": ": nothing of this run was kept (an index changes all at once, so it is as it was before); run the "
              "same command again",
    "train": ": nothing was installed; the registry is as it was",
    "eval": ": results are written when a run ends, so none of this run's were; with --resume, modes already "
            "complete in --out are kept",
    "calibrate": ": no offsets were stored",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        verb = getattr(args.func, "__name__", "").removeprefix("_run_")
        print(f"interrupted{INTERRUPTED.get(verb, '')}", file=sys.stderr)
        if threading.active_count() > 1:  # a worker thread may be inside torch: leave now, without the teardown
            sys.stdout.flush()            # that would abort in C++ ("terminate called without an active exception")
            sys.stderr.flush()
            os._exit(130)
        return 130
    except BrokenPipeError:  # the reader went away (`loracle ... | head`): nothing to report
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        except (OSError, ValueError):
            pass
        return 141
    except Exception as exc:  # noqa: BLE001 - the boundary: one readable line, the traceback on request
        if args.debug:
            traceback.print_exc()
        print(f"error: {error_line(exc)}" + ("" if args.debug else "  (rerun as `loracle --debug ...` for the "
                                               "traceback)"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
