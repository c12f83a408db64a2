"""Scored yes/no/maybe decisions on the tiny model: prefill scores, forced opening, calibration offsets."""
from __future__ import annotations

import pytest

from app import calibration, prompts, registry
from app.config import EngineConfig
from app.decision import OPTIONS, calls_for_decision, decide, option_ids
from app.engine import Engine, Request
from tests.tiny_adapter import card_for, make_adapter, untie_base

Q = "Does smoking cause lung cancer?"
OFFSETS = {"yes": 0.0, "no": 40.0, "maybe": 0.0}  # large enough to flip any random model to "no"


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("decision")
    base = untie_base(tiny_model_dir, d / "base")
    root = d / "adapters"
    card = card_for(base, calibration={"lora": OFFSETS, "fitted_on": {"data": "cal.jsonl", "n": 9}},
                    answer_settings={"k": 2, "passage_chars": 300, "template": None})
    registry.install(make_adapter(base, d / "staging", seed=3), "alpha", card, root)
    engine = Engine(EngineConfig(base_model=str(base), adapters_dir=str(root), adapters=("alpha",),
                                 max_new_tokens=6))
    return engine, d


def _forward_logprobs(engine, question, adapter=None):
    """The options' log-probs from a separate forward pass over the same prompt."""
    import torch

    text = prompts.render(engine.tokenizer, prompts.build_messages(question))
    ids = engine.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model = engine.model
    with torch.inference_mode():
        if adapter:
            model.set_adapter(adapter)
            logits = model(input_ids=ids).logits[0, -1]
        else:
            with model.disable_adapter():
                logits = model(input_ids=ids).logits[0, -1]
    logp = torch.log_softmax(logits.float(), -1)
    return {o: float(logp[i]) for o, i in option_ids(engine.tokenizer).items()}


@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_option_scores_come_from_the_prefill_logits(setup, adapter):
    engine, _ = setup
    ans = engine.answer(Q, adapter=adapter, calibrate=False)
    want = _forward_logprobs(engine, Q, adapter)
    assert ans.decision.source == "scored"
    for o in OPTIONS:
        assert ans.decision.logprobs[o] == pytest.approx(want[o], abs=1e-3)
    assert ans.decision.label == max(OPTIONS, key=want.get)
    assert sum(ans.decision.probs.values()) == pytest.approx(1.0, abs=1e-3)


def test_the_answer_opens_with_the_chosen_decision_in_mixed_batches(setup):
    engine, _ = setup
    answers = engine.answer_batch([Request(Q), Request("What is aspirin?"), Request(Q, adapter="alpha")])
    for a in (answers[0], answers[2]):
        assert a.text.lower().startswith(a.decision.label)
    assert answers[1].decision is None  # a wh-question calls for no decision: free generation


def test_a_forced_off_question_gives_no_decision_and_free_generation_is_parsed(setup):
    engine, _ = setup
    assert engine.answer(Q, decide=False).decision is None
    free = engine.answer(Q, scored=False)
    assert free.decision is None or free.decision.source == "parsed"
    forced_on = engine.answer("Tell me about tea.", decide=True)
    assert forced_on.decision is not None and forced_on.decision.source == "scored"


def test_calibration_offsets_load_from_the_card_and_can_be_switched_off(setup):
    engine, _ = setup
    on = engine.answer(Q, adapter="alpha")
    off = engine.answer(Q, adapter="alpha", calibrate=False)
    assert on.decision.label == "no" and on.decision.offsets == OFFSETS
    assert "alpha@v1" in on.decision.calibration and "cal.jsonl" in on.decision.calibration
    assert off.decision.offsets == {} and off.decision.calibration is None
    assert off.decision.logprobs == on.decision.logprobs  # the same scores, only the offsets differ
    base = engine.answer(Q)  # no base-model calibration stored
    assert base.decision.calibration is None


