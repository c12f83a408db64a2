"""Evaluation harness: metrics on known answers, schema errors, card evidence, regressions, end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app import metrics
from app.evaluate import (EvalResult, QAItem, _row, compare_results, load_questions, load_results,
                          save_to_card, summarize, write_results)
from app.eval_report import plot_summary, summary_markdown
from app.decision import Decision
from app.prompts import parse_citations, parse_decision
from app.types import Answer, Passage
from ingest.types import Chunk

ITEMS = [QAItem("q1", "Is A?", "doc-1", "yes", "A is true."),
         QAItem("q2", "Is B?", "doc-2", "no", "B is false."),
         QAItem("q3", "Is C?", "doc-3", "maybe", "C is unclear.")]


def passage(doc_id: str, rank: int) -> Passage:
    return Passage(Chunk(f"{doc_id}#0", doc_id, f"text of {doc_id}", 0, 10), 1.0 / rank, rank)


def answer(text: str, mode: str, passages: list[Passage] | None = None, seconds: float = 1.0) -> Answer:
    """An answer as free generation gives it: the decision read from the text."""
    passages = passages or []
    label = parse_decision(text)
    return Answer(text, mode, "med@v1" if "lora" in mode else None, passages, parse_citations(text, passages),
                  {"retrieval_s": 0.5 if passages else 0.0, "generation_s": seconds},
                  decision=Decision(label, {}, {}, "parsed") if label else None, settings={"k": 2})


def rows_for(mode: str, texts: list[str], passages: list[list[Passage]] | None = None) -> list[dict]:
    passages = passages or [[] for _ in texts]
    return [_row(item, mode, answer(t, mode, p)) for item, t, p in zip(ITEMS, texts, passages)]


def test_accuracy_exactly_two_thirds_and_parse_failure_counts_as_no_decision():
    rows = rows_for("base", ["Yes, A holds.", "No. B does not.", "It depends on many things."])
    assert [r["decision"] for r in rows] == ["yes", "no", None]
    m = metrics.mode_metrics(rows, k=2)
    assert m["accuracy"] == round(2 / 3, 4)
    assert m["no_decision_rate"] == round(1 / 3, 4)
    assert m["accuracy_ci_low"] <= m["accuracy"] <= m["accuracy_ci_high"]
    assert m["rouge_l"] is not None and 0 <= m["rouge_l"] <= 1
    assert "recall@2" not in m and "citation_validity" not in m  # no passages: metrics switched off


def test_macro_f1_on_a_known_case():
    # yes: P=1 R=1/2 F=2/3; no: P=1/2 R=1 F=2/3; maybe: never predicted F=0 -> (2/3 + 2/3 + 0) / 3
    f1 = metrics.macro_f1(["yes", "no", "no", None], ["yes", "yes", "no", "maybe"])
    assert f1 == pytest.approx(4 / 9)
    # the data README's always-"yes" baseline on dev: 28 yes, 17 no, 5 maybe -> 0.239
    gold = ["yes"] * 28 + ["no"] * 17 + ["maybe"] * 5
    assert metrics.macro_f1(["yes"] * 50, gold) == pytest.approx(0.239, abs=1e-3)
    assert metrics.accuracy(["yes"] * 50, gold) == pytest.approx(0.56)


def test_recall_and_citation_validity():
    gold_in = [passage("doc-1", 1), passage("doc-9", 2)]
    gold_out = [passage("doc-8", 1), passage("doc-9", 2)]
    late = [passage("doc-8", 1), passage("doc-7", 2), passage("doc-3", 3)]
    rows = rows_for("rag", ["Yes [1].", "No [3].", "Maybe."], [gold_in, gold_out, late])
    assert [r["retrieval_hit"] for r in rows] == [True, False, False]  # doc-3 is 3rd, outside k=2
    assert rows[0]["cited_passage_ids"] == ["doc-1#0"] and rows[1]["citations_valid"] is False
    m = metrics.mode_metrics(rows, k=2)
    assert m["recall@2"] == round(1 / 3, 4)
    assert m["citation_rate"] == round(2 / 3, 4)
    assert m["citation_validity"] == 0.5  # [3] was cited but only 2 passages were given
    assert m["latency_mean_s"] == 1.5


def test_paired_bootstrap_is_seeded_and_brackets_the_difference():
    a, b = [1, 1, 1, 0, 1, 1, 0, 1], [1, 0, 0, 0, 1, 0, 0, 1]
    r1, r2 = metrics.paired_bootstrap(a, b, seed=3), metrics.paired_bootstrap(a, b, seed=3)
    assert r1 == r2 and r1["diff"] == pytest.approx(3 / 8)
    assert r1["ci_low"] <= r1["diff"] <= r1["ci_high"] and r1["ci_low"] >= 0
    same = metrics.paired_bootstrap(a, a)
    assert (same["diff"], same["ci_low"], same["ci_high"]) == (0, 0, 0)


def test_summary_differences_and_markdown(tmp_path):
    rows = rows_for("base", ["Yes.", "Yes.", "Yes."]) + rows_for("rag", ["Yes.", "No.", "Maybe."])
    summary = summarize(rows, {"modes": ["base", "rag"], "k": 2, "n_items": 3})
    assert summary["metrics"]["rag"]["accuracy"] == 1.0
    (diff,) = [d for d in summary["differences"] if d["metric"] == "accuracy"]
    assert (diff["a"], diff["b"], diff["diff"]) == ("rag", "base", round(2 / 3, 4))
    rouge = [d for d in summary["differences"] if d["metric"] == "rouge_l"]  # rows with a reference answer
    assert len(rouge) == 1 and (rouge[0]["a"], rouge[0]["b"]) == ("rag", "base")
    assert rouge[0]["ci_low"] <= rouge[0]["diff"] <= rouge[0]["ci_high"]
    m = summary["metrics"]["rag"]
    assert m["rouge_l_ci_low"] <= m["rouge_l"] <= m["rouge_l_ci_high"]
    paths = write_results(EvalResult(rows, summary), tmp_path / "out")
    assert {p.name for p in paths} == {"results.jsonl", "summary.json", "summary.md", "accuracy.png",
                                       "latency.png", "recall.png"}
    assert summary["metrics"]["rag"]["recall@2"] == 0.0  # a rag answer that retrieved nothing is a miss
    assert "recall@2" not in summary["metrics"]["base"]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| rag | 3 | 100.0%" in md and "rag − base" in md
    back = load_results(tmp_path / "out")
    assert back.rows == json.loads(json.dumps(rows)) and back.summary["metrics"] == summary["metrics"]


def test_recall_is_reported_at_the_k_each_mode_used():
    # rag read 2 passages, lora+rag 1 (its adapter's k): the one that missed at k=1 is not "recall@2"
    docs = [[passage("doc-x", 1), passage(f"doc-{i}", 2)] for i in (1, 2, 3)]
    rows = rows_for("rag", ["Yes.", "No.", "Maybe."], docs) + rows_for("lora+rag", ["Yes.", "No.", "Maybe."],
                                                                        [d[:1] for d in docs])
    summary = summarize(rows, {"modes": ["rag", "lora+rag"], "k": 2, "n_items": 3,
                               "k_by_mode": {"rag": 2, "lora+rag": 1}})
    assert summary["metrics"]["rag"]["recall@2"] == 1.0 and summary["metrics"]["lora+rag"]["recall@1"] == 0.0
    assert "recall@2" not in summary["metrics"]["lora+rag"]
    md = summary_markdown(summary)
    assert "recall@k (each mode's k)" in md and "100.0% (k=2)" in md and "0.0% (k=1)" in md
    assert "recall" in plot_summary(summary)


def test_the_summary_names_each_modes_index_and_k_when_an_adapter_card_names_its_own():
    from app.eval_report import summary_markdown

    same = {"n_items": 3, "modes": ["rag", "lora+rag"], "index": "pubmedqa",
            "index_by_mode": {"rag": "pubmedqa", "lora+rag": "pubmedqa"}}
    assert "index pubmedqa," in summary_markdown({**same, "metrics": {}})
    own = {**same, "index_by_mode": {"rag": "pubmedqa", "lora+rag": "pubmedqa-1000"}}
    assert "index pubmedqa (rag), pubmedqa-1000 (lora+rag)," in summary_markdown({**own, "metrics": {}})
    ks = {**own, "k": 3, "k_by_mode": {"rag": 3, "lora+rag": 1}}
    assert "k=3 (rag), 1 (lora+rag)," in summary_markdown({**ks, "metrics": {}})
    assert "k=–," in summary_markdown({"n_items": 3, "modes": ["base"], "k": None, "metrics": {}})


def test_malformed_lines_are_reported_with_file_and_line(tmp_path):
    good = {"id": "a", "question": "Is it?"}
    cases = [("{not json", "line 2: not valid JSON"),
             (json.dumps({"id": "b"}), "line 2: field 'question' is missing"),
             (json.dumps({"id": "b", "question": "Q?", "final_decision": "perhaps"}),
              "line 2: final_decision 'perhaps' is not one of yes, no, maybe"),
             (json.dumps(["a list"]), "line 2: expected a JSON object"),
             (json.dumps(good), "line 2: duplicate id 'a' (first on line 1)")]
    for bad, message in cases:
        path = tmp_path / "qa.jsonl"
        path.write_text(json.dumps(good) + "\n" + bad + "\n")
        with pytest.raises(ValueError) as exc:
            load_questions(path)
        assert str(path) in str(exc.value) and message in str(exc.value), str(exc.value)
    lines = [json.dumps({"id": str(i), "question": "Q?"} if i % 3 else {"id": str(i)}) for i in range(1, 40)]
    path.write_text("\n".join(lines))  # every bad line is named at once (the first ten), the rest counted
    with pytest.raises(ValueError) as exc:
        load_questions(path)
    assert [f"line {n}:" in str(exc.value) for n in (3, 30, 33)] == [True, True, False]
    assert str(exc.value).endswith("... and 3 more bad lines")
    path.write_bytes(json.dumps(good).encode() + b'\n{"id": "c", "question": "Is caf\xe9 ok?"}\n')  # latin-1
    with pytest.raises(ValueError, match=r"line 2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        load_questions(path)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(good).encode() + b"\r\n")  # a byte-order mark, CRLF: fine
    assert [it.id for it in load_questions(path)] == ["a"]
    with pytest.raises(FileNotFoundError, match="--data"):
        load_questions(tmp_path / "missing.jsonl")
    for limit in (0, -3):
        with pytest.raises(ValueError, match=f"limit {limit}: give at least 1 question"):
            load_questions(path, limit)


def test_missing_optional_fields_switch_metrics_off(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "What is B?"}) + "\n\n")
    (item,) = load_questions(path)
    assert (item.context_doc_id, item.final_decision, item.long_answer) == (None, None, None)
    row = _row(item, "rag", answer("B is a letter [1].", "rag", [passage("doc-1", 1)]))
    m = metrics.mode_metrics([row], k=5)
    assert not {"accuracy", "macro_f1", "rouge_l", "recall@5"} & set(m)
    assert m["citation_validity"] == 1.0


def test_regression_table_from_two_result_folders(tmp_path):
    from app.cli import main

    old = rows_for("lora", ["Yes.", "Yes.", "Maybe."])  # right, wrong, right
    new = rows_for("lora", ["No.", "No.", "Maybe."])  # wrong, right, right
    for name, rows in (("old", old), ("new", new)):
        write_results(EvalResult(rows, summarize(rows, {"modes": ["lora"], "adapter": f"med@{name}"})),
                      tmp_path / name)
    report = compare_results(load_results(tmp_path / "old"), load_results(tmp_path / "new"))
    assert report["modes"]["lora"]["worse"] == ["q1"] and report["modes"]["lora"]["better"] == ["q2"]
    assert report["modes"]["lora"]["unchanged"] == 1
    assert main(["eval", "--compare", str(tmp_path / "old"), str(tmp_path / "new"),
                 "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| lora | 3 | 66.7% | 66.7% |" in md and "| 1 | 1 | 1 |" in md and "- q1: Is A?" in md
    assert "Warning" not in md
    fewer = new[:2]  # the new run answered only two of the three: figures over those two, and a warning
    write_results(EvalResult(fewer, summarize(fewer, {"modes": ["lora"], "adapter": "med@fewer", "n_items": 2})),
                  tmp_path / "fewer")
    report = compare_results(load_results(tmp_path / "old"), load_results(tmp_path / "fewer"))
    lora = report["modes"]["lora"]
    assert (lora["shared"], lora["old_accuracy"], lora["new_accuracy"]) == (2, 0.5, 0.5)
    assert report["warnings"] == ["the two runs answered different questions (3 and 2); figures are over the 2 both "
                                  "answered"]


@pytest.fixture(scope="module")
def registry_root(tiny_model_dir, tmp_path_factory) -> Path:
    from app import registry
    from tests.tiny_adapter import card_for, make_adapter

    root = tmp_path_factory.mktemp("adapters")
    registry.install(make_adapter(tiny_model_dir, root / "staging"), "med", card_for(tiny_model_dir), root=root)
    return root


def test_card_update_under_the_evaluated_version(registry_root, tiny_model_dir):
    from app import registry
    from tests.tiny_adapter import card_for, make_adapter

    rows = rows_for("lora", ["Yes.", "No.", "No."])
    summary = summarize(rows, {"modes": ["lora"], "k": 5, "adapter": "med@v1", "n_items": 3})
    save_to_card(summary, root=registry_root)
    card = json.loads((registry_root / "med" / "card.json").read_text())
    assert card["evals"]["v1"]["lora"]["accuracy"] == round(2 / 3, 4)
    assert card["evals"]["v1"]["run"]["adapter"] == "med@v1"
    registry.install(make_adapter(tiny_model_dir, registry_root / "staging2", seed=2), "med",
                     card_for(tiny_model_dir), root=registry_root)
    with pytest.raises(ValueError, match="current version is med@v2"):
        save_to_card(summary, root=registry_root)  # v1's numbers never land on v2
    kept = json.loads((registry_root / "med" / "card.json").read_text())["evals"]
    assert kept["v1"]["lora"]["accuracy"] == round(2 / 3, 4) and "v2" not in kept
    rag_only = summarize(rows_for("rag", ["Yes.", "No.", "No."]), {"modes": ["rag"], "adapter": "med@v2",
                                                                     "n_items": 3})
    with pytest.raises(ValueError, match="only an evaluation of a registry adapter in lora or lora\\+rag mode can be "
                                         "recorded in its card; this one ran rag with adapter med@v2"):
        save_to_card(rag_only, root=registry_root)


def test_a_smaller_evaluation_does_not_silently_replace_the_stored_one(tiny_model_dir, tmp_path):
    from app import registry
    from tests.tiny_adapter import card_for, make_adapter

    registry_root = tmp_path / "registry"
    registry.install(make_adapter(tiny_model_dir, tmp_path / "staging"), "med", card_for(tiny_model_dir),
                     root=registry_root)
    current = registry.get("med", registry_root)
    full = summarize(rows_for("lora", ["Yes.", "No.", "No."]) + rows_for("lora+rag", ["Yes.", "Yes.", "No."]),
                     {"modes": ["lora", "lora+rag"], "adapter": current.label, "n_items": 3, "data_sha256": "1" * 64})
    save_to_card(full, root=registry_root)
    small = summarize(rows_for("lora", ["No."]), {"modes": ["lora"], "adapter": current.label, "n_items": 1,
                                                   "data_sha256": "1" * 64})
    with pytest.raises(ValueError, match=r"it has 3 questions, this run 1; it has modes this run lacks \(lora\+rag\)"
                                         r".*--replace-card-eval"):
        save_to_card(small, root=registry_root)
    stored = json.loads((registry_root / "med" / "card.json").read_text())["evals"][f"v{current.version}"]
    assert stored["run"]["n_items"] == 3 and "lora+rag" in stored  # nothing stored was lost
    other_set = summarize(rows_for("lora", ["No."] * 3) + rows_for("lora+rag", ["No."] * 3),
                          {"modes": ["lora", "lora+rag"], "adapter": current.label, "n_items": 3,
                           "data_sha256": "0" * 64})
    with pytest.raises(ValueError, match="another question set"):
        save_to_card(other_set, root=registry_root)
    save_to_card(small, root=registry_root, replace=True)  # on purpose
    stored = json.loads((registry_root / "med" / "card.json").read_text())["evals"][f"v{current.version}"]
    assert stored["run"]["n_items"] == 1 and "lora+rag" not in stored


def test_judge_scores_are_finite_probabilities(tiny_model_dir):
    from app.judge import FaithfulnessJudge

    judge = FaithfulnessJudge(str(tiny_model_dir), batch_size=2)
    pairs = [("Yes, A holds [1].", [passage("doc-1", 1)]), ("No passages here.", []),
             ("", [passage("doc-2", 1), passage("doc-3", 2)]), ("Maybe " * 300, [passage("doc-4", 1)])]
    scores = judge.score_many(pairs)
    assert scores[1] is None
    for s in scores[:1] + scores[2:]:
        assert isinstance(s, float) and math.isfinite(s) and 0.0 <= s <= 1.0


def test_end_to_end_eval_on_the_tiny_engine_writes_everything(registry_root, tiny_model_dir, sample_index, tmp_path,
                                                               monkeypatch, shared_data, capsys):
    # 3 questions, 2 per batch (a full and a partial batch), rows with passages in batches of their own
    from app import registry
    from app.cli import main

    index, modes = str(sample_index), "base,lora,rag,lora+rag"
    monkeypatch.setenv("LORACLE_ADAPTERS", str(registry_root))
    out = tmp_path / "run"
    argv = ["eval", "--data", str(shared_data / "sample" / "dev.jsonl"), "--adapter", "med", "--index", index,
            "-k", "2", "--limit", "3", "--questions-per-batch", "2", "--max-new-tokens", "3",
            "--base-model", str(tiny_model_dir), "--out", str(out), "--n-resamples", "200"]
    assert main(argv + ["--modes", "base,rag"]) == 0
    first = {(r["id"], r["mode"]): r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    before = (out / "results.jsonl").read_bytes()  # a second run into the same folder without --resume: refused
    assert main(argv + ["--modes", "base"]) == 2 and "already holds an evaluation" in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == before
    # --resume keeps base and rag and runs only the two adapter modes
    assert main(argv + ["--modes", modes, "--resume", "--save-to-card"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    wanted = modes.split(",")
    assert len(rows) == 3 * len(wanted) and [r["mode"] for r in rows[:len(wanted)]] == wanted
    assert len({r["id"] for r in rows[:len(wanted)]}) == 1  # question-major order, whatever the batching
    assert all(r["mode_used"] == r["mode"] for r in rows)
    assert all(r == first[(r["id"], r["mode"])] for r in rows if r["mode"] in ("base", "rag"))
    for r in rows:
        assert {"id", "question", "answer", "decision", "gold", "cited_passage_ids", "retrieved_doc_ids",
                "timings", "latency_s", "rouge_l"} <= set(r)
        assert bool(r["retrieved_doc_ids"]) == r["mode"].endswith("rag")
        assert (r["adapter"] or "").startswith("med@v") == r["mode"].startswith("lora")
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["metrics"]) == wanted and summary["n_items"] == 3
    assert summary["warnings"] == []  # the sample index holds the sample questions' abstracts
    assert summary["resumed"]["modes"] == ["base", "rag"] and summary["adapter"].startswith("med@v")
    assert summary["index_by_mode"]["rag"] == index and summary["k_by_mode"]["rag"] == 2  # the kept mode's own
    for m in summary["metrics"].values():
        assert 0 <= m["accuracy"] <= 1 and m["latency_mean_s"] > 0 and "macro_f1" in m
    assert "recall@2" in summary["metrics"]["rag"] and (out / "recall.png").is_file()
    assert (out / "summary.md").read_text().count("\n| ") >= len(wanted)
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "latency.png").is_file()
    info = registry.get("med", registry_root)
    assert info.card["evals"][f"v{info.version}"]["lora"]["n"] == 3
    # a one-question check would replace those three questions' evidence: refused before it runs
    small = [a if a != "3" else "1" for a in argv[:-4]] + ["--out", str(tmp_path / "small"), "--modes", "lora"]
    assert main(small + ["--save-to-card"]) == 2
    assert "it has 3 questions, this run 1" in capsys.readouterr().err and not (tmp_path / "small").exists()
    assert registry.get("med", registry_root).card.evals == info.card["evals"]
    # resuming with another adapter would mix its rows with med's: refused, the folder untouched
    from tests.tiny_adapter import card_for, make_adapter

    registry.install(make_adapter(tiny_model_dir, tmp_path / "staging-other", seed=3), "other",
                     card_for(tiny_model_dir), root=registry_root)
    before = (out / "results.jsonl").read_bytes()
    other = [a if a != "med" else "other" for a in argv]
    assert main(other + ["--modes", modes + ",top1", "--resume"]) == 2
    assert "adapter 'med@v" in capsys.readouterr().err and (out / "results.jsonl").read_bytes() == before
    # storing an older version's figures is refused before evaluating, not after the whole run
    registry.install(make_adapter(tiny_model_dir, tmp_path / "staging-next", seed=4), "med",
                     card_for(tiny_model_dir), root=registry_root)
    old = [a if a != "med" else "med@v1" for a in argv[:-4]] + ["--out", str(tmp_path / "old"), "--modes", "lora"]
    assert main(old + ["--save-to-card"]) == 2
    assert "only for the current version" in capsys.readouterr().err and not (tmp_path / "old").exists()


def test_compare_two_adapter_versions_on_the_tiny_engine(registry_root, tiny_model_dir, sample_index, tmp_path,
                                                         monkeypatch, shared_data, capsys):
    from app import registry
    from app.cli import main
    from tests.tiny_adapter import card_for, make_adapter

    if registry.get("med", registry_root).version < 2:
        registry.install(make_adapter(tiny_model_dir, tmp_path / "staging", seed=3), "med",
                         card_for(tiny_model_dir), root=registry_root)
    monkeypatch.setenv("LORACLE_ADAPTERS", str(registry_root))
    out = tmp_path / "cmp"
    # a missing version is refused before the first side is evaluated, naming the versions there are
    assert main(["eval", "--compare", "med@v1", "med@v9", "--data", str(shared_data / "sample" / "dev.jsonl"),
                 "--base-model", str(tiny_model_dir), "--out", str(out)]) == 2
    assert "no version v9; it has v1, v" in capsys.readouterr().err and not out.exists()
    assert main(["eval", "--compare", "med@v1", "med", "--data", str(shared_data / "sample" / "dev.jsonl"),
                 "--modes", "lora,lora+rag", "--index", str(sample_index), "-k", "2", "--limit", "2",
                 "--max-new-tokens", "2", "--base-model", str(tiny_model_dir), "--out", str(out),
                 "--no-split-by-retrieval"]) == 0
    report = json.loads((out / "compare.json").read_text())
    current = registry.get("med", registry_root).label
    assert (report["old"], report["new"]) == ("med@v1", current)
    assert set(report["modes"]) == {"lora", "lora+rag"}
    for entry in report["modes"].values():
        assert len(entry["worse"]) + len(entry["better"]) + entry["unchanged"] == 2
    summary = json.loads(next(out.glob("b-*/summary.json")).read_text())
    assert summary["split_by_retrieval"] is False and summary["metrics"]["lora+rag"]["n"] == 2
    assert (out / "compare.md").read_text().startswith(f"Regression report: {current} against med@v1")


def _verdict_rows(mode: str, decisions: list[str], latency: float, tokens: int) -> list[dict]:
    golds = ["yes", "no", "maybe", "yes", "no", "yes"] * 4
    return [{"id": f"q{i}", "mode": mode, "decision": d, "gold": g, "latency_s": latency,
             "timings": {"prompt_tokens": tokens}} for i, (d, g) in enumerate(zip(decisions, golds))]


def test_verdict_says_not_significant_on_identical_results_and_picks_the_cheaper_mode():
    golds = ["yes", "no", "maybe", "yes", "no", "yes"] * 4
    same = [g if i % 2 else "yes" for i, g in enumerate(golds)]
    rows = _verdict_rows("lora", same, 0.5, 80) + _verdict_rows("lora+rag", same, 2.0, 700)
    summary = summarize(rows, {"modes": ["lora", "lora+rag"], "k": 3})
    v = summary["verdict"]
    assert v["metric"] == "macro_f1" and v["values"]["lora"] == v["values"]["lora+rag"]
    assert all(not c["significant"] for c in v["comparisons"])
    assert v["recommended"] == "lora" and "not significant" in v["text"] and "lora is enough" in v["text"]


def test_verdict_names_a_significant_winner():
    from app.verdict import verdict

    golds = ["yes", "no", "maybe", "yes", "no", "yes"] * 4
    rows = _verdict_rows("rag", golds, 2.0, 700) + _verdict_rows("base", ["yes"] * 24, 0.5, 80)
    v = verdict(rows, summarize(rows, {"modes": ["base", "rag"], "k": 3}))
    assert v["best"] == "rag" and v["recommended"] == "rag"
    assert v["comparisons"][0]["significant"] and v["comparisons"][0]["ci_low"] > 0
    assert "**rag** scores best by macro-F1" in v["text"]


def test_verdict_says_tie_and_only_mode():
    from app.verdict import verdict

    golds = ["yes", "no", "yes"]
    rows = (_verdict_rows("lora+rag", golds, 3.0, 500) + _verdict_rows("base", golds, 0.5, 60)
            + _verdict_rows("lora", golds, 0.6, 60))
    v = verdict(rows, summarize(rows, {"modes": ["base", "lora", "lora+rag"], "k": 3}))
    assert v["best"] == "base"  # equal scores: the one with the fewest prompt tokens, then the fastest
    assert "**base** ties with lora, lora+rag for the best macro-F1" in v["text"] and "costs least of them" in v["text"]
    one = _verdict_rows("rag", golds, 1.0, 300)
    assert "**rag**, the only mode evaluated, scores macro-F1" in verdict(one, summarize(one, {"modes": ["rag"]}))["text"]


def test_verdict_does_not_call_a_mode_cheaper_on_latency_noise():
    """base and lora read the same prompt: a few percent less wall time (a shared CPU) does not make the
    worse-scoring one "enough"; more questions are needed instead."""
    golds = ["yes", "no", "maybe", "yes", "no", "yes"] * 4
    near = [g if i % 5 else "yes" for i, g in enumerate(golds)]
    rows = _verdict_rows("base", near, 2.14, 65) + _verdict_rows("lora", golds[:21] + ["yes"] * 3, 2.2, 65)
    v = summarize(rows, {"modes": ["base", "lora"], "k": 3})["verdict"]
    assert not v["comparisons"][0]["significant"] and v["recommended"] == v["best"]
    assert "enough" not in v["text"] and "more questions are needed" in v["text"]


def test_verdict_recommends_the_best_of_the_clearly_cheaper_modes():
    """lora+rag is best but not significantly; lora and base cost the same (base timed a little faster):
    the cheaper mode to recommend is the better-scoring lora, not whichever was timed faster."""
    golds = ["yes", "no", "maybe", "yes", "no", "yes"] * 4
    rows = (_verdict_rows("lora+rag", golds[:22] + ["yes"] * 2, 2.0, 700)
            + _verdict_rows("lora", golds[:19] + ["yes"] * 5, 0.52, 80)
            + _verdict_rows("base", golds[:16] + ["yes"] * 8, 0.5, 80))
    v = summarize(rows, {"modes": ["base", "lora", "lora+rag"], "k": 3})["verdict"]
    assert v["best"] == "lora+rag" and not any(c["significant"] for c in v["comparisons"])
    assert v["values"]["lora"] > v["values"]["base"] and v["recommended"] == "lora"


def test_summary_reports_uncalibrated_parsed_and_per_class_recall():
    rows = _verdict_rows("rag", ["no"] * 24, 1.0, 500)
    for r in rows:
        r.update(logprobs={"yes": -0.1, "no": -3.0, "maybe": -4.0}, uncalibrated_decision="yes",
                 free_answer="It depends.", parsed_decision=None, decision_source="scored")
    m = summarize(rows, {"modes": ["rag"], "k": 3})["metrics"]["rag"]
    assert m["recall_no"] == 1.0 and m["recall_yes"] == 0.0
    assert m["uncalibrated_recall_yes"] == 1.0 and m["uncalibrated_accuracy"] == 0.5
    assert m["parsed_no_decision_rate"] == 1.0 and m["parsed_accuracy"] == 0.0
    assert m["prompt_tokens_mean"] == 500


def test_few_shot_examples_are_balanced_and_never_from_the_evaluated_set(tmp_path):
    from app.evaluate import few_shot_examples

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Is P{i}?", "final_decision": d,
                                        "long_answer": f"P{i} holds. More text."}) + "\n"
                            for i, d in enumerate(["yes"] * 6 + ["no"] * 3 + ["maybe"] * 3)))
    shots = few_shot_examples(str(pool), 3, ITEMS)
    assert sorted(a.split(".")[0] for _, a in shots) == ["Maybe", "No", "Yes"]
    with pytest.raises(ValueError, match="overlap the evaluated questions"):
        few_shot_examples(str(pool), 3, [QAItem("p1", "Is P1?")])


def test_top1_baseline_is_the_first_retrieved_passage(registry_root, tiny_model_dir, sample_index, tmp_path,
                                                       monkeypatch, shared_data, capsys):
    """The extractive baseline: the top retrieved passage as the answer, scored by ROUGE-L beside the modes."""
    from app.cli import main

    monkeypatch.setenv("LORACLE_ADAPTERS", str(registry_root))
    out = tmp_path / "run"
    argv = ["eval", "--data", str(shared_data / "sample" / "dev.jsonl"), "--index", str(sample_index), "-k", "2",
            "--sample", "2", "--max-new-tokens", "2", "--base-model", str(tiny_model_dir), "--out", str(out),
            "--n-resamples", "50"]
    assert main(argv + ["--modes", "base,rag"]) == 0
    assert main(argv + ["--modes", "base,rag,top1", "--resume"]) == 0  # rag runs again: top1 needs its passages
    rows = {(r["id"], r["mode"]): r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    ids = {i for i, _ in rows}
    first_two = [json.loads(line)["id"] for line in (shared_data / "sample" / "dev.jsonl").read_text().splitlines()[:2]]
    assert len(ids) == 2 and ids != set(first_two)  # a seeded sample (seed 0), the same one on --resume
    from app.retrieve import get_retriever

    for i in ids:
        top, rag = rows[(i, "top1")], rows[(i, "rag")]
        assert top["retrieved_chunk_ids"] == rag["retrieved_chunk_ids"][:1]
        assert top["answer"] == get_retriever(str(sample_index)).search(top["question"], 1)[0].chunk.text
        assert top["answer"] and top["decision"] is None and 0 < top["rouge_l"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert "rouge_l" in summary["metrics"]["top1"]
    top1_pairs = {(d["a"], d["metric"]) for d in summary["differences"] if d["b"] == "top1"}
    assert top1_pairs == {("rag", "rouge_l")}  # top1 states no decision: no accuracy difference against it
    assert main(argv + ["--modes", "base,top1", "--out", str(tmp_path / "other")]) != 0
    assert "top1 baseline reuses a rag mode" in capsys.readouterr().err


def test_accuracy_error_bars_keep_a_lower_bound_of_zero():
    from app.eval_report import plot_summary

    summary = {"metrics": {"base": {"accuracy": 0.1, "accuracy_ci_low": 0.0, "accuracy_ci_high": 0.3}}}
    from matplotlib.container import ErrorbarContainer

    (errorbar,) = [c for c in plot_summary(summary)["accuracy"].axes[0].containers if isinstance(c, ErrorbarContainer)]
    (segment,) = errorbar.lines[2][0].get_segments()
    assert [round(float(y), 3) for _, y in segment] == [0.0, 0.3]


def test_a_rerun_into_the_same_folder_leaves_no_chart_of_the_earlier_run(tmp_path):
    (tmp_path / "recall.png").write_bytes(b"an earlier run's chart, with rag modes")
    rows = rows_for("lora", ["Yes.", "No.", "No."])
    write_results(EvalResult(rows, summarize(rows, {"modes": ["lora"], "k": 5, "n_items": 3})), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"results.jsonl", "summary.json", "summary.md", "accuracy.png",
                                                    "latency.png"}


def test_verdict_draws_no_conclusion_from_a_handful_of_questions():
    golds = ["yes", "no", "maybe", "yes", "no"]
    rows = _verdict_rows("base", golds, 2.0, 65)[:5] + _verdict_rows("lora", ["no"] * 5, 1.0, 65)[:5]
    v = summarize(rows, {"modes": ["base", "lora"], "k": 3})["verdict"]
    assert v["best"] == "base" and v["recommended"] is None and not v["comparisons"][0]["significant"]
    assert "With only 5 questions no difference can be called significant" in v["text"]
    assert "enough" not in v["text"]


def test_a_rag_mode_over_an_index_without_the_sets_gold_documents_is_flagged(sample_index):
    from app.evaluate import gold_warnings

    rows = [{"mode": "rag", "index": str(sample_index), "context_doc_id": f"medquad-{i}"} for i in range(3)]
    (warning,) = gold_warnings(rows)
    assert f"index '{sample_index}' (rag) holds none of this set's 3 gold documents" in warning and "--index" in warning
    from ingest.index import Index

    ix = Index.open(str(sample_index))
    present = ix.documents()[0]["doc_id"]
    ix.close()
    assert gold_warnings(rows + [{**rows[0], "context_doc_id": present}]) == []  # some found: retrieval's own misses
    assert gold_warnings([{**r, "mode": "lora"} for r in rows]) == []  # no retrieval, nothing to say
    (unbuilt,) = gold_warnings([{**r, "index": "not-built-here"} for r in rows])
    assert "index 'not-built-here' is not built, so rag answered without passages" in unbuilt


def test_verdict_recommends_no_cheaper_mode_from_a_handful_of_shared_questions():
    golds = ["yes", "no", "maybe", "yes", "no", "yes"] * 4
    rows = _verdict_rows("lora+rag", golds[:22] + ["yes"] * 2, 2.0, 700) + \
        _verdict_rows("lora", ["yes", "no", "yes", "no", "no"], 0.5, 80)  # lora answered only 5 of the 24
    v = summarize(rows, {"modes": ["lora", "lora+rag"], "k": 3})["verdict"]
    assert v["best"] == "lora+rag" and v["comparisons"][0]["n"] == 5 and v["recommended"] == "lora+rag"


def test_a_resumed_evaluation_keeps_the_kept_modes_wrong_index_warning(registry_root, tiny_model_dir, tmp_path,
                                                                        monkeypatch, shared_data):
    from app.cli import main
    from ingest.pipeline import ingest_paths

    note = tmp_path / "note.txt"
    note.write_text("Zinc lozenges shorten the common cold by about two days in adults.\n")
    ingest_paths([note], index=str(tmp_path / "other-index"))  # holds none of the sample set's abstracts
    monkeypatch.setenv("LORACLE_ADAPTERS", str(registry_root))
    out = tmp_path / "run"
    argv = ["eval", "--data", str(shared_data / "sample" / "dev.jsonl"), "--adapter", "med", "--index",
            str(tmp_path / "other-index"), "-k", "1", "--limit", "2", "--max-new-tokens", "1",
            "--base-model", str(tiny_model_dir), "--out", str(out), "--n-resamples", "50"]
    assert main(argv + ["--modes", "rag"]) == 0
    first = json.loads((out / "summary.json").read_text())["warnings"]
    assert len(first) == 1 and "holds none of this set's 2 gold documents" in first[0]
    assert main(argv + ["--modes", "rag,lora", "--resume"]) == 0  # rag kept, lora run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"]["modes"] == ["rag"] and summary["warnings"] == first
