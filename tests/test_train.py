"""LoRA training on the tiny model: loss mask, loss goes down, loadable adapter, card, RAFT prompts, atomicity."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from app import prompts, registry
from app.train import (IGNORE, TrainConfig, build_examples, encode, evaluate_loss, load_items, plan_passages, split,
                       train)
from tests.tiny import TINY_NAME


@pytest.fixture()
def qa_file(tmp_path, shared_data):
    """The 10 PubMedQA sample items (real data), written to a tmp JSONL file."""
    path = tmp_path / "qa.jsonl"
    path.write_text((shared_data / "sample" / "dev.jsonl").read_text())
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _config(qa_file, tiny_model_dir, tmp_path, **kw):
    base = dict(data=str(qa_file), name="tiny-med", base_model=str(tiny_model_dir), epochs=3, lr=1e-2, rank=4,
                alpha=8, dropout=0.0, max_len=256, grad_accum=1, val_fraction=0.2, evals=1,
                adapters_dir=str(tmp_path / "adapters"), threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_mask_covers_only_the_answer_tokens(tokenizer, qa_file):
    item = load_items(qa_file)[0]
    ex = encode(tokenizer, item, [], None, max_len=512)
    prompt = prompts.render(tokenizer, prompts.build_messages(item["question"]))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n_prompt = len(prompt_ids)
    assert ex.input_ids[:n_prompt] == prompt_ids  # exactly the prompt the engine tokenizes
    assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
    answer = ex.labels[n_prompt:]
    assert IGNORE not in answer and answer == ex.input_ids[n_prompt:]
    assert answer[-1] == tokenizer.eos_token_id
    target = prompts.format_target(item["final_decision"], item["long_answer"])
    assert tokenizer.decode(answer[:-1]) == target


def test_training_lowers_loss_and_installs_a_loadable_adapter_with_its_card(qa_file, tiny_model_dir, tmp_path,
                                                                            tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from app.models import sha256_file

    cfg = _config(qa_file, tiny_model_dir, tmp_path)
    examples = build_examples(load_items(qa_file), tokenizer, cfg)
    before = evaluate_loss(AutoModelForCausalLM.from_pretrained(tiny_model_dir), examples)
    steps = []
    info = train(cfg, progress=lambda step, total, loss: steps.append((step, total, loss)))
    assert steps and steps[-1][0] == steps[-1][1]

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(info.path))
    # RMSNorm and the small tied embeddings of the random tiny model cap how far its loss can fall
    assert evaluate_loss(model, examples) < before - 0.05
    names = {p.name for p in info.path.iterdir() if p.is_file()}
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names
    from app.routing import load_summary  # the routing summary of its training questions ships with it

    meta, matrix = load_summary(info.path)
    assert matrix.shape[0] == meta["count"] > 0
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]

    card = json.loads((info.path / "card.json").read_text())
    assert card["base_model"]["name"] == TINY_NAME and card["base_model"]["sha256"]
    assert card["training_data"]["sha256"] == sha256_file(qa_file)
    assert card["training_data"]["train"] == 8 and card["training_data"]["val"] == 2
    assert card["hyperparameters"]["rank"] == 4 and card["hyperparameters"]["target_modules"]
    assert len(card["loss_curve"]) == len(steps) and len(card["val_loss_curve"]) >= 2
    assert card["training_time_s"] > 0 and card["parent"] is None and card["version"] == 1
    assert card["reproduce"].startswith("loracle train --data ") and "--rank 4" in card["reproduce"]
    assert "--adapters-dir" not in card["reproduce"]
    assert [a.name for a in registry.list_adapters(cfg.adapters_dir)] == ["tiny-med"]

    again = train(replace(cfg, epochs=1, parent="tiny-med"))
    assert again.version == 2 and again.card["parent"] == {"name": "tiny-med", "version": 1}


def test_retrieval_aware_prompts_carry_the_gold_passage_in_the_set_fraction(qa_file, tokenizer, sample_index):
    from app.retrieve import Retriever

    items = load_items(qa_file)
    found = Retriever(sample_index).search_many([it["question"] for it in items], k=12)
    assert all(any(p.doc_id == it["context_doc_id"] for p in ps) for it, ps in zip(items, found))
    many = [dict(it, id=f"{it['id']}-{n}") for n in range(30) for it in items]  # 300 items, seeded plan
    cfg = TrainConfig(data="", name="x", retrieval_aware=True, gold_fraction=0.6, no_passage_fraction=0.25, k=3)
    plan = plan_passages(many, found * 30, cfg)
    assert plan == plan_passages(many, found * 30, cfg)
    with_passages = [(ps, gold) for ps, gold in plan if ps]
    assert abs(1 - len(with_passages) / len(plan) - 0.25) < 0.07
    assert abs(sum(1 for _, g in with_passages if g) / len(with_passages) - 0.6) < 0.08
    assert all(len(ps) == 3 for ps, _ in with_passages)
    for it, (ps, gold) in zip(many, plan):
        golds = [i + 1 for i, p in enumerate(ps) if p.doc_id == it["context_doc_id"]]
        assert golds == (gold or [])

    ex = build_examples(many[:40], tokenizer, replace(cfg, max_len=300), (found * 4))  # forces truncation
    for it, e, (ps, gold) in zip(many, ex, plan):
        text = tokenizer.decode(e.input_ids)
        answer = tokenizer.decode([t for t in e.labels if t != IGNORE])
        assert len(e.input_ids) <= 300 and answer.lower().startswith(it["final_decision"])
        if gold:
            assert f"[{gold[0]}] ({it['context_doc_id']}" in text
            full = "".join(f"[{g}]" for g in gold)
            assert answer.rstrip().endswith((full + "<|im_end|>", f"[{gold[0]}]<|im_end|>"))
        elif not ps:
            assert "Passages:" not in text and "[" not in answer


def test_resample_gives_each_epoch_its_own_passage_plan_and_fit_walks_them_in_order(qa_file, tokenizer,
                                                                                      sample_index, tiny_model_dir,
                                                                                      monkeypatch):
    from transformers import AutoModelForCausalLM

    from app.retrieve import Retriever
    from app.train import fit

    items = load_items(qa_file)
    found = Retriever(sample_index).search_many([it["question"] for it in items], k=12)
    cfg = TrainConfig(data="", name="x", retrieval_aware=True, gold_fraction=0.5, no_passage_fraction=0.3, k=3,
                      epochs=2, resample=True, grad_accum=1, lr=1e-3, evals=0, threads=1)
    first, second = (plan_passages(items, found, cfg, e) for e in (0, 1))
    assert first == plan_passages(items, found, cfg) and first != second  # epoch 0 = the plan without resample
    variants = [build_examples(items, tokenizer, cfg, found, epoch=e) for e in (0, 1)]
    seen = []
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    import app.train as train_module

    real = train_module.example_loss  # a spy on our own loss, to see which example each step trains on
    monkeypatch.setattr(train_module, "example_loss", lambda m, ex: (seen.append(ex), real(m, ex))[1])
    fit(model, variants, [], cfg)
    n = len(items)
    assert len(seen) == 2 * n
    assert all(any(ex is v for v in variants[0]) for ex in seen[:n])  # epoch 1 draws from plan 0, epoch 2 from plan 1
    assert all(any(ex is v for v in variants[1]) for ex in seen[n:])


def test_conclusion_fraction_shows_the_gold_documents_conclusion_as_a_cited_passage(qa_file, sample_index):
    from app.retrieve import Retriever

    items = load_items(qa_file)
    found = Retriever(sample_index).search_many([it["question"] for it in items], k=12)
    cfg = TrainConfig(data="", name="x", retrieval_aware=True, gold_fraction=1.0, no_passage_fraction=0.0, k=3,
                      conclusion_fraction=1.0)
    for it, (ps, gold) in zip(items, plan_passages(items, found, cfg)):
        shown = [i for i, p in enumerate(ps, 1) if p.chunk.text == f"CONCLUSIONS: {it['long_answer']}"]
        assert len(shown) == 1  # in place of the last distractor; added when every passage is the gold document's
        assert len(ps) == 3 or (len(ps) == 4 and all(p.doc_id == it["context_doc_id"] for p in ps))
        assert ps[shown[0] - 1].doc_id == it["context_doc_id"] and shown[0] in gold  # cited like the gold passage
    plain = plan_passages(items, found, replace(cfg, conclusion_fraction=0.0))
    assert not any(p.chunk.text.startswith("CONCLUSIONS: ") for ps, _ in plain for p in ps)


def test_retrieval_aware_training_searches_the_index(qa_file, tiny_model_dir, tmp_path, sample_index):
    cfg = _config(qa_file, tiny_model_dir, tmp_path, epochs=1, retrieval_aware=True, index=str(sample_index),
                  gold_fraction=1.0, no_passage_fraction=0.0, k=2, passage_chars=200)
    info = train(cfg)
    assert info.card["retrieval"] == {"index": str(sample_index), "k": 2, "examples_with_passages": 8,
                                      "examples_with_gold": 8}
    assert "--retrieval-aware" in info.card["reproduce"]
    assert info.card["description"] == f"LoRA adapter trained on {qa_file.name} with passages retrieved from " \
                                       f"'{sample_index}' (RAFT-style)"
    manifest = json.loads((sample_index / "manifest.json").read_text())["chunker"]
    assert info.card["answer_settings"]["chunker"] == {k: manifest[k] for k in ("size", "overlap", "unit")}


def test_interrupted_training_leaves_the_registry_untouched(qa_file, tiny_model_dir, tmp_path):
    cfg = _config(qa_file, tiny_model_dir, tmp_path)

    def stop(step, total, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=stop)
    root = tmp_path / "adapters"
    assert registry.list_adapters(root) == []
    assert not root.exists() or list(root.iterdir()) == []


def test_cli_train_installs_the_adapter(qa_file, tiny_model_dir, tmp_path, capsys):
    from app.cli import main

    root = tmp_path / "cli-adapters"
    rc = main(["train", "--data", str(qa_file), "--name", "cli-med", "--base-model", str(tiny_model_dir),
               "--epochs", "0.5", "--rank", "2", "--max-len", "128", "--layers", "1", "--adapters-dir", str(root),
               "--seed", "3", "--split-seed", "0", "--val-fraction", "0.3"])
    assert rc == 0 and "installed cli-med@v1" in capsys.readouterr().out
    items = load_items(qa_file)  # another seed, the same held-out questions as a seed-0 run
    card = registry.get("cli-med", root).card
    assert card["training_data"]["val_ids"] == [it["id"] for it in split(items, 0.3, 0)[1]]
    assert card["hyperparameters"]["seed"] == 3 and card["hyperparameters"]["split_seed"] == 0
    peft_config = json.loads((root / "cli-med" / "adapter_config.json").read_text())
    assert peft_config["layers_to_transform"] == [1] and peft_config["r"] == 2  # only the last layer adapted
    assert registry.get("cli-med", root).card["hyperparameters"]["max_len"] == 128
    assert main(["train", "--data", str(tmp_path / "missing.jsonl"), "--name", "x", "--adapters-dir", str(root)]) == 2


def test_decision_token_weight_and_class_balance(qa_file, tokenizer):
    from app.train import class_weights

    items = load_items(qa_file)
    w = class_weights(items, balance=True)
    counts = {c: sum(it["final_decision"] == c for it in items) for c in ("yes", "no", "maybe")}
    rare = min((c for c in counts if counts[c]), key=counts.get)
    common = max(counts, key=counts.get)
    assert w[rare] > 1 > w[common] and class_weights(items, balance=False)[common] == 1.0
    cfg = TrainConfig(data="", name="x", decision_weight=4.0, class_balance=True)
    ex = build_examples(items, tokenizer, cfg)
    for it, e in zip(items, ex):
        assert e.decision_weight == pytest.approx(4.0 * w[it["final_decision"]])


def test_weighted_loss_counts_the_decision_token_more(qa_file, tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from app.train import example_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ex = encode(tokenizer, load_items(qa_file)[0], [], None, 512)
    import torch

    plain = example_loss(model, ex).item()
    heavy = example_loss(model, replace(ex, decision_weight=5.0)).item()
    first = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, first - 1:-1]
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor(ex.labels[first:]), reduction="none")
    assert plain == pytest.approx(ce.mean().item(), rel=1e-4)
    assert heavy == pytest.approx(((5 * ce[0] + ce[1:].sum()) / (5 + len(ce) - 1)).item(), rel=1e-4)


def test_bad_training_settings_are_refused_naming_the_flag():
    with pytest.raises(ValueError, match="--gold-fraction 1.5"):
        TrainConfig(data="", name="x", gold_fraction=1.5)
    with pytest.raises(ValueError, match="--decision-weight"):
        TrainConfig(data="", name="x", decision_weight=0)


def test_seeds_install_one_merged_adapter_with_each_seeds_lineage(qa_file, tiny_model_dir, tmp_path, capsys):
    from app.cli import main

    root = tmp_path / "seeds-adapters"
    rc = main(["train", "--data", str(qa_file), "--name", "ens", "--base-model", str(tiny_model_dir),
               "--epochs", "0.5", "--rank", "2", "--max-len", "128", "--layers", "1", "--adapters-dir", str(root),
               "--seed", "3", "--seeds", "2", "--val-fraction", "0.3", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "installed ens@v1" in out and "merge of 2 seeds" in out
    assert "seed 3: train loss" in out and "seed 4: train loss" in out
    assert [a.label for a in registry.list_adapters(root)] == ["ens@v1"]  # the seeds themselves are not kept
    card = registry.get("ens", root).card.to_dict()
    assert [(m["name"], m["hyperparameters"]["seed"]) for m in card["merged_from"]] == [("ens-seed3", 3), ("ens-seed4", 4)]
    assert all(m["hyperparameters"]["split_seed"] == 3 and m["val_loss"] > 0 for m in card["merged_from"])
    assert card["merged_from"][0]["train_loss"] != card["merged_from"][1]["train_loss"]  # two different runs
    items = load_items(qa_file)  # both seeds hold out the questions of the seed-3 split
    assert card["training_data"]["val_ids"] == [it["id"] for it in split(items, 0.3, 3)[1]]
    assert "--seeds 2" in card["reproduce"] and card["hyperparameters"]["seeds"] == 2
    assert json.loads((root / "ens" / "adapter_config.json").read_text())["r"] == 4  # 2 + 2: one adapter
    assert "## Merged from" in (root / "ens" / "README.md").read_text()


def test_seeds_report_progress_over_all_runs_and_refuse_a_parent(qa_file, tiny_model_dir, tmp_path):
    cfg = _config(qa_file, tiny_model_dir, tmp_path, epochs=0.5, seeds=2, max_len=128, layers=1)
    seen = []
    train(cfg, progress=lambda step, total, loss: seen.append((step, total)))
    assert seen[-1][0] == seen[-1][1] and len({t for _, t in seen}) == 1 and seen == sorted(seen)
    with pytest.raises(ValueError, match="--seeds 2 with --parent"):
        _config(qa_file, tiny_model_dir, tmp_path, seeds=2, parent="tiny-med")
    with pytest.raises(ValueError, match="--seeds 0 must be at least 1"):
        _config(qa_file, tiny_model_dir, tmp_path, seeds=0)
    with pytest.raises(ValueError, match="merged rank of 640"):
        _config(qa_file, tiny_model_dir, tmp_path, seeds=5, rank=128)
    again = train(cfg)  # the same name again: version 2 of it, with version 1 as its parent
    assert again.version == 2 and again.card.parent == {"name": "tiny-med", "version": 1}
    with pytest.raises(ValueError, match="v2 is for .* the new one for org/another-model"):
        train(replace(cfg, base_model="org/another-model"))  # refused before any seed trains: no hub to load it from
