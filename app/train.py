"""LoRA training (plain SFT and retrieval-aware, RAFT-style) -> an adapter installed in the registry.

Prompts are built exactly as the engine builds them at answer time (`prompts.build_messages` rendered
by `prompts.render`); the target is `prompts.format_target(...)` plus EOS, and only target tokens
carry loss. With `retrieval_aware`, a share of examples carries k retrieved passages (the gold
document's passage in `gold_fraction` of them, cited in the target) and the rest carries none, so one
adapter serves both the `lora` and `lora+rag` modes.
"""
from __future__ import annotations

import json
import math
import random
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from app import prompts
from app.types import Passage

IGNORE = -100
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class TrainConfig:
    data: str
    name: str
    base_model: str | None = None  # app.models spec; None -> the default base model
    epochs: float = 1.0
    lr: float = 3e-4
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    layers: int | None = None  # adapt only the last N transformer layers (backward stops there: cheaper)
    max_len: int = 640  # tokens per example (prompt + target); passages are shortened to fit
    grad_accum: int = 8  # examples per optimizer step (micro-batch is one example: no padding waste)
    warmup: float = 0.06  # fraction of optimizer steps
    val_fraction: float = 0.05
    evals: int = 3  # validation passes during training (plus one at the end)
    retrieval_aware: bool = False
    index: str = "pubmedqa"
    gold_fraction: float = 0.8  # of the examples with passages, how many include the gold document
    no_passage_fraction: float = 0.3  # examples with the plain template (serves the `lora` mode)
    k: int = 3
    passage_chars: int = prompts.PASSAGE_CHARS  # characters kept per passage in training prompts
    seed: int = 0
    limit: int | None = None  # use only the first N items of the data file
    parent: str | None = None  # adapter to continue training from (name in the registry)
    adapters_dir: str | None = None  # registry root; None -> app.config.adapters_dir()
    threads: int | None = 2  # torch threads; None leaves torch's default


@dataclass
class Example:
    item_id: str
    input_ids: list[int]
    labels: list[int]
    passages: int = 0  # passages in the prompt
    gold: int | None = None  # 1-based position of the gold passage, None when absent


@dataclass
class TrainResult:
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def load_items(path) -> list[dict]:
    """QA JSONL rows (read by app.evaluate.load_questions); training also needs a long_answer or final_decision."""
    from app.evaluate import load_questions

    items = []
    for item in load_questions(path):
        if not (item.long_answer or item.final_decision):
            raise ValueError(f"{path}: item '{item.id}' has neither 'long_answer' nor 'final_decision' to train on "
                             "(QA JSONL format)")
        items.append(asdict(item))
    if not items:
        raise ValueError(f"training data {path} holds no QA items")
    return items


def split(items: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction))) if val_fraction > 0 and len(items) > 1 else 0
    val = set(order[:n_val])
    return [items[i] for i in order if i not in val], [items[i] for i in sorted(val)]


def _trim(p: Passage, chars: int) -> Passage:
    from dataclasses import replace

    return replace(p, chunk=replace(p.chunk, text=p.chunk.text[:chars]))


def plan_passages(items: list[dict], retrieved: list[list[Passage]], config: TrainConfig) -> list[tuple[list[Passage], int | None]]:
    """Per item: the passages its prompt carries and the 1-based gold position (None if no gold).

    `retrieved[i]` is a ranked list (longer than k) for item i. Seeded: the same config gives the same plan.
    """
    rng = random.Random(config.seed + 1)
    plan = []
    for item, found in zip(items, retrieved):
        if rng.random() < config.no_passage_fraction:
            plan.append(([], None))
            continue
        gold_id = item.get("context_doc_id")
        golds = [p for p in found if gold_id and p.doc_id == gold_id]
        others = [p for p in found if not (gold_id and p.doc_id == gold_id)]
        use_gold = bool(golds) and rng.random() < config.gold_fraction
        if use_gold:
            chosen = others[: config.k - 1]
            pos = rng.randrange(len(chosen) + 1)
            chosen.insert(pos, golds[0])
            gold = pos + 1
        else:
            chosen, gold = others[: config.k], None
        plan.append(([_trim(p, config.passage_chars) for p in chosen], gold))
    return plan