def test_answer_settings_travel_with_the_adapter_unless_overridden(setup):
    engine, _ = setup
    lora = engine.answer(Q, adapter="alpha", max_new_tokens=1)
    assert lora.settings["k"] == 2 and lora.settings["passage_chars"] == 300
    assert lora.settings["source"]["k"] == "adapter alpha@v1"
    over = engine.answer(Q, adapter="alpha", k=1, max_new_tokens=1)
    assert over.settings["k"] == 1 and over.settings["source"]["k"] == "request"
    assert engine.answer(Q, max_new_tokens=1).settings["source"]["k"] == "engine config"


def test_base_calibration_file_round_trip_and_fit(setup, tmp_path):
    engine, _ = setup
    from app.evaluate import QAItem

    items = [QAItem(f"q{i}", f"Is remedy {i} useful?", final_decision=("no" if i % 3 else "yes"))
             for i in range(6)]
    table = calibration.fit(engine, items, ["base"], data="cal.jsonl")
    assert set(table["base"]) == set(OPTIONS) and table["fitted_on"]["base"]["n"] == 6
    calibration.save_base(tmp_path, engine.info.name, table)
    assert calibration.load_base(tmp_path, engine.info.name)["base"] == table["base"]
    assert calibration.load_base(tmp_path, "other/model") == {}


def test_fit_offsets_moves_the_prior_towards_the_minority_classes():
    lp = [{"yes": -0.1, "no": -2.0 - d, "maybe": -4.0} for d in (0.0, 0.2, 0.4, 0.6)] * 3
    gold = ["no", "no", "yes", "yes"] * 3
    off = calibration.fit_offsets(lp, gold)
    assert off["yes"] == 0.0 and off["no"] > 1.5
    assert decide(lp[0], off).label == "no" and decide(lp[3], off).label == "yes"
    assert calibration.fit_offsets([{"yes": -0.1, "no": -3.0, "maybe": -3.0}], ["yes"]) == \
        {"yes": 0.0, "no": 0.0, "maybe": 0.0}


@pytest.mark.parametrize("question, expected", [
    ("Does aspirin prevent stroke?", True), ("Statins: a cure for dementia?", True),
    ("is coffee bad for you", True), ("What is the dose of aspirin?", False),
    ("How does insulin work?", False), ("Tell me about tea.", False), ("", False)])
def test_which_questions_call_for_a_decision(question, expected):
    assert calls_for_decision(question) is expected


def test_cli_calibrate_stores_base_offsets_and_refuses_an_adapters_training_items(setup, tmp_path, monkeypatch,
                                                                                   shared_data, capsys):
    import json

    from app.cli import main
    from app.models import sha256_file

    engine, d = setup
    data = tmp_path / "cal.jsonl"
    data.write_text((shared_data / "sample" / "dev.jsonl").read_text())
    root = tmp_path / "adapters"
    base = d / "base"
    card = card_for(base, training_data={"path": "cal.jsonl", "sha256": sha256_file(data)})
    registry.install(make_adapter(base, tmp_path / "staging", seed=4), "beta", card, root)
    monkeypatch.setenv("LORACLE_ADAPTERS", str(root))
    args = ["calibrate", "--data", str(data), "--base-model", str(base), "--folds", "2", "--threads", "1"]
    assert main(args + ["--modes", "base"]) == 0
    out = capsys.readouterr().out
    assert "2-fold CV" in out and "base-calibration.json" in out
    stored = json.loads((root / "base-calibration.json").read_text())
    assert set(stored[engine.info.name]["base"]) == set(OPTIONS)
    assert main(args + ["--modes", "lora", "--adapter", "beta"]) == 2  # trained on this file, no held-out ids
    assert "held-out" in capsys.readouterr().err
    few = tmp_path / "few.jsonl"  # a quick fit on fewer questions must not overwrite the stored one
    few.write_text("".join(data.read_text().splitlines(keepends=True)[:3]))
    few_args = ["calibrate", "--data", str(few), "--base-model", str(base), "--folds", "2", "--modes", "base"]
    assert main(few_args) == 2
    assert "fitted on" in capsys.readouterr().err and json.loads((root / "base-calibration.json").read_text()) == stored
    assert main(few_args + ["--replace"]) == 0
    assert json.loads((root / "base-calibration.json").read_text())[engine.info.name]["fitted_on"]["base"]["n"] <= 3
    assert main(args + ["--modes", "top1"]) == 2 and "no yes/no/maybe decision" in capsys.readouterr().err


