"""`loracle` itself: verbs registered from their modules, defaults from app.config, errors as one line."""
from __future__ import annotations

import pytest

from app.cli import build_parser, error_line, main
from app.config import DEFAULT_INDEX


def test_an_error_is_one_line_with_a_hint_and_debug_adds_the_traceback(tmp_path, capsys):
    assert main(["adapters", "show", "nope", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no adapter 'nope'") and err.count("\n") == 1, err
    assert "--debug" in err and "Traceback" not in err
    assert main(["--debug", "adapters", "show", "nope", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "FileNotFoundError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: no adapter 'nope'")


def test_error_line_folds_lines_and_names_unexpected_kinds():
    assert error_line(ValueError("bad value\n  fix it")) == "bad value fix it"
    assert error_line(KeyError("x")) == "KeyError: 'x'"
    assert error_line(RuntimeError()) == "RuntimeError"


def test_index_defaults_come_from_app_config():
    parser = build_parser()
    assert parser.parse_args(["ingest", "docs/"]).index == DEFAULT_INDEX
    assert parser.parse_args(["search", "q"]).index == DEFAULT_INDEX
    assert parser.parse_args(["ask", "q"]).index is None  # the engine's own default applies
    assert parser.parse_args(["--debug", "index", "list"]).debug


def test_counts_and_choices_are_refused_by_the_parser_before_any_model_loads(capsys):
    parser = build_parser()
    for argv, message in ((["ask", "q", "-k", "0"], "-k: 0 is not allowed here"),
                          (["ask", "q", "--max-new-tokens", "-1"], "--max-new-tokens: -1 is not allowed here"),
                          (["eval", "--data", "d.jsonl", "--limit", "0"], "--limit: 0 is not allowed here"),
                          (["eval", "--data", "d.jsonl", "-k", "two"], "'two' is not a whole number"),
                          (["eval", "--data", "d.jsonl", "--decisions", "scroed"], "invalid choice: 'scroed'")):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert parser.parse_args(["eval", "--data", "d.jsonl", "-k", "2"]).k == 2


def test_retrieval_settings_without_rag_are_refused(capsys):
    assert main(["ask", "Is aspirin safe?", "--index", "mine"]) == 2
    assert "--index mine sets retrieval, which is off: add --rag" in capsys.readouterr().err
    assert main(["ask", "Is aspirin safe?", "--rag", "--index", "no-such-index"]) == 2  # before any model loads
    assert "no index at" in capsys.readouterr().err


def test_an_interrupted_command_says_what_was_kept(monkeypatch, capsys):
    import threading

    from app import cli, cli_ingest

    def _run_ingest(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_ingest, "_run_ingest", _run_ingest)
    monkeypatch.setattr(threading, "active_count", lambda: 1)  # no worker thread: a normal return, no os._exit
    assert cli.main(["ingest", "x.txt", "--index", "mine"]) == 130
    assert "interrupted: nothing of this run was kept" in capsys.readouterr().err
