"""Adapter registry on real PEFT folders built on the tiny model: install, versions, refusals, evals."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from app import registry
from tests.tiny_adapter import card_for, make_adapter


@pytest.fixture(scope="module")
def peft_folder(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("peft") / "a", seed=1)


def staged(peft_folder, tmp_path, tag="s"):
    dst = tmp_path / f"staging-{tag}"
    shutil.copytree(peft_folder, dst)
    return dst


def test_install_list_get_and_load_with_peft(peft_folder, tiny_model_dir, tmp_path):
    root = tmp_path / "adapters"
    info = registry.install(staged(peft_folder, tmp_path), "med", card_for(tiny_model_dir), root)
    assert (info.name, info.version, info.label) == ("med", 1, "med@v1")
    assert info.base_model == "loracle-test/tiny-llama" and info.card["parent"] is None
    assert {"adapter_config.json", "adapter_model.safetensors", "card.json", "README.md"} <= {
        p.name for p in info.path.iterdir()}
    card = json.loads((info.path / "card.json").read_text())
    for key in ("name", "version", "base_model", "training_data", "hyperparameters", "loss_curve", "evals",
                "parent", "created", "reproduce"):
        assert key in card
    assert "# med v1" in (info.path / "README.md").read_text()
    assert [a.label for a in registry.list_adapters(root)] == ["med@v1"]
    assert registry.get("med", root).path == root / "med"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(root / "med"))
    assert "default" in model.peft_config


def test_second_install_bumps_version_and_keeps_lineage(peft_folder, tiny_model_dir, tmp_path):
    root = tmp_path / "adapters"
    registry.install(staged(peft_folder, tmp_path, "1"), "med", card_for(tiny_model_dir), root)
    registry.record_eval("med", {"lora": {"accuracy": 0.5}}, root)
    v2 = registry.install(staged(peft_folder, tmp_path, "2"), "med", card_for(tiny_model_dir), root)
    v3 = registry.install(staged(peft_folder, tmp_path, "3"), "med", card_for(tiny_model_dir), root)
    assert v2.version == 2 and v3.version == 3
    assert v3.card["parent"] == {"name": "med", "version": 2}
    assert v3.card["evals"] == {"v1": {"lora": {"accuracy": 0.5}}}  # evidence of earlier versions kept
    lineage = registry.versions("med", root)
    assert [a.version for a in lineage] == [1, 2, 3]
    assert registry.get("med", root, version=1).card["evals"]["v1"]["lora"]["accuracy"] == 0.5
    assert (root / "med" / "versions" / "v1" / "adapter_model.safetensors").exists()
    assert [a.label for a in registry.list_adapters(root)] == ["med@v3"]
    assert not (tmp_path / "staging-3").exists()  # the staging folder is consumed
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    assert registry.get_spec("med", root).version == 3
    assert registry.get_spec("med@v1", root).version == registry.get_spec("med@1", root).version == 1
    with pytest.raises(ValueError, match=r"med@x.*NAME@vN, e.g. med@v1"):
        registry.get_spec("med@x", root)
    with pytest.raises(FileNotFoundError, match="no version v9"):
        registry.get_spec("med@v9", root)


def test_record_eval_stores_evidence_per_version(peft_folder, tiny_model_dir, tmp_path):
    root = tmp_path / "adapters"
    registry.install(staged(peft_folder, tmp_path), "med", card_for(tiny_model_dir), root)
    info = registry.record_eval("med", {"base": {"accuracy": 0.3}, "lora+rag": {"accuracy": 0.6}}, root)
    assert info.card["evals"]["v1"]["lora+rag"]["accuracy"] == 0.6
    assert "lora+rag" in (root / "med" / "README.md").read_text()


def test_pickle_only_adapter_is_refused(peft_folder, tiny_model_dir, tmp_path):
    folder = staged(peft_folder, tmp_path)
    os.rename(folder / "adapter_model.safetensors", folder / "adapter_model.bin")
    with pytest.raises(ValueError, match="pickle weights.*adapter_model.bin.*safetensors"):
        registry.install(folder, "med", card_for(tiny_model_dir), tmp_path / "adapters")
    assert registry.list_adapters(tmp_path / "adapters") == []


def test_malformed_files_are_reported_clearly(peft_folder, tiny_model_dir, tmp_path):
    root = tmp_path / "adapters"
    registry.install(staged(peft_folder, tmp_path, "1"), "good", card_for(tiny_model_dir), root)
    registry.install(staged(peft_folder, tmp_path, "2"), "badcfg", card_for(tiny_model_dir), root)
    registry.install(staged(peft_folder, tmp_path, "3"), "badcard", card_for(tiny_model_dir), root)
    (root / "badcfg" / "adapter_config.json").write_text("{not json")
    (root / "badcard" / "card.json").write_text("[1, 2]")
    good, bad = registry.scan(root)
    assert [a.name for a in good] == ["good"]
    reasons = dict((p.name, r) for p, r in bad)
    assert "adapter_config.json is not valid JSON" in reasons["badcfg"]
    assert "card.json must hold a JSON object" in reasons["badcard"]
    with pytest.raises(ValueError, match="not valid JSON"):
        registry.get("badcfg", root)
    truncated = staged(peft_folder, tmp_path, "4")
    (truncated / "adapter_model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        registry.install(truncated, "trunc", card_for(tiny_model_dir), root)
    with pytest.raises(ValueError, match="base_model"):
        registry.install(staged(peft_folder, tmp_path, "5"), "nobase", {}, root)
    with pytest.raises(ValueError, match="invalid adapter name"):
        registry.install(staged(peft_folder, tmp_path, "6"), "../evil", card_for(tiny_model_dir), root)
    for field, value, message in (("answer_settings", {"k": "abc"}, r"answer_settings.k 'abc'; expected a whole"),
                                  ("answer_settings", {"k": -1}, "answer_settings.k -1"),
                                  ("calibration", {"lora": {"yes": "big"}}, r"calibration.lora .*expected numbers")):
        card = json.loads((root / "good" / "card.json").read_text())
        (root / "good" / "card.json").write_text(json.dumps({**card, field: value}))
        with pytest.raises(ValueError, match=message):  # named at read, with the card's path, not deep in a run
            registry.get("good", root)
        assert "good" in dict((p.name, r) for p, r in registry.scan(root)[1])  # listed as invalid
        (root / "good" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="write a version as NAME@vN"):
        registry.get_spec("good@vv1", root)
    (root / "badcard" / "card.json").write_text("garbage")  # a damaged card does not block removing it
    assert registry.remove("badcard", root) == root / "badcard" and not (root / "badcard").exists()


def test_wrong_base_model_is_refused_naming_both(peft_folder, tiny_model_dir, tmp_path):
    root = tmp_path / "adapters"
    info = registry.install(staged(peft_folder, tmp_path), "med", card_for(tiny_model_dir), root)
    with pytest.raises(ValueError) as exc:
        registry.check_compatible(info, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "loracle-test/tiny-llama" in str(exc.value) and "HuggingFaceTB/SmolLM2-135M-Instruct" in str(exc.value)
    registry.check_compatible(info, "loracle-test/tiny-llama")
    other = card_for(tiny_model_dir, base_model={"name": "other/model", "sha256": ""})
    with pytest.raises(ValueError, match="loracle-test/tiny-llama.*other/model"):
        registry.install(staged(peft_folder, tmp_path, "2"), "med", other, root)


def test_half_written_install_is_never_listed_and_interrupted_swap_is_repaired(peft_folder, tiny_model_dir, tmp_path):
    root = tmp_path / "adapters"
    registry.install(staged(peft_folder, tmp_path), "med", card_for(tiny_model_dir), root)
    half = root / ".staging-new.abc"
    half.mkdir()
    (half / "adapter_config.json").write_text("{")
    assert [a.name for a in registry.list_adapters(root)] == ["med"]
    os.replace(root / "med", root / ".trash-med.999")  # crash between the two renames of an upgrade
    assert registry.get("med", root).version == 1


def test_remove(peft_folder, tiny_model_dir, tmp_path):
    root = tmp_path / "adapters"
    registry.install(staged(peft_folder, tmp_path), "med", card_for(tiny_model_dir), root)
    registry.remove("med", root)
    assert registry.list_adapters(root) == [] and not (root / "med").exists()
    with pytest.raises(FileNotFoundError, match="no adapter 'med'"):
        registry.remove("med", root)


def test_cli_adapters_list_show_remove(peft_folder, tiny_model_dir, tmp_path, capsys, monkeypatch):
    import json as _json

    from app.audit import AuditLog
    from app.cli import main

    monkeypatch.setenv("LORACLE_AUDIT", str(tmp_path / "audit.sqlite"))

    root = tmp_path / "adapters"
    registry.install(staged(peft_folder, tmp_path, "1"), "med", card_for(tiny_model_dir), root)
    registry.install(staged(peft_folder, tmp_path, "2"), "med", card_for(tiny_model_dir), root)
    (root / "broken").mkdir()
    (root / "broken" / "adapter_model.bin").write_bytes(b"x")
    registry.record_eval("med", {"lora": {"rouge_l": 0.214}}, root)  # free-text evaluation: no accuracy
    assert main(["adapters", "list", "--root", str(root)]) == 0
    out = capsys.readouterr()
    assert "med@v2" in out.out and "INVALID broken" in out.err and "pickle" in out.err
    assert "lora ROUGE-L 0.21" in out.out
    assert out.out.startswith("adapter ") and "accuracy / macro-F1" in out.out
    assert main(["adapters", "show", "med", "--root", str(root), "--json"]) == 0
    shown = _json.loads(capsys.readouterr().out)
    assert shown["lineage"] == ["med@v1", "med@v2"] and shown["card"]["parent"]["version"] == 1
    assert main(["adapters", "show", "med@v1", "--root", str(root), "--json"]) == 0
    assert _json.loads(capsys.readouterr().out)["path"].endswith("versions/v1")
    assert main(["adapters", "show", "med@v7", "--root", str(root)]) == 2
    assert "no version v7; it has v1, v2 (current v2)" in capsys.readouterr().err
    assert main(["adapters", "show", "mde", "--root", str(root)]) == 2
    assert "did you mean 'med'?" in capsys.readouterr().err
    (root / "med" / "versions" / "v1" / "card.json").write_text("garbage")  # a damaged old version
    assert main(["adapters", "show", "med", "--root", str(root), "--json"]) == 0  # the current one still shows
    out = capsys.readouterr()
    assert _json.loads(out.out)["lineage"] == ["med@v2"] and "INVALID med v1 (left out of the lineage)" in out.err
    assert main(["adapters", "remove", "med", "--yes", "--reason", "superseded", "--root", str(root)]) == 0
    assert not (root / "med").exists()
    (event,) = AuditLog().events()  # a removal is an oversight event like a rollback
    assert (event["kind"], event["target"], event["why"]) == ("remove", "med", "superseded")
    assert event["detail"]["current_version"] == 2
    assert main(["adapters", "show", "med", "--root", str(root)]) == 2


def test_leftovers_of_killed_runs_are_cleaned_once_stale(tmp_path):
    import os
    import time

    from app import registry

    old, fresh = tmp_path / ".train-x.abc", tmp_path / ".staging-y.def"
    for d in (old, fresh):
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert registry.list_adapters(tmp_path) == []
    assert not old.exists() and fresh.exists()  # a fresh one may belong to an install in progress


# --- the typed card: every old shape read, one shape written, nothing lost -------------------------------
OLD_CARD = {"format": 1, "name": "old", "version": 1, "base_model": "org/base-model",
            "training_data": "qa.jsonl", "loss_curve": [[1, 3.0], (2, 2.5), {"step": 3, "loss": 2.0}, "junk"],
            "val_loss_curve": [2.9, 2.7], "evals": {"v1": {"lora": {"accuracy": 0.5}}}, "team_notes": {"owner": "x"}}


def test_card_reads_every_old_shape_and_writes_one():
    card = registry.AdapterCard.from_dict(OLD_CARD)
    assert card.schema_version == 1 and card.base_model == registry.BaseModelRef(name="org/base-model")
    assert card.training_data == {"path": "qa.jsonl"}
    assert card.loss_curve == [(1, 3.0), (2, 2.5), (3, 2.0)] and card.loss_curve[-1].loss == 2.0
    assert [tuple(p) for p in card.val_loss_curve] == [(0, 2.9), (1, 2.7)]
    assert card.answer_settings is None and card.calibration is None and card.extra == {"team_notes": {"owner": "x"}}
    out = card.to_dict()
    assert out["schema_version"] == registry.SCHEMA_VERSION and "format" not in out
    assert out["base_model"] == {"name": "org/base-model", "spec": "", "sha256": ""}
    assert out["loss_curve"] == [[1, 3.0], [2, 2.5], [3, 2.0]] and out["team_notes"] == {"owner": "x"}
    assert registry.AdapterCard.from_dict(json.loads(json.dumps(out))).to_dict() == out  # stable round trip
    assert card["evals"]["v1"]["lora"]["accuracy"] == 0.5 and card.get("missing", 1) == 1  # dict-style reads
    readme = registry.render_readme(OLD_CARD)  # the string base model used to crash this
    assert "Base model: `org/base-model`" in readme and "3 points; first [1, 3.0], last [3, 2.0]" in readme
    with pytest.raises(ValueError, match="version 'two'"):
        registry.AdapterCard.from_dict({"version": "two"})


def test_old_card_on_disk_is_shown_and_rewritten_without_loss(peft_folder, tiny_model_dir, tmp_path, capsys):
    from app.cli import main

    root = tmp_path / "adapters"
    registry.install(staged(peft_folder, tmp_path), "old", card_for(tiny_model_dir), root)
    (root / "old" / "card.json").write_text(json.dumps({**OLD_CARD, "base_model": "loracle-test/tiny-llama"}))
    assert main(["adapters", "show", "old", "--root", str(root)]) == 0
    assert "Base model: `loracle-test/tiny-llama`" in capsys.readouterr().out
    info = registry.record_eval("old", {"lora": {"accuracy": 0.7}}, root)
    on_disk = json.loads((root / "old" / "card.json").read_text())
    assert on_disk["schema_version"] == registry.SCHEMA_VERSION and on_disk["team_notes"] == {"owner": "x"}
    assert on_disk["base_model"]["name"] == "loracle-test/tiny-llama" and on_disk["loss_curve"][0] == [1, 3.0]
    assert info.card.evals["v1"]["lora"]["accuracy"] == 0.7


def test_install_takes_a_typed_card_and_keeps_the_new_fields(peft_folder, tiny_model_dir, tmp_path):
    root = tmp_path / "adapters"
    card = registry.AdapterCard.from_dict(card_for(tiny_model_dir))
    card.answer_settings = {"k": 3, "passage_chars": 450, "template": "cited"}
    card.calibration = {"lora": {"yes": -0.2, "no": 0.1, "maybe": 0.1}}
    info = registry.install(staged(peft_folder, tmp_path), "typed", card, root)
    assert card.name == "" and card.version == 1  # the caller's card is not modified
    assert info.card.answer_settings["passage_chars"] == 450 and info.card.calibration["lora"]["yes"] == -0.2
    assert json.loads((info.path / "card.json").read_text())["answer_settings"]["k"] == 3


def test_base_model_of_a_cardless_adapter_never_comes_from_another_machines_path(peft_folder, tmp_path):
    folder = staged(peft_folder, tmp_path)
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    assert registry.read_folder(folder).base_model == "loracle-test/tiny-llama"  # this machine's model folder
    for foreign in ("/nonexistent/trainer/.cache/loracle/models/smollm2-135m-instruct-b179c9523d0e",
                    "C:\\models\\smollm2", "~/nonexistent-models/smollm2"):
        cfg_path.write_text(json.dumps({**cfg, "base_model_name_or_path": foreign}))
        info = registry.read_folder(folder)
        assert info.base_model == "" and info.card.base_model.name == ""  # unknown: the shape check decides
    cfg_path.write_text(json.dumps({**cfg, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-360M-Instruct"}))
    assert registry.read_folder(folder).base_model == "HuggingFaceTB/SmolLM2-360M-Instruct"  # a hub id names it


def test_check_shapes_reads_the_safetensors_header(peft_folder, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.tiny import build_tiny_llama

    info = registry.read_folder(staged(peft_folder, tmp_path))
    registry.check_shapes(info, AutoModelForCausalLM.from_pretrained(tiny_model_dir), "tiny")
    narrow = AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path / "narrow", hidden=32))
    with pytest.raises(ValueError, match=r"width 64\) but narrow has width 32"):
        registry.check_shapes(info, narrow, "narrow")