def test_card_generation_budget_and_a_missing_card_index(setup):
    """A card's max_new_tokens applies unless the request sets one; the card's index not built yet (e.g. the
    background build of medquad) answers without passages and says so, is calibrated as the lora mode it
    becomes (not with the lora+rag offsets), while an index the user names must exist."""
    engine, d = setup
    card = card_for(d / "base", answer_settings={"k": 2, "index": "not-built-yet", "max_new_tokens": 3},
                    calibration={"lora": {"yes": 0.0, "no": 1.0, "maybe": -1.0},
                                 "lora+rag": {"yes": 0.0, "no": -4.0, "maybe": 4.0}, "fitted_on": {"data": "c.jsonl"}})
    registry.install(make_adapter(d / "base", d / "staging-beta", seed=4), "beta", card, d / "adapters")
    q = "How is asthma treated in children?"
    ans = engine.answer(q, adapter="beta", retrieval=True, decide=False)
    assert ans.timings["new_tokens"] <= 3 and not ans.passages
    assert any("'not-built-yet'" in n and "not built yet" in n for n in ans.notes)
    decided = engine.answer(q, adapter="beta", retrieval=True, decide=True)
    assert decided.mode == "lora" and decided.decision.offsets == {"yes": 0.0, "no": 1.0, "maybe": -1.0}
    assert "beta@v1 lora," in decided.decision.calibration
    assert engine.answer(q, adapter="beta", decide=False, max_new_tokens=5).timings["new_tokens"] > 3
    with pytest.raises(FileNotFoundError, match="loracle ingest"):
        engine.answer(q, adapter="beta", retrieval=True, index="not-built-yet", decide=False)