def encode(tokenizer, item: dict, passages: list[Passage], gold: int | None, max_len: int) -> Example:
    """Prompt in the engine's exact format; labels are IGNORE on the prompt, target tokens + EOS after it.

    Too long: passages are shortened first, then the explanation (the decision, the citation and EOS stay).
    """
    cite = [gold] if gold else None
    target_ids = tokenizer(prompts.format_target(item.get("final_decision"), item.get("long_answer") or "", cite=cite),
                           add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    chars = max((len(p.chunk.text) for p in passages), default=0)
    while True:
        prompt = prompts.render(tokenizer, prompts.build_messages(item["question"], passages or None))
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # as the engine tokenizes it
        if len(prompt_ids) + len(target_ids) <= max_len or chars < 100:
            break
        chars = int(chars * 0.85)
        passages = [_trim(p, chars) for p in passages]
    room = max_len - len(prompt_ids)
    if len(target_ids) > room:
        tail = tokenizer(prompts.format_target(None, "", cite=cite), add_special_tokens=False)["input_ids"] if cite else []
        tail = tail + [tokenizer.eos_token_id]
        target_ids = target_ids[: max(1, room - len(tail))] + tail
    return Example(str(item.get("id")), prompt_ids + target_ids, [IGNORE] * len(prompt_ids) + target_ids,
                   len(passages), gold)


def build_examples(items: list[dict], tokenizer, config: TrainConfig,
                   retrieved: list[list[Passage]] | None = None) -> list[Example]:
    if retrieved is None:
        return [encode(tokenizer, it, [], None, config.max_len) for it in items]
    plan = plan_passages(items, retrieved, config)
    return [encode(tokenizer, it, ps, gold, config.max_len) for it, (ps, gold) in zip(items, plan)]


def retrieve_for(items: list[dict], config: TrainConfig) -> list[list[Passage]]:
    """Ranked passages per question from the index (deeper than k, so gold and distractors can be chosen)."""
    from app.retrieve import get_retriever

    retriever = get_retriever(config.index)
    return retriever.search_many([it["question"] for it in items], k=max(4 * config.k, 12))


def example_loss(model, ex: Example):
    """Mean cross-entropy over the target tokens; logits are computed only where labels are set."""
    import torch
    import torch.nn.functional as F

    first = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE)
    keep = len(ex.labels) - first + 1
    ids = torch.tensor([ex.input_ids])
    logits = model(input_ids=ids, logits_to_keep=keep).logits[0, :-1]
    labels = torch.tensor(ex.labels[first:])
    return F.cross_entropy(logits.float(), labels)


def evaluate_loss(model, examples: list[Example]) -> float:
    import torch

    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total = sum(example_loss(model, ex).item() for ex in examples)
    model.train(was_training)
    return total / len(examples)


def fit(model, train: list[Example], val: list[Example], config: TrainConfig,
        progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Optimizer loop: AdamW, warmup + cosine decay, gradient accumulation over single examples."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    rng = random.Random(config.seed)
    micro = max(1, round(len(train) * config.epochs))
    order = []
    while len(order) < micro:
        epoch = list(range(len(train)))
        rng.shuffle(epoch)
        order += epoch
    order = order[:micro]
    total = math.ceil(micro / config.grad_accum)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, max(1, round(total * config.warmup)), total)
    eval_at = {max(1, round(total * (i + 1) / (config.evals + 1))) for i in range(config.evals)} if val else set()
    result = TrainResult()
    model.train()
    start = time.monotonic()
    bar = tqdm(total=total, desc="training", unit="step", dynamic_ncols=True)
    try:
        for step in range(1, total + 1):
            batch = order[(step - 1) * config.grad_accum: step * config.grad_accum]
            step_loss = 0.0
            for i in batch:
                loss = example_loss(model, train[i]) / len(batch)
                loss.backward()
                step_loss += loss.item()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            result.train_curve.append((step, round(step_loss, 4)))
            if step in eval_at:
                result.val_curve.append((step, round(evaluate_loss(model, val), 4)))
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if progress:
                progress(step, total, step_loss)
    finally:
        bar.close()
    if val:
        result.val_curve.append((total, round(evaluate_loss(model, val), 4)))
    result.seconds = round(time.monotonic() - start, 1)
    return result


