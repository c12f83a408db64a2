"""`loracle adapters merge`: real tiny PEFT adapters merged with PEFT's cat combination into the registry."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from app import registry
from app.cli import main
from app.merge import merge
from tests.tiny_adapter import card_for, make_adapter

SETTINGS = {"k": 1, "passage_chars": None, "template": None, "index": "docs", "max_new_tokens": None}


@pytest.fixture()
def root(tiny_model_dir, tmp_path):
    """A registry with two seeds (s1 v1, s2 v1) for the same settings, s3 for other target modules."""
    root = tmp_path / "adapters"
    for name, seed, targets, val in (("s1", 1, ("q_proj", "v_proj"), ["a", "b", "c"]),
                                     ("s2", 2, ("q_proj", "v_proj"), ["b", "c", "d"]),
                                     ("s3", 3, ("q_proj", "o_proj"), ["a"])):
        folder = make_adapter(tiny_model_dir, tmp_path / f"peft-{name}", seed=seed, targets=targets)
        card = card_for(tiny_model_dir, answer_settings=SETTINGS, reproduce=f"loracle train --seed {seed}",
                        training_data={"path": "t.jsonl", "sha256": "0" * 64, "val_ids": val})
        registry.install(folder, name, card, root)
    return root


def _deltas(info) -> dict[str, torch.Tensor]:
    """module -> scaling * B @ A, read from the installed files."""
    cfg = json.loads((info.path / "adapter_config.json").read_text())
    weights = load_file(str(info.path / "adapter_model.safetensors"))
    scale = cfg["lora_alpha"] / cfg["r"]
    return {k.replace(".lora_A.weight", ""): scale * weights[k.replace("lora_A", "lora_B")] @ weights[k]
            for k in weights if "lora_A" in k}


def test_merge_is_the_weighted_sum_of_the_sources_deltas(root, tiny_model_dir):
    info = merge("ens", ["s1", "s2@v1"], [0.25, 0.75], root, base_model=str(tiny_model_dir))
    merged, d1, d2 = _deltas(info), _deltas(registry.get("s1", root)), _deltas(registry.get("s2", root))
    assert set(merged) == set(d1) == set(d2)
    for module in merged:
        torch.testing.assert_close(merged[module], 0.25 * d1[module] + 0.75 * d2[module], rtol=1e-5, atol=1e-6)
    assert json.loads((info.path / "adapter_config.json").read_text())["r"] == 8  # 4 + 4, one adapter
    card = info.card.to_dict()
    assert [s["name"] for s in card["merged_from"]] == ["s1", "s2"]
    assert card["merged_from"][1]["reproduce"] == "loracle train --seed 2"
    assert card["training_data"]["val_ids"] == ["b", "c"]  # held out by every source
    assert card["answer_settings"]["index"] == "docs" and card["hyperparameters"]["weights"] == [0.25, 0.75]
    assert card["reproduce"] == "loracle adapters merge ens s1@v1 s2@v1 --weights 0.25 0.75"
    readme = (info.path / "README.md").read_text()
    assert "## Merged from" in readme and "s2@v1 (weight 0.75; train loss 1.500): `loracle train --seed 2`" in readme
    assert "sources it names are trained first" in readme  # the merge command alone cannot rebuild them

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(info.path))
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_merge_into_an_existing_name_is_its_next_version(root, tiny_model_dir):
    v2 = merge("s1", ["s1", "s2"], None, root, base_model=str(tiny_model_dir))
    assert v2.label == "s1@v2" and v2.card.parent == {"name": "s1", "version": 1}
    assert v2.card.hyperparameters["weights"] == [0.5, 0.5]
    assert registry.get("s1", root, version=1).card.reproduce == "loracle train --seed 1"


@pytest.mark.parametrize("sources, weights, message", [
    (["s1"], None, "at least two"),
    (["s1", "s2"], [1.0], "one weight per adapter"),
    (["s1", "s2"], [1.0, -1.0], "positive"),
    (["s1", "s3"], None, "same --target-modules"),
    (["s1", "s2@x"], None, "NAME@vN"),
    (["s1", "nope"], None, "no adapter 'nope'"),
])
def test_bad_merges_are_refused_and_the_registry_is_unchanged(root, tiny_model_dir, sources, weights, message):
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        merge("ens", sources, weights, root, base_model=str(tiny_model_dir))
    assert sorted(p.name for p in root.iterdir()) == before


def test_sources_with_other_answer_settings_are_refused(root, tiny_model_dir, tmp_path):
    info = registry.get("s2", root)
    card = info.card.to_dict()
    card["answer_settings"] = {**SETTINGS, "k": 3}
    shutil.copytree(info.path, tmp_path / "k3", ignore=shutil.ignore_patterns("versions"))
    registry.install(tmp_path / "k3", "s2k3", card, root)
    with pytest.raises(ValueError, match="answer-time settings"):
        merge("ens", ["s1", "s2k3"], None, root, base_model=str(tiny_model_dir))


def test_cli_merge_installs_prints_and_is_audited(root, tiny_model_dir, capsys, tmp_path, monkeypatch):
    from app.audit import AuditLog

    monkeypatch.setenv("LORACLE_AUDIT", str(tmp_path / "audit.sqlite"))
    assert main(["adapters", "merge", "ens", "s1", "s2", "--root", str(root),
                 "--base-model", str(tiny_model_dir)]) == 0
    assert "installed ens@v1" in capsys.readouterr().out
    (event,) = AuditLog().events()
    assert (event["kind"], event["target"], event["detail"]) == \
        ("install", "ens", {"version": 1, "by": "merge", "sources": ["s1", "s2"]})
    assert [a.label for a in registry.list_adapters(root)] == ["ens@v1", "s1@v1", "s2@v1", "s3@v1"]


def test_merged_routing_summary_is_the_union_and_other_data_is_listed(root, tiny_model_dir, tmp_path):
    from app import routing

    routing.build_summary(registry.get("s1", root).path, ["Do statins help?", "Is aspirin safe?"])
    info = registry.get("s2", root)
    card = info.card.to_dict()
    card["training_data"] = {"path": "other.jsonl", "sha256": "1" * 64, "val_ids": ["b"]}
    shutil.copytree(info.path, tmp_path / "other", ignore=shutil.ignore_patterns("versions"))
    routing.build_summary(tmp_path / "other", ["Is aspirin safe?", "Does coffee cause cancer?"])
    registry.install(tmp_path / "other", "s2other", card, root)
    merged = merge("ens", ["s1", "s2other"], None, root, base_model=str(tiny_model_dir))
    meta, matrix = routing.load_summary(merged.path)
    assert meta["count"] == matrix.shape[0] == 3 and meta["source"] == "s1@v1, s2other@v1"
    data = merged.card.training_data
    assert [d["adapter"] for d in data["sources"]] == ["s1@v1", "s2other@v1"] and "val_ids" not in data
    assert data["path"] == "t.jsonl + other.jsonl"
    assert "Training data: `t.jsonl + other.jsonl`" in (merged.path / "README.md").read_text()
    # calibrating the merge on either source's file keeps only that source's held-out questions
    from app.calibration import items_for_adapter
    from app.questions import QAItem

    items = [QAItem(id=i, question=f"Is {i} true?", final_decision="yes") for i in "abcde"]
    assert [it.id for it in items_for_adapter(items, merged.card, "0" * 64, "ens@v1")[0]] == ["a", "b", "c"]
    assert [it.id for it in items_for_adapter(items, merged.card, "1" * 64, "ens@v1")[0]] == ["b"]
    assert items_for_adapter(items, merged.card, "2" * 64, "ens@v1") == (items, None)
    with pytest.raises(ValueError, match="none of the 2 given is one of them .with --limit"):
        items_for_adapter(items[3:], merged.card, "1" * 64, "ens@v1")  # "d", "e": none held out
    from app.adapter_card import AdapterCard  # a merge whose source is itself a merge of two files

    nested = AdapterCard.from_dict({**merged.card.to_dict(), "training_data": {"path": "x", "sha256": "", "sources": [
        merged.card.training_data, {"path": "z.jsonl", "sha256": "3" * 64, "val_ids": ["e"]}]}})
    assert [it.id for it in items_for_adapter(items, nested, "1" * 64, "ens2@v1")[0]] == ["b"]


def test_a_source_without_held_out_ids_leaves_the_merge_none(root, tiny_model_dir, tmp_path):
    info = registry.get("s2", root)
    card = info.card.to_dict()
    card["training_data"] = {"path": "t.jsonl", "sha256": "0" * 64}  # no split recorded: it may have seen all
    shutil.copytree(info.path, tmp_path / "nosplit", ignore=shutil.ignore_patterns("versions"))
    registry.install(tmp_path / "nosplit", "s2all", card, root)
    data = merge("ens", ["s1", "s2all"], None, root, base_model=str(tiny_model_dir)).card.training_data
    assert data["path"] == "t.jsonl" and "val_ids" not in data and "val" not in data