def test_a_shipped_index_the_card_names_is_built_with_its_own_chunking(setup, shared_data, tmp_path, monkeypatch):
    """medical-pubmedqa v2 names `pubmedqa-1000`: the shipped abstracts chunked as it was trained on. Not built
    yet, an answer goes without passages and says so; `build_card_index` (ask/compare/eval/calibrate) builds it
    from the shipped corpus with the 1000/150 chunker, and then the answer reads passages chunked as in training."""
    import shutil

    from ingest.index import Index
    from ingest.pipeline import SHIPPED_INDEXES, missing_shipped_indexes

    engine, d = setup
    monkeypatch.setenv("LORACLE_INDEXES", str(tmp_path / "indexes"))
    monkeypatch.setenv("LORACLE_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "home" / "data" / "pubmedqa" / "corpus.jsonl"
    corpus.parent.mkdir(parents=True)
    shutil.copy(shared_data / "sample" / "corpus.jsonl", corpus)
    assert missing_shipped_indexes() == ["pubmedqa-1000", "pubmedqa-doc"]
    chunk = SHIPPED_INDEXES["pubmedqa-1000"].chunk
    card = card_for(d / "base", answer_settings={"k": 2, "index": "pubmedqa-1000", "chunker": {
        "size": chunk.size, "overlap": chunk.overlap, "unit": chunk.unit}})
    registry.install(make_adapter(d / "base", d / "staging-gamma", seed=6), "gamma", card, d / "adapters")
    q = "Is asthma treated with inhaled steroids in children?"
    before = engine.answer(q, adapter="gamma", retrieval=True, max_new_tokens=1)
    assert not before.passages and any("not built yet" in n for n in before.notes)
    # `loracle eval` without --adapter evaluates the default adapter, and builds its card's index first
    from app.config import EvalConfig
    from app.evaluate import run_eval

    monkeypatch.setattr(engine.config, "default_adapter", "gamma")
    result = run_eval(EvalConfig(data=str(shared_data / "sample" / "dev.jsonl"), modes="lora+rag", limit=1,
                                 max_new_tokens=1, n_resamples=50), engine, out=tmp_path / "eval")
    assert missing_shipped_indexes() == ["pubmedqa-doc"]  # only the index the card names
    assert result.rows[0]["index"] == "pubmedqa-1000" and result.rows[0]["retrieved_doc_ids"]
    ix = Index.open("pubmedqa-1000")
    assert (ix.chunk_config.size, ix.chunk_config.overlap) == (1000, 150) and ix.manifest["counts"]["documents"] == 20
    ix.close()
    after = engine.answer(q, adapter="gamma", retrieval=True, max_new_tokens=1)
    assert after.passages and after.settings["index"] == "pubmedqa-1000"
    assert not any("not built yet" in n or "trained on passages chunked" in n for n in after.notes)
    engine.build_card_index("gamma")  # built: nothing to do
    assert Index.open("pubmedqa-1000").manifest["counts"]["documents"] == 20


def test_passages_the_caller_gives_replace_retrieval(setup, sample_index):
    """Request.passages: no index is searched (a missing one is not an error), the answer is in the rag mode,
    cites the given passages, and its decision is scored over a prompt that shows them."""
    from app.retrieve import get_retriever

    engine, d = setup
    q = "Is asthma treated with inhaled steroids in children?"
    given = get_retriever(str(sample_index)).search("vaccine storage temperature in general practice", 2)
    opts = dict(decide=True, scored=True, calibrate=False, max_new_tokens=1)
    ans = engine.answer_batch([Request(q, "alpha", passages=given, index="not-built", **opts)])[0]
    assert ans.mode == "lora+rag" and [p.chunk.chunk_id for p in ans.passages] == [p.chunk.chunk_id for p in given]
    assert ans.settings["index"] is None and ans.settings["source"]["index"] == "request (passages given)"
    retrieved = engine.answer_batch([Request(q, "alpha", retrieval=True, index=str(sample_index), k=2, **opts)])[0]
    assert [p.chunk.chunk_id for p in retrieved.passages] != [p.chunk.chunk_id for p in given]
    assert ans.decision.raw_probs != retrieved.decision.raw_probs  # other passages, another prompt
    again = engine.answer_batch([Request(q, "alpha", passages=retrieved.passages, **opts)])[0]
    assert again.decision.raw_probs == pytest.approx(retrieved.decision.raw_probs, abs=1e-4)


def test_an_index_chunked_otherwise_than_the_adapters_training_index_is_noted(setup, sample_index):
    """The card records how its training index was chunked; answers over an index chunked otherwise say so."""
    from ingest.index import Index

    engine, d = setup
    ix = Index.open(str(sample_index))
    now = {k: ix.manifest["chunker"][k] for k in ("size", "overlap", "unit")}
    ix.close()
    q = "Is asthma treated with inhaled steroids in children?"
    for name, chunker, noted in (("same", now, False), ("other", {**now, "size": now["size"] + 300}, True)):
        card = card_for(d / "base", answer_settings={"k": 2, "index": str(sample_index), "chunker": chunker})
        registry.install(make_adapter(d / "base", d / f"staging-{name}", seed=5), name, card, d / "adapters")
        ans = engine.answer(q, adapter=name, retrieval=True, max_new_tokens=1)
        assert ans.passages
        hits = [n for n in ans.notes if "was trained on passages chunked" in n]
        assert bool(hits) == noted
        if noted:
            assert f"--chunk-size {now['size'] + 300}" in hits[0] and f"{now['size']}/{now['overlap']}" in hits[0]


def test_an_empty_index_answers_without_passages_and_says_so(setup, tmp_path):
    from ingest.index import Index

    engine, _ = setup
    Index.create(tmp_path / "empty").close()
    ans = engine.answer("Is asthma treated with steroids?", retrieval=True, index=str(tmp_path / "empty"),
                        max_new_tokens=1)
    assert ans.mode == "base" and not ans.passages
    assert any("returned no passages" in n for n in ans.notes)
