"""Every config round-trips through its command-line flags: config -> flags -> parse -> config."""
from __future__ import annotations

import argparse

import pytest

from app.cliconfig import add_arguments, from_args, overrides, to_flags
from app.config import EngineConfig
from app.evaluate import EvalConfig
from app.train import TrainConfig, command_for


def _round_trip(cfg, **kw):
    parser = argparse.ArgumentParser()
    add_arguments(parser, type(cfg), **kw)
    return from_args(type(cfg), parser.parse_args(to_flags(cfg)))


@pytest.mark.parametrize("cfg", [
    TrainConfig(data="d.jsonl", name="n"),
    TrainConfig(data="d.jsonl", name="n", epochs=1.5, layers=8, retrieval_aware=True, class_balance=True,
                decision_weight=5.0, passage_chars=None, target_modules=("q_proj", "v_proj"), limit=10,
                threads=1, parent="p"),
    TrainConfig(data="d.jsonl", name="n", threads=None),
    EvalConfig(data="dev.jsonl"),
    EvalConfig(data="dev.jsonl", modes=("lora", "rag"), k=2, decisions="both", calibrate=False, few_shot=3,
               few_shot_data="train.jsonl", split_by_retrieval=False, limit=5, n_resamples=200),
    EngineConfig(),
    EngineConfig(base_model="m", k=5, hybrid=True, decisions=False, calibrate=False, threads=1,
                 adapters=("a", "b"), passage_chars=900),
])
def test_every_config_round_trips_through_its_flags(cfg):
    assert _round_trip(cfg) == cfg


def test_unset_flags_leave_the_environment_and_defaults_in_charge(monkeypatch):
    parser = argparse.ArgumentParser()
    add_arguments(parser, EngineConfig, unset_defaults=True)
    args = parser.parse_args(["--no-calibrate", "--max-new-tokens", "9"])
    assert overrides(EngineConfig, args) == {"calibrate": False, "max_new_tokens": 9}
    monkeypatch.setenv("LORACLE_INDEX", "mydocs")
    monkeypatch.setenv("LORACLE_MAX_NEW_TOKENS", "64")
    cfg = EngineConfig.from_env(**overrides(EngineConfig, args))
    assert (cfg.index, cfg.max_new_tokens, cfg.calibrate, cfg.k) == ("mydocs", 9, False, 3)
    monkeypatch.setenv("LORACLE_K", "many")
    with pytest.raises(ValueError, match="LORACLE_K"):
        EngineConfig.from_env()
    monkeypatch.setenv("LORACLE_K", "3")
    monkeypatch.setenv("LORACLE_MAX_NEW_TOKENS", "-1")  # checked as the flag is, naming the variable
    with pytest.raises(ValueError, match=r"\$LORACLE_MAX_NEW_TOKENS='-1': max_new_tokens must be at least 1"):
        EngineConfig.from_env()
    from ingest.safety import SafetyLimits, UnsafeInput

    monkeypatch.setenv("LORACLE_MAX_QUESTION_CHARS", "-1")
    with pytest.raises(UnsafeInput, match="LORACLE_MAX_QUESTION_CHARS='-1' must be above 0"):
        SafetyLimits.from_env()


def test_train_reproduce_command_parses_back_to_the_same_config(tmp_path, monkeypatch):
    import shlex

    from app.cli import build_parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text("{}\n")
    cfg = TrainConfig(data=str(tmp_path / "train.jsonl"), name="n", retrieval_aware=True, class_balance=False,
                      epochs=2.0)
    argv = shlex.split(command_for(cfg))[1:]
    assert "--data" in argv and argv[argv.index("--data") + 1] == "train.jsonl"  # relative, not this machine's path
    back = from_args(TrainConfig, build_parser().parse_args(argv), skip=())
    assert back == TrainConfig(**{**cfg.__dict__, "data": "train.jsonl"})


def test_public_api_imports_from_the_packages():
    from app import Answer, Engine, EngineConfig, Request  # noqa: F401
    from ingest import Index, ingest_paths  # noqa: F401

    assert Engine.answer.__doc__ and ">>>" not in Engine.answer.__doc__ and "engine.answer(" in Engine.answer.__doc__
