"""Engine behaviour on a real tiny Llama with real PEFT adapters: modes, batching, streaming, threads."""
from __future__ import annotations

import threading

import pytest

from app import registry
from app.config import EngineConfig
from app.engine import Engine, Request
from tests.tiny_adapter import card_for, make_adapter, untie_base

QUESTIONS = ["What is aspirin?", "Does smoking cause lung cancer in adults who smoke every day?", "Is tea good?"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    base = untie_base(tiny_model_dir, d / "base")
    root = d / "adapters"
    for name, seed in (("alpha", 1), ("beta", 2)):
        registry.install(make_adapter(base, d / f"staging-{name}", seed=seed), name, card_for(base), root)
    engine = Engine(EngineConfig(base_model=str(base), adapters_dir=str(root), adapters=("alpha", "beta"),
                                 max_new_tokens=10))
    return engine, base, root, d


@pytest.fixture(scope="module")
def alone(setup):
    engine = setup[0]
    return {(q, a): engine.answer(q, adapter=a).text for q in QUESTIONS for a in (None, "alpha", "beta")}


def test_adapter_on_off_changes_output_without_reloading(setup, alone):
    engine = setup[0]
    weight = engine.base_model.get_input_embeddings().weight
    ptr, model = weight.data_ptr(), engine.model
    for q in QUESTIONS:
        assert alone[(q, None)] and alone[(q, "alpha")] and alone[(q, "beta")]
        assert alone[(q, None)] != alone[(q, "alpha")] != alone[(q, "beta")]
    for _ in range(2):  # back and forth: same answers, same weights, same model object
        assert engine.answer(QUESTIONS[0], adapter="alpha").text == alone[(QUESTIONS[0], "alpha")]
        assert engine.answer(QUESTIONS[0]).text == alone[(QUESTIONS[0], None)]
    assert engine.model is model and engine.base_model.get_input_embeddings().weight.data_ptr() == ptr
    assert engine.loaded_adapters() == ["alpha", "beta"]


def test_answer_reports_mode_adapter_and_timings(setup):
    engine = setup[0]
    base = engine.answer(QUESTIONS[0])
    lora = engine.answer(QUESTIONS[0], adapter="alpha", max_new_tokens=4)
    assert (base.mode, base.adapter) == ("base", None)
    assert (lora.mode, lora.adapter) == ("lora", "alpha@v1")
    assert lora.timings["new_tokens"] <= 4 and lora.timings["prompt_tokens"] > 10
    assert {"retrieval_s", "generation_s", "tokens_per_s"} <= set(lora.timings)
    assert lora.question == QUESTIONS[0] and lora.passages == [] and lora.citations == []


def test_mixed_batch_equals_separate_runs_row_by_row(setup, alone):
    engine = setup[0]
    reqs = [Request(q, a) for q in QUESTIONS for a in (None, "alpha", "beta")]
    answers = engine.answer_batch(reqs)  # decoded together, prompts of different lengths (left padding)
    for r, a in zip(reqs, answers):
        assert a.text == alone[(r.question, r.adapter)], (r, a.text)
        assert a.mode == ("lora" if r.adapter else "base")
    sizes = [a.timings["batch_size"] for a in answers]  # 9 rows, at most max_batch (8) decoded together
    assert max(sizes) == engine.config.max_batch == 8 and sizes.count(8) == 8


def test_mixed_batch_of_short_and_long_prompts_prefills_rows_alone(setup, alone):
    engine = setup[0]
    long_q = "Given that " + "the drug was tested in many trials with good results, " * 25 + "is it safe?"
    seen = []
    hook = engine.base_model.get_input_embeddings().register_forward_hook(
        lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        reqs = [Request(QUESTIONS[0]), Request(long_q, "alpha"), Request(QUESTIONS[0], "beta"), Request(long_q)]
        answers = engine.answer_batch(reqs)
    finally:
        hook.remove()
    assert seen[4] == (4, 1)  # four unpadded prefills, then one joint decode of all rows
    assert [s[0] for s in seen[:4]] == [1, 1, 1, 1] and seen[1][1] > 3 * seen[0][1]
    assert answers[0].text == alone[(QUESTIONS[0], None)] and answers[2].text == alone[(QUESTIONS[0], "beta")]
    assert answers[1].text == engine.answer(long_q, adapter="alpha").text
    assert answers[3].text == engine.answer(long_q).text


def test_batch_rows_keep_their_own_token_limit(setup, alone):
    engine = setup[0]
    short, long_ = engine.answer_batch([Request(QUESTIONS[1], "beta", max_new_tokens=3), Request(QUESTIONS[1])])
    assert short.timings["new_tokens"] <= 3 and long_.text == alone[(QUESTIONS[1], None)]


@pytest.fixture
def index_path(request):
    pytest.importorskip("app.retrieve", reason="retrieval module not available yet")
    try:
        return str(request.getfixturevalue("sample_index"))
    except pytest.FixtureLookupError:
        pytest.skip("sample_index fixture not available yet")


def test_compare_gives_four_modes_with_cited_passages(setup, alone, index_path):
    engine = setup[0]
    result = engine.compare(QUESTIONS[0], adapter="alpha", index=index_path, k=3)
    assert list(result) == ["base", "lora", "rag", "lora+rag"]
    assert [a.mode for a in result.values()] == ["base", "lora", "rag", "lora+rag"]
    assert [a.adapter for a in result.values()] == [None, "alpha@v1", None, "alpha@v1"]
    assert result["base"].text == alone[(QUESTIONS[0], None)]
    assert result["lora"].text == alone[(QUESTIONS[0], "alpha")]
    for mode in ("rag", "lora+rag"):
        a = result[mode]
        assert len(a.passages) == 3 and a.timings["prompt_tokens"] > result["base"].timings["prompt_tokens"]
        assert all(c.valid == (1 <= c.number <= 3) and (c.passage is not None) == c.valid for c in a.citations)
    alone_rag = engine.answer(QUESTIONS[0], adapter="alpha", retrieval=True, index=index_path, k=3)
    assert alone_rag.text == result["lora+rag"].text and alone_rag.mode == "lora+rag"


def test_stream_yields_deltas_then_the_answer(setup, alone):
    engine = setup[0]
    items = list(engine.stream(QUESTIONS[2], adapter="beta"))
    final = items[-1]
    deltas = items[:-1]
    assert deltas and all(isinstance(x, str) for x in deltas)
    assert final.text == alone[(QUESTIONS[2], "beta")] and final.adapter == "beta@v1"
    assert "".join(deltas).strip() == final.text


def test_threads_never_see_each_others_adapter(setup, alone):
    engine = setup[0]
    errors: list[str] = []

    def worker(adapter, q):
        for _ in range(3):
            a = engine.answer(q, adapter=adapter)
            if a.text != alone[(q, adapter)] or a.adapter != (f"{adapter}@v1" if adapter else None):
                errors.append(f"{adapter}: {a.text!r}")

    threads = [threading.Thread(target=worker, args=(a, QUESTIONS[i % 3]))
               for i, a in enumerate((None, "alpha", "beta", "alpha", None, "beta"))]
    streamed = []
    threads.append(threading.Thread(target=lambda: streamed.append(list(engine.stream(QUESTIONS[0], "alpha"))[-1])))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert streamed[0].text == alone[(QUESTIONS[0], "alpha")]


def test_new_version_is_picked_up_without_reloading_the_base(setup, alone):
    engine, base, root, d = setup
    registry.install(make_adapter(base, d / "staging-beta2", seed=9), "beta", card_for(base), root)
    model = engine.model
    a = engine.answer(QUESTIONS[0], adapter="beta")
    assert a.adapter == "beta@v2" and a.text != alone[(QUESTIONS[0], "beta")]
    assert engine.model is model and engine.answer(QUESTIONS[0], adapter="alpha").text == alone[(QUESTIONS[0], "alpha")]
    assert engine.answer(QUESTIONS[0]).text == alone[(QUESTIONS[0], None)]


def test_adapter_folder_path_and_wrong_base_refused(setup, tiny_model_dir):
    engine, base, root, d = setup
    other = d / "other-base"
    other.mkdir(exist_ok=True)
    staging = make_adapter(base, d / "staging-wrong", seed=3)
    registry.install(staging, "wrong", card_for(base, base_model={"name": "HuggingFaceTB/SmolLM2-360M", "sha256": ""}),
                     root)
    with pytest.raises(ValueError) as exc:
        engine.answer(QUESTIONS[0], adapter="wrong")
    assert "HuggingFaceTB/SmolLM2-360M" in str(exc.value) and "loracle-test/tiny-llama" in str(exc.value)
    with pytest.raises(FileNotFoundError, match="no adapter 'missing'"):
        engine.answer(QUESTIONS[0], adapter="missing")
    ref = engine.load_adapter(str(root / "alpha"))  # a folder path works too
    assert (ref.name, ref.key, ref.label) == ("alpha", "alpha", "alpha@v1")


def test_empty_question_is_refused(setup):
    with pytest.raises(ValueError, match="empty question"):
        setup[0].answer("   ")


def test_cli_ask_json_and_stream(setup, sample_index, monkeypatch, capsys):
    import json

    from app.cli import main

    engine, base, root, d = setup
    monkeypatch.setenv("LORACLE_ADAPTERS", str(root))
    assert main(["ask", QUESTIONS[0], "--adapter", "alpha", "--base-model", str(base), "--json",
                 "--max-new-tokens", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "lora" and out["adapter"] == "alpha@v1" and out["sources"] == []
    assert out["text"] == engine.answer(QUESTIONS[0], adapter="alpha").text
    card = {**card_for(base), "answer_settings": {"max_new_tokens": 64}}  # a card with its own budget ...
    registry.install(make_adapter(base, d / "staging-long", seed=1), "long", card, root)
    assert main(["ask", QUESTIONS[0], "--adapter", "long", "--base-model", str(base), "--json",
                 "--max-new-tokens", "5"]) == 0
    out = json.loads(capsys.readouterr().out)  # ... gives way to the budget typed for this question
    assert out["settings"]["max_new_tokens"] == 5 and out["timings"]["new_tokens"] <= 5
    assert main(["ask", QUESTIONS[0], "--base-model", str(base), "--stream", "--max-new-tokens", "10"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(engine.answer(QUESTIONS[0]).text) and "[base ·" in printed
    assert main(["ask", QUESTIONS[0], "--rag", "--index", str(sample_index), "-k", "2", "--base-model", str(base),
                 "--max-new-tokens", "3"]) == 0
    printed = capsys.readouterr().out
    given = engine.answer(QUESTIONS[0], retrieval=True, index=str(sample_index), k=2, max_new_tokens=3).passages
    assert "passages given" in printed and all(p.doc_id in printed for p in given)  # what was read, cited or not
    assert "retrieval (index " in printed and "k=2" in printed  # which index and k the answer searched
    assert main(["ask", QUESTIONS[0], "--adapter", "nope", "--base-model", str(base)]) == 2
    assert "no adapter 'nope'" in capsys.readouterr().err
    assert main(["ask", QUESTIONS[0], "--base-model", str(base), "--stream", "--json"]) == 2
    assert "--stream and --json do not go together" in capsys.readouterr().err


@pytest.mark.slow
def test_real_default_model_answers_in_all_four_modes(tmp_path):
    """SmolLM2-135M-Instruct, with the shipped adapter when installed (else a random-init LoRA made on the
    fly) and the default index when built (else the shipped corpus is indexed by ingest)."""
    from app.config import DEFAULT_ADAPTER
    from app.models import resolve
    from app.retrieve import get_retriever

    info = resolve(None)
    root = None
    try:
        registry.check_compatible(registry.get(DEFAULT_ADAPTER), info.name)
    except (FileNotFoundError, ValueError):
        root = tmp_path / "adapters"
        staging = make_adapter(info.path, tmp_path / "staging", rank=8, std=0.01)
        registry.install(staging, DEFAULT_ADAPTER, card_for(info.path), root)
    try:
        get_retriever("pubmedqa")
    except FileNotFoundError:
        from ingest.pipeline import ensure_default_index

        ensure_default_index()
    engine = Engine(EngineConfig(adapters_dir=str(root) if root else None, max_new_tokens=12, k=2))
    assert engine.loaded_adapters() == [DEFAULT_ADAPTER]
    engine.build_card_index(DEFAULT_ADAPTER)  # the shipped v2 names pubmedqa-1000, as `loracle compare` does
    result = engine.compare("Does aspirin reduce the risk of heart attack?")
    assert [a.mode for a in result.values()] == ["base", "lora", "rag", "lora+rag"]
    for mode, a in result.items():
        assert a.text and a.timings["new_tokens"] > 0, mode
        assert (a.adapter or "").startswith(DEFAULT_ADAPTER) == ("lora" in mode)
        assert len(a.passages) == (a.settings["k"] if "rag" in mode else 0)
        assert all(c.passage is not None for c in a.citations if c.valid)
        assert a.decision is not None and a.text.lower().startswith(a.decision.label)  # a yes/no question
    assert result["rag"].settings["k"] == 2  # the engine's k; lora+rag takes the adapter card's when it has one


def test_an_answer_cut_at_its_token_limit_says_so(setup):
    engine = setup[0]
    cut = engine.answer(QUESTIONS[0], max_new_tokens=16)  # the random tiny model never says end-of-text
    assert cut.timings["new_tokens"] == 16
    assert any("stopped at its limit of 16 new tokens" in n and "--max-new-tokens" in n for n in cut.notes)
    assert not engine.answer(QUESTIONS[0], max_new_tokens=4).notes  # decision-sized budgets are not flagged


def test_a_prompt_over_the_model_context_is_refused_before_generating(setup):
    from app.types import Chunk, Passage

    engine = setup[0]
    long = [Passage(Chunk(f"d{i}#0", f"d{i}", "aspirin trial " * 300, 0, 4200), 1.0, i + 1) for i in range(4)]
    with pytest.raises(ValueError, match=r"4 passage\(s\).*over the model's context of 2,048 tokens; use fewer"):
        engine.answer(QUESTIONS[0], passages=long, max_new_tokens=4)
    with pytest.raises(ValueError, match="over the model's context"):  # the answer's tokens count too
        engine.answer(QUESTIONS[0], max_new_tokens=2100)
    assert engine.answer(QUESTIONS[0], passages=long[:1], max_new_tokens=4).passages  # one fits
