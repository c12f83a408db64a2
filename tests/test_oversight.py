"""Oversight controls on a real registry of tiny PEFT adapters: rollback (append-only), disable / enable, the
lineage graph, and the `loracle ops` commands writing audit events."""
from __future__ import annotations

import json
import shutil

import pytest

from app import lineage, registry
from tests.tiny_adapter import card_for, make_adapter


@pytest.fixture(scope="module")
def peft_folders(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("peft")
    return [make_adapter(tiny_model_dir, d / f"s{seed}", seed=seed) for seed in (1, 2, 3)]


@pytest.fixture()
def three_versions(peft_folders, tiny_model_dir, tmp_path):
    """med v1, v2, v3 from different weights, with eval evidence on v1 and v2 and calibration on v1."""
    root = tmp_path / "adapters"
    for i, folder in enumerate(peft_folders, 1):
        staging = tmp_path / f"staging-{i}"
        shutil.copytree(folder, staging)
        (staging / "routing.json").write_text(json.dumps({"v": i}))  # a per-version file that travels along
        registry.install(staging, "med", card_for(tiny_model_dir), root)
        if i == 1:
            registry.record_calibration("med", {"lora": {"yes": 0.0, "no": 0.5, "maybe": 1.0}}, root)
        if i < 3:
            registry.record_eval("med", {"lora": {"accuracy": 0.5 + i / 10, "macro_f1": 0.3 + i / 10}}, root)
    return root


def weights(path):
    return (path / "adapter_model.safetensors").read_bytes()


def test_rollback_is_a_new_version_and_history_is_append_only(three_versions, peft_folders):
    root = three_versions
    before = {v.version: weights(v.path) for v in registry.versions("med", root)}
    info = registry.rollback("med", 1, root, who="alice", reason="v3 regressed")
    assert (info.label, info.card.parent) == ("med@v4", {"name": "med", "version": 1, "rollback": True})
    assert weights(info.path) == before[1] == weights(peft_folders[0])  # v1's weights are current again
    assert json.loads((info.path / "routing.json").read_text()) == {"v": 1}  # v1's other files came along
    assert info.card.calibration["lora"]["no"] == 0.5  # v1's calibration travels with its weights
    assert info.card.extra["rollback"] == {"to_version": 1, "replaced_version": 3, "time": info.card.created,
                                           "who": "alice", "reason": "v3 regressed"}
    assert info.card.evals["v4"] == info.card.evals["v1"] and "v2" in info.card.evals  # evidence kept
    lineage_ = registry.versions("med", root)
    assert [v.version for v in lineage_] == [1, 2, 3, 4]
    assert {v.version: weights(v.path) for v in lineage_[:3]} == before  # nothing rewritten
    assert "Parent: med@v1" in (info.path / "README.md").read_text()
    with pytest.raises(ValueError, match="already the current version"):
        registry.rollback("med", 4, root)
    with pytest.raises(FileNotFoundError, match="no version v9"):
        registry.rollback("med", 9, root)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize("damage", ["{not json", '{"version": "three"}'])
def test_rollback_is_the_way_out_of_a_current_version_whose_card_is_damaged(three_versions, peft_folders, damage,
                                                                            tmp_path, monkeypatch, capsys):
    from app.cli import main

    monkeypatch.setenv("LORACLE_AUDIT", str(tmp_path / "audit.sqlite"))
    root = three_versions
    (root / "med" / "card.json").write_text(damage)
    with pytest.raises(ValueError, match="card.json"):
        registry.get("med", root)
    assert main(["ops", "rollback", "med", "--to-version", "2", "--reason", "v3's card broke", "--root",
                 str(root)]) == 0
    assert "v2 is current again as med@v4 (replaced v3 (its card could not be read)" in capsys.readouterr().out
    info = registry.get("med", root)
    assert weights(info.path) == weights(peft_folders[1]) and info.card.extra["rollback"]["replaced_version"] == 3
    assert "card.json" in info.card.extra["rollback"]["replaced_unreadable"]
    assert (root / "med" / "versions" / "v3" / "card.json").read_text() == damage  # kept as it was
    with pytest.raises(FileNotFoundError, match="no version v9"):
        registry.rollback("med", 9, root)


def test_disable_enable_round_trip_survives_new_versions(three_versions, peft_folders, tiny_model_dir, tmp_path):
    root = three_versions
    assert registry.is_disabled("med", root) is False and registry.status("med", root) == {"disabled": False}
    st = registry.disable("med", root, reason="dosing answers wrong", who="bob")
    assert st["disabled"] and (st["reason"], st["who"], st["version"]) == ("dosing answers wrong", "bob", 3)
    assert registry.is_disabled("med", root)
    assert json.loads((root / "med" / "status.json").read_text())["disabled"] is True
    with pytest.raises(ValueError, match=r"'med' is already disabled \(since .*, by bob: dosing answers wrong\)"):
        registry.disable("med", root, reason="again", who="carol")  # no second event for nothing
    registry.rollback("med", 2, root)  # still disabled after a rollback ...
    staging = tmp_path / "staging-new"
    shutil.copytree(peft_folders[2], staging)
    registry.install(staging, "med", card_for(tiny_model_dir), root)  # ... and after a new version
    assert registry.is_disabled("med", root) and registry.get("med", root).version == 5
    assert not (root / "med" / "versions" / "v4" / "status.json").exists()  # not part of a version
    registry.enable("med", root, who="bob")
    assert registry.is_disabled("med", root) is False
    assert [a.name for a in registry.list_adapters(root)] == ["med"]  # listing is unaffected either way
    with pytest.raises(FileNotFoundError, match="no adapter 'ghost'"):
        registry.disable("ghost", root)
    (root / "med" / "status.json").write_text("{broken")
    assert registry.is_disabled("med", root)  # unreadable status fails closed


def test_lineage_graph_has_versions_and_eval_deltas(three_versions):
    root = three_versions
    registry.rollback("med", 1, root)
    graph = lineage.lineage(registry.versions("med", root))
    assert [n["version"] for n in graph["nodes"]] == [1, 2, 3, 4] and graph["current"] == 4
    edges = {(e["parent"][1], e["child"]): e for e in graph["edges"]}
    assert set(edges) == {(1, 2), (2, 3), (1, 4)}
    assert edges[(1, 2)]["deltas"] == {"lora macro_f1": 0.1} and not edges[(1, 2)]["rollback"]
    assert edges[(2, 3)]["deltas"] == {} and edges[(1, 4)]["rollback"]  # v3 has no eval of its own
    dot = lineage.to_dot("med", graph)
    assert dot.startswith('digraph "med" {') and '"med@v1" -> "med@v2" [label="lora F1 +0.100"]' in dot
    assert '"med@v1" -> "med@v4" [label="rollback\\nlora F1 +0.000", style="dashed"]' in dot
    assert "v4 (current)" in dot
    # evaluations run differently (here: another token budget) are not subtracted; the edge says why
    evals = {"v1": {"run": {"max_new_tokens": 48, "decisions": "free"}, "lora": {"macro_f1": 0.3}},
             "v2": {"run": {"max_new_tokens": 1, "decisions": "free"}, "lora": {"macro_f1": 0.5}}}
    assert lineage.eval_deltas(evals, 1, 2) == {} and lineage.incomparable(evals, 1, 2) == "max_new_tokens 48 vs 1"
    evals["v2"]["run"]["max_new_tokens"] = 48
    assert lineage.eval_deltas(evals, 1, 2) == {"lora macro_f1": 0.2} and lineage.incomparable(evals, 1, 2) is None
    scored = {v: {**e, "run": {"max_new_tokens": n, "decisions": "scored"}} for (v, e), n in zip(evals.items(), (48, 1))}
    assert lineage.incomparable(scored, 1, 2) is None  # scored decisions come from the prefill: budget irrelevant
    older = {**scored, "v1": {**scored["v1"], "run": {"max_new_tokens": 48}}}  # recorded before runs said how
    assert lineage.incomparable(older, 1, 2) == "max_new_tokens 48 vs 1"
    scored["v2"]["run"]["data_sha256"], scored["v1"]["run"]["data_sha256"] = "aa", "bb"
    assert lineage.incomparable(scored, 1, 2) == "another question set"
    assert lineage.edge_label({"rollback": False, "deltas": {}, "incomparable": "another question set"}) == \
        "evals not comparable (another question set)"


def test_cli_ops_commands_write_audit_events(three_versions, tmp_path, monkeypatch, capsys):
    from app.audit import AuditLog
    from app.cli import main

    monkeypatch.setenv("LORACLE_AUDIT", str(tmp_path / "audit.sqlite"))
    root = str(three_versions)
    assert main(["ops", "rollback", "med", "--to-version", "2", "--reason", "v3 regressed", "--root", root]) == 0
    assert "v2 is current again as med@v4" in capsys.readouterr().out
    assert main(["ops", "disable", "med", "--reason", "wrong doses", "--who", "carol", "--root", root]) == 0
    assert main(["ops", "status", "--root", root]) == 0
    assert "DISABLED by carol" in capsys.readouterr().out
    assert main(["ops", "enable", "med", "--reason", "fixed", "--who", "carol", "--root", root]) == 0
    assert main(["ops", "disable", "med", "--reason", "  ", "--root", root]) == 2
    assert "--reason must say why" in capsys.readouterr().err
    events = AuditLog().events()
    assert [(e["kind"], e["target"], e["why"]) for e in events] == [
        ("enable", "med", "fixed"), ("disable", "med", "wrong doses"), ("rollback", "med", "v3 regressed")]
    assert events[2]["detail"] == {"from_version": 3, "to_version": 2, "new_version": 4} and events[2]["who"]
    out = tmp_path / "events.json"
    assert main(["ops", "audit-export", "--out", str(out), "--table", "events"]) == 0
    assert len(json.loads(out.read_text())) == 3
    assert main(["ops", "events", "--limit", "1"]) == 0
    assert "enable" in capsys.readouterr().out


def test_disable_and_rollback_take_effect_on_the_next_request_of_a_running_engine(tiny_model_dir, tmp_path):
    from app.config import EngineConfig
    from app.engine import Engine
    from tests.tiny_adapter import untie_base

    base = untie_base(tiny_model_dir, tmp_path / "base")
    root = tmp_path / "adapters"
    for seed in (1, 2):
        registry.install(make_adapter(base, tmp_path / f"s{seed}", seed=seed), "med", card_for(base), root)
    engine = Engine(EngineConfig(base_model=str(base), adapters_dir=str(root), adapters=("med",), max_new_tokens=6))
    q = "Does aspirin reduce the risk of stroke?"
    v2, plain = engine.answer(q, adapter="med"), engine.answer(q)
    assert v2.adapter == "med@v2" and v2.text != plain.text

    registry.disable("med", root, reason="test")
    off = engine.answer(q, adapter="med")  # no restart: the next request falls back, and says so
    assert (off.mode, off.adapter, off.text) == ("base", None, plain.text)
    assert off.notes and "disabled" in off.notes[0]
    registry.enable("med", root)
    assert engine.answer(q, adapter="med").text == v2.text

    v1_text = engine.answer(q, adapter="med@v1").text
    registry.rollback("med", 1, root, who="test", reason="v2 regressed")
    back = engine.answer(q, adapter="med")
    assert back.adapter == "med@v3" and back.text == v1_text and not back.notes