def command_for(config: TrainConfig) -> str:
    """The `loracle train` command line that reproduces this config."""
    defaults = TrainConfig(data="", name="")
    parts = ["loracle", "train", "--data", str(config.data), "--name", config.name]
    for f in fields(TrainConfig):
        if f.name in ("data", "name", "adapters_dir"):
            continue
        value, default = getattr(config, f.name), getattr(defaults, f.name)
        if value == default or (f.name == "target_modules" and tuple(value) == tuple(default)):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        elif isinstance(value, (tuple, list)):
            parts += [flag, ",".join(value)]
        elif value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def train(config: TrainConfig, progress: Callable[[int, int, float], None] | None = None,
          retrieved: list[list[Passage]] | None = None):
    """Train a LoRA adapter and install it in the registry; returns its `registry.AdapterInfo`.

    `retrieved` (ranked passages per data item) replaces the index search when given. Nothing is
    installed unless training completes: an exception (also one raised by `progress`) leaves the
    registry as it was.
    """
    import datetime as dt

    import peft
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from app import models, registry
    from app.config import adapters_dir
    from app.models import sha256_file

    root = Path(config.adapters_dir) if config.adapters_dir else adapters_dir()
    registry.check_name(config.name)
    if not 0 <= config.gold_fraction <= 1 or not 0 <= config.no_passage_fraction <= 1:
        raise ValueError("--gold-fraction and the no-passage fraction must lie between 0 and 1")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    items = load_items(config.data)[: config.limit or None]
    train_items, val_items = split(items, config.val_fraction, config.seed)
    model, tokenizer, info = models.load(config.base_model)
    if config.retrieval_aware and retrieved is None:
        retrieved = retrieve_for(items, config)
    if retrieved is not None:
        by_id = {str(it.get("id")): r for it, r in zip(items, retrieved)}
        train_ret = [by_id[str(it.get("id"))] for it in train_items]
        val_ret = [by_id[str(it.get("id"))] for it in val_items]
    else:
        train_ret = val_ret = None
    train_ex = build_examples(train_items, tokenizer, config, train_ret)
    val_ex = build_examples(val_items, tokenizer, config, val_ret)

    parent = None
    if config.parent:
        pinfo = registry.get(config.parent, root)
        registry.check_compatible(pinfo, info.name)
        model = PeftModel.from_pretrained(model, str(pinfo.path), is_trainable=True)
        parent = {"name": pinfo.name, "version": pinfo.version}
    else:
        n_layers = model.config.num_hidden_layers
        if config.layers is not None and not 1 <= config.layers <= n_layers:
            raise ValueError(f"--layers {config.layers} is out of range: the base model has {n_layers} layers")
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=list(config.target_modules), task_type="CAUSAL_LM",
                          layers_to_transform=list(range(n_layers - config.layers, n_layers)) if config.layers else None)
        model = get_peft_model(model, lora)
    result = fit(model, train_ex, val_ex, config, progress)

    with_passages = [e for e in train_ex if e.passages]
    card = {
        "description": f"LoRA adapter trained on {Path(config.data).name}"
                       + (" with retrieved passages (RAFT-style)" if config.retrieval_aware else ""),
        "base_model": {"name": info.name, "spec": info.spec, "sha256": info.sha256},
        "training_data": {"path": str(Path(config.data).resolve()), "sha256": sha256_file(Path(config.data)),
                          "items": len(items), "train": len(train_items), "val": len(val_items)},
        "hyperparameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()
                            if k not in ("data", "name", "adapters_dir")},
        "retrieval": {"index": str(config.index), "k": config.k, "examples_with_passages": len(with_passages),
                      "examples_with_gold": sum(1 for e in train_ex if e.gold)} if config.retrieval_aware else None,
        "loss_curve": [list(p) for p in result.train_curve],
        "val_loss_curve": [list(p) for p in result.val_curve],
        "training_time_s": result.seconds,
        "reproduce": command_for(config),
        "libraries": {"torch": torch.__version__, "peft": peft.__version__},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if parent:
        card["parent"] = parent
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".train-{config.name}.", dir=root))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        return registry.install(staging, config.name, card, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_HELP = {
    "data": "QA JSONL file (fields: question, long_answer, final_decision, context_doc_id)",
    "name": "adapter name in the registry (a new version when it exists)",
    "base_model": "base model spec: built-in name, local folder or hub id (default smollm2-135m-instruct)",
    "target_modules": "comma-separated module names to adapt",
    "retrieval_aware": "RAFT-style: training prompts carry retrieved passages from --index",
    "gold_fraction": "share of passage-carrying examples that include the gold document",
    "no_passage_fraction": "share of examples with no passages (plain template)",
    "k": "passages per training prompt",
    "limit": "use only the first N items",
    "layers": "adapt only the last N transformer layers (default: all)",
    "parent": "continue training from this registered adapter",
}


def add_arguments(parser) -> None:
    """CLI flags mirroring TrainConfig's fields (one place for defaults)."""
    defaults = TrainConfig(data="", name="")
    for f in fields(TrainConfig):
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        names = [flag, "-k"] if f.name == "k" else [flag]
        help_ = _HELP.get(f.name, f.name.replace("_", " "))
        if f.name in ("data", "name"):
            parser.add_argument(*names, required=True, help=help_)
        elif isinstance(default, bool):
            parser.add_argument(*names, action="store_true", help=help_)
        elif isinstance(default, tuple):
            parser.add_argument(*names, default=",".join(default), help=f"{help_} (default {','.join(default)})")
        else:
            kind = {"int": int, "float": float}.get(type(default).__name__, str)
            if f.name in ("limit", "threads", "layers"):
                kind = int
            parser.add_argument(*names, type=kind, default=default, help=f"{help_} (default {default})")


def config_from_args(args) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    values["target_modules"] = tuple(m.strip() for m in values["target_modules"].split(",") if m.strip())
    return TrainConfig(**values)
