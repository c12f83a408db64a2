"""Adapter routing (app/routing.py) on a real registry of tiny PEFT adapters with summaries made by the shipped
MiniLM embedder: own questions go to their adapter, an unrelated question to none; disabled adapters and
adapters without a summary are left out; the CLI builds a summary."""
from __future__ import annotations

import json
import shutil

import pytest

from app import registry, routing
from tests.tiny_adapter import card_for, make_adapter

COOKING = ["How long should I knead bread dough?", "What temperature do I bake sourdough bread at?",
           "How do I make a pizza crust crispy?", "Why did my cake sink in the middle?",
           "Can I freeze homemade pasta dough?", "How much yeast goes into a loaf of bread?",
           "What flour is best for baking baguettes?", "How do I stop cookies from spreading in the oven?"]
ASTRONOMY = ["How far is the Andromeda galaxy from Earth?", "Why does Mars look red in the night sky?",
             "What is a neutron star made of?", "How many moons does Jupiter have?",
             "What causes a solar eclipse?", "How old is the universe according to the Big Bang model?",
             "What is the event horizon of a black hole?", "Why do stars twinkle at night?"]
UNRELATED = "What are the tax rules for selling shares in a company?"


@pytest.fixture(scope="module")
def peft_folder(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("peft") / "a", seed=1)


@pytest.fixture(scope="module")
def embedder():
    from ingest.embed import get_embedder

    return get_embedder()


@pytest.fixture()
def reg(peft_folder, tiny_model_dir, tmp_path, embedder):
    root = tmp_path / "adapters"
    for name, qs in (("baking", COOKING), ("stars", ASTRONOMY)):
        staging = tmp_path / f"staging-{name}"
        shutil.copytree(peft_folder, staging)
        info = registry.install(staging, name, card_for(tiny_model_dir), root)
        routing.build_summary(info.path, qs, embedder, source=f"{name}.jsonl")
    return root


def test_summary_files(reg):
    meta = json.loads((reg / "baking" / "routing.json").read_text())
    assert (meta["embedder"], meta["count"], meta["dim"]) == ("all-MiniLM-L6-v2", 8, 384)
    assert meta["source"] == "baking.jsonl"
    meta, matrix = routing.load_summary(reg / "baking")
    from safetensors.numpy import load_file

    stored = load_file(str(reg / "baking" / "routing.safetensors"))["questions"]
    assert stored.dtype.name == "float16" and stored.shape == (8, 384)
    assert abs(float((matrix ** 2).sum(axis=1).mean()) - 1.0) < 1e-2  # normalised rows
    with pytest.raises(ValueError, match="at least one training question"):
        routing.build_summary(reg / "baking", ["  "])


def test_own_questions_go_to_their_adapter_and_unrelated_to_none(reg, embedder):
    router = routing.Router(reg, embedder=embedder)
    assert sorted(router.adapters) == ["baking", "stars"] and router.threshold == routing.DEFAULT_THRESHOLD
    routes = router.route(COOKING + ASTRONOMY + [UNRELATED])
    assert [r.adapter for r in routes] == ["baking"] * 8 + ["stars"] * 8 + [None]
    assert all(r.score >= router.threshold for r in routes[:-1]) and routes[-1].score < router.threshold
    assert set(routes[0].scores) == {"baking", "stars"} and routes[0].scores["baking"] > routes[0].scores["stars"]
    # new wordings of the same topics route the same way
    fresh = router.route(["What is the best oven temperature for rye bread?", "What is the biggest moon of Saturn?"])
    assert [r.adapter for r in fresh] == ["baking", "stars"]
    vec = router.route_vectors(router.embed([ASTRONOMY[0]]))[0]
    assert vec.adapter == "stars" and abs(vec.score - routes[8].score) < 1e-4
    assert routing.Router(reg, threshold=0.99, embedder=embedder).route([COOKING[1] + " Quickly."])[0].adapter is None


def test_disabled_and_summaryless_adapters_are_not_routed_to(reg, peft_folder, tiny_model_dir, tmp_path, embedder):
    shutil.copytree(peft_folder, tmp_path / "staging-plain")
    registry.install(tmp_path / "staging-plain", "plain", card_for(tiny_model_dir), reg)
    registry.disable("stars", reg, reason="test")
    router = routing.Router(reg, embedder=embedder)
    assert router.adapters == ["baking"]
    assert router.skipped == {"plain": "no routing summary", "stars": "disabled"}
    assert [r.adapter for r in router.route([COOKING[0], ASTRONOMY[0]])] == ["baking", None]
    registry.enable("stars", reg)
    assert routing.Router(reg, embedder=embedder).route([ASTRONOMY[0]])[0].adapter == "stars"
    assert router.route([ASTRONOMY[0]])[0].adapter == "stars"  # a live router sees the change too
    registry.disable("stars", reg, reason="again")
    assert router.route([ASTRONOMY[0]])[0].adapter is None and router.skipped["stars"] == "disabled"
    frozen = routing.Router(reg, embedder=embedder, watch=False)
    registry.enable("stars", reg)
    assert frozen.route([ASTRONOMY[0]])[0].adapter is None  # until reload()
    frozen.reload()
    assert frozen.route([ASTRONOMY[0]])[0].adapter == "stars"
    assert routing.Router(tmp_path / "empty", embedder=embedder).route(["anything?"])[0].adapter is None


def test_summary_travels_with_the_version(reg, peft_folder, tiny_model_dir, tmp_path, embedder):
    """A new version without a summary is not routed to; rolling back to v1 brings v1's summary back."""
    router = routing.Router(reg, embedder=embedder)
    shutil.copytree(peft_folder, tmp_path / "staging-v2")
    registry.install(tmp_path / "staging-v2", "stars", card_for(tiny_model_dir), reg)
    assert router.route([ASTRONOMY[2]])[0].adapter is None and "stars" not in router.adapters
    registry.rollback("stars", 1, reg)
    assert router.route([ASTRONOMY[2]])[0].adapter == "stars" and router.labels["stars"] == "stars@v3"


def test_cli_route_summary(reg, tmp_path, capsys):
    from app.cli import main

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{i}", "question": q}) + "\n" for i, q in enumerate(ASTRONOMY[:5])))
    assert main(["adapters", "route-summary", "stars", "--data", str(data), "--root", str(reg)]) == 0
    assert "5 questions" in capsys.readouterr().out
    assert json.loads((reg / "stars" / "routing.json").read_text())["count"] == 5
    assert main(["adapters", "route-summary", "nope", "--data", str(data), "--root", str(reg)]) == 2
    assert "no adapter 'nope'" in capsys.readouterr().err


def test_the_shipped_adapters_route_their_own_kind_of_question():
    """The two shipped adapters' own summaries: a research yes/no question goes to medical-pubmedqa, a
    consumer-health question to medical-consumer (whose card names the medquad index), a general one to none."""
    from tests.conftest import REPO

    root = REPO / "adapters"
    if not all((root / n / routing.SUMMARY_WEIGHTS).is_file() for n in ("medical-pubmedqa", "medical-consumer")):
        pytest.skip("the shipped adapters are not in this checkout")
    router = routing.Router(root, watch=False)
    got = [r.adapter for r in router.route([
        "Does preoperative statin therapy reduce atrial fibrillation after cardiac surgery?",
        "What are the symptoms of gout ?",
        "What is the best way to learn to play the guitar?"])]
    assert got == ["medical-pubmedqa", "medical-consumer", None]
    card = registry.get("medical-consumer", root).card
    assert card.answer_settings["index"] == "medquad" and card.answer_settings["max_new_tokens"] == 256
