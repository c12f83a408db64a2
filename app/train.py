"""LoRA training (plain SFT and retrieval-aware, RAFT-style) -> an adapter installed in the registry.

Prompts are built exactly as the engine builds them at answer time (`prompts.build_messages` rendered
by `prompts.render`); the target is `prompts.format_target(...)` plus EOS, and only target tokens
carry loss. With `retrieval_aware`, a share of examples carries k retrieved passages (the gold
document's passage in `gold_fraction` of them, cited in the target) and the rest carries none, so one
adapter serves both the `lora` and `lora+rag` modes.
"""
from __future__ import annotations

import math
import random
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from app import prompts
from app.config import TrainConfig
from app.types import Passage

IGNORE = -100


@dataclass
class Example:
    item_id: str
    input_ids: list[int]
    labels: list[int]
    passages: int = 0  # passages in the prompt
    gold: list[int] | None = None  # 1-based positions of the gold document's passages, None when absent
    decision_weight: float = 1.0  # loss weight of the first target token (the decision)


@dataclass
class TrainResult:
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def load_items(path) -> list[dict]:
    """QA JSONL rows (read by app.evaluate.load_questions); training also needs a long_answer or final_decision."""
    from app.questions import load_questions

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


def _trim(p: Passage, chars: int | None) -> Passage:
    return p if chars is None else replace(p, chunk=replace(p.chunk, text=p.chunk.text[:chars]))


def plan_passages(items: list[dict], retrieved: list[list[Passage]], config: TrainConfig,
                  epoch: int = 0) -> list[tuple[list[Passage], list[int] | None]]:
    """Per item: the passages its prompt carries and the 1-based positions of the gold document's passages.

    RAFT-style: `no_passage_fraction` of the items get no passages; of the others, `gold_fraction` see the
    top-k as retrieval ranks them with the gold document in it (put at a random position when retrieval
    missed it), the rest only distractors. `retrieved[i]` is a ranked list deeper than k. Seeded
    (by `epoch` too, so `resample` gives each epoch its own plan).
    """
    rng = random.Random(config.seed + 1 + 1000 * epoch)
    plan = []
    for item, found in zip(items, retrieved):
        if rng.random() < config.no_passage_fraction:
            plan.append(([], None))
            continue
        gold_id = item.get("context_doc_id")
        others = [p for p in found if not (gold_id and p.doc_id == gold_id)]
        if any(p.doc_id == gold_id for p in found) and rng.random() < config.gold_fraction:
            chosen = found[: config.k]
            if not any(p.doc_id == gold_id for p in chosen):
                chosen = others[: config.k - 1]
                chosen.insert(rng.randrange(len(chosen) + 1), next(p for p in found if p.doc_id == gold_id))
            if item.get("long_answer") and rng.random() < config.conclusion_fraction:
                chosen = _with_conclusion(chosen, gold_id, item["long_answer"])
            gold = [i for i, p in enumerate(chosen, 1) if p.doc_id == gold_id]
        else:
            chosen, gold = others[: config.k], None
        plan.append(([_trim(p, config.passage_chars) for p in chosen], gold))
    return plan


def _with_conclusion(chosen: list[Passage], gold_id: str, conclusion: str) -> list[Passage]:
    """The gold document's conclusion as one more passage of it, in place of the last distractor (the corpus
    leaves conclusions out; shown in training only, it gives examples where the decision can be read)."""
    gold = next(p for p in chosen if p.doc_id == gold_id)
    extra = replace(gold, chunk=replace(gold.chunk, text=f"CONCLUSIONS: {conclusion}"))
    out = list(chosen)
    distractors = [i for i, p in enumerate(out) if p.doc_id != gold_id]
    if distractors:
        out[distractors[-1]] = extra
    else:
        out.append(extra)
    return out


def class_weights(items: list[dict], balance: bool) -> dict[str | None, float]:
    """Decision-token weight multiplier per class: n / (classes * n_class) when balancing, else 1."""
    counts: dict[str, int] = {}
    for it in items:
        if it.get("final_decision"):
            counts[it["final_decision"]] = counts.get(it["final_decision"], 0) + 1
    total = sum(counts.values())
    weights: dict[str | None, float] = {c: (total / (len(counts) * n) if balance else 1.0) for c, n in counts.items()}
    weights[None] = 1.0
    return weights


def encode(tokenizer, item: dict, passages: list[Passage], gold: list[int] | None, max_len: int,
           decision_weight: float = 1.0) -> Example:
    """Prompt in the engine's exact format; labels are IGNORE on the prompt, target tokens + EOS after it.

    Too long: passages are shortened first, then the explanation (the decision, the citation and EOS stay).
    """
    target_ids = tokenizer(prompts.format_target(item.get("final_decision"), item.get("long_answer") or "", cite=gold),
                           add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    chars = max((len(p.chunk.text) for p in passages), default=0)
    while True:
        prompt = prompts.render(tokenizer, prompts.build_messages(item["question"], passages or None))
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # as the engine tokenizes it
        if len(prompt_ids) + len(target_ids) <= max_len or chars < 20:
            break
        chars = int(chars * 0.85)
        passages = [_trim(p, chars) for p in passages]
    room = max_len - len(prompt_ids)
    if len(target_ids) > room:
        # the explanation is cut; the citation of the first gold passage stays
        tail = tokenizer(prompts.format_target(None, "", cite=gold[:1]), add_special_tokens=False)["input_ids"] if gold else []
        tail = tail + [tokenizer.eos_token_id]
        target_ids = target_ids[: max(1, room - len(tail))] + tail
    if len(prompt_ids) + len(target_ids) > max_len:
        raise ValueError(f"max_len {max_len} is too small for item {item.get('id')}: its prompt alone needs "
                         f"{len(prompt_ids)} tokens with passages cut to {chars} characters; raise --max-len")
    return Example(str(item.get("id")), prompt_ids + target_ids, [IGNORE] * len(prompt_ids) + target_ids,
                   len(passages), gold, decision_weight if item.get("final_decision") else 1.0)


def build_examples(items: list[dict], tokenizer, config: TrainConfig,
                   retrieved: list[list[Passage]] | None = None, weights: dict | None = None,
                   epoch: int = 0) -> list[Example]:
    weights = weights or class_weights(items, config.class_balance)
    plan = plan_passages(items, retrieved, config, epoch) if retrieved is not None else [([], None)] * len(items)
    return [encode(tokenizer, it, ps, gold, config.max_len,
                   config.decision_weight * weights.get(it.get("final_decision"), 1.0))
            for it, (ps, gold) in zip(items, plan)]


def retrieve_for(items: list[dict], config: TrainConfig) -> list[list[Passage]]:
    """Ranked passages per question from the index (deeper than k, so gold and distractors can be chosen)."""
    from app.retrieve import get_retriever

    retriever = get_retriever(config.index)
    return retriever.search_many([it["question"] for it in items], k=max(4 * config.k, 12))


def example_loss(model, ex: Example):
    """Weighted mean cross-entropy over the target tokens (the decision token weighs `ex.decision_weight`);
    logits are computed only where labels are set."""
    import torch
    import torch.nn.functional as F

    first = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE)
    keep = len(ex.labels) - first + 1
    ids = torch.tensor([ex.input_ids])
    logits = model(input_ids=ids, logits_to_keep=keep).logits[0, :-1]
    labels = torch.tensor(ex.labels[first:])
    per_token = F.cross_entropy(logits.float(), labels, reduction="none")
    weights = torch.ones_like(per_token)
    weights[0] = ex.decision_weight
    return (per_token * weights).sum() / weights.sum()


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


def fit(model, train: list[Example] | list[list[Example]], val: list[Example], config: TrainConfig,
        progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Optimizer loop: AdamW, warmup + cosine decay, gradient accumulation over single examples.

    `train` is one list of examples, or one list per epoch (the same items, each epoch's own passages)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    variants = train if train and isinstance(train[0], list) else [train]
    n = len(variants[0])
    rng = random.Random(config.seed)
    micro = max(1, round(n * config.epochs))
    order: list[Example] = []
    while len(order) < micro:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order += [variants[min(len(order) // n, len(variants) - 1)][i] for i in epoch]
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
            for ex in batch:
                loss = example_loss(model, ex) / len(batch)
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
    """The `loracle train` command line that reproduces this config (data as the card names it)."""
    from app.cliconfig import to_flags

    data = data_reference(config.data)["path"] if Path(config.data).is_file() else config.data
    return shlex.join(["loracle", "train", *to_flags(replace(config, data=data), skip=("adapters_dir",))])


def data_reference(path: str | Path) -> dict:
    """How a card names its training data: a path relative to the working folder when the file is inside
    it (e.g. data/pubmedqa/train.jsonl), else the file name alone; never an absolute path."""
    from app.models import sha256_file

    path = Path(path)
    try:
        shown = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = path.name
    return {"path": shown, "sha256": sha256_file(path)}


def _retrieved_for_splits(items, train_items, val_items, config, retrieved):
    if config.retrieval_aware and retrieved is None:
        retrieved = retrieve_for(items, config)
    if retrieved is None:
        return None, None
    by_id = {str(it.get("id")): r for it, r in zip(items, retrieved)}
    return [by_id[str(it.get("id"))] for it in train_items], [by_id[str(it.get("id"))] for it in val_items]


def _wrap(model, info, config: TrainConfig, root: Path):
    """The model with a trainable LoRA: the parent adapter's weights, or a fresh one."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from app import registry

    if config.parent:
        pinfo = registry.get(config.parent, root)
        registry.check_compatible(pinfo, info.name)
        return PeftModel.from_pretrained(model, str(pinfo.path), is_trainable=True), \
            {"name": pinfo.name, "version": pinfo.version}
    n_layers = model.config.num_hidden_layers
    if config.layers is not None and config.layers > n_layers:
        raise ValueError(f"--layers {config.layers} is out of range: the base model has {n_layers} layers")
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM",
                      layers_to_transform=list(range(n_layers - config.layers, n_layers)) if config.layers else None)
    return get_peft_model(model, lora), None


def _card(config: TrainConfig, info, items, train_items, val_items, train_ex, result, parent) -> dict:
    import datetime as dt

    import peft
    import torch

    card = {
        "description": _description("LoRA adapter trained", config),
        "base_model": {"name": info.name, "spec": info.spec, "sha256": info.sha256},
        "training_data": {**data_reference(config.data), "items": len(items), "train": len(train_items),
                          "val": len(val_items), "val_ids": [str(it.get("id")) for it in val_items]},
        "hyperparameters": _hyperparameters(config),
        "retrieval": {"index": str(config.index), "k": config.k,
                      "examples_with_passages": sum(1 for e in train_ex if e.passages),
                      "examples_with_gold": sum(1 for e in train_ex if e.gold)} if config.retrieval_aware else None,
        # what the engine uses at answer time when this adapter is on (unless the user overrides it)
        "answer_settings": {"k": config.k, "passage_chars": config.passage_chars, "template": None,
                            "index": str(config.index), "max_new_tokens": config.answer_tokens,
                            "chunker": _index_chunker(config.index)}
        if config.retrieval_aware else ({"max_new_tokens": config.answer_tokens} if config.answer_tokens else None),
        "loss_curve": [list(p) for p in result.train_curve],
        "val_loss_curve": [list(p) for p in result.val_curve],
        "training_time_s": result.seconds,
        "reproduce": command_for(config),
        "libraries": {"torch": torch.__version__, "peft": peft.__version__},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if parent:
        card["parent"] = parent
    return card


def _description(what: str, config: TrainConfig) -> str:
    passages = f" with passages retrieved from '{config.index}' (RAFT-style)" if config.retrieval_aware else ""
    return f"{what} on {Path(config.data).name}{passages}"


def _hyperparameters(config: TrainConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()
            if k not in ("data", "name", "adapters_dir")}


def _index_chunker(index: str) -> dict | None:
    """How the training index cut its passages (size, overlap, unit), for the engine to compare at answer time."""
    from app.retrieve import get_retriever

    try:
        return asdict(get_retriever(index).index.chunk_config)  # the retriever training searched (cached)
    except FileNotFoundError:  # passages given by the caller, no index on disk
        return None


def _install(model, info, card: dict, config: TrainConfig, root: Path, questions: list[str]):
    from app import registry, routing

    for peft_config in model.peft_config.values():  # the hub id, not this machine's cache folder
        peft_config.base_model_name_or_path = info.name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".train-{config.name}.", dir=root))
    try:
        # the base vocabulary is never resized here: no full embedding layers to save (and no hub lookup)
        model.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False)
        # the routing summary (adapter="auto") ships inside the version it describes
        routing.build_summary(staging, questions, source=data_reference(config.data)["path"])
        return registry.install(staging, config.name, card, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train(config: TrainConfig, progress: Callable[[int, int, float], None] | None = None,
          retrieved: list[list[Passage]] | None = None):
    """Train a LoRA adapter and install it in the registry; returns its `registry.AdapterInfo`.

    `retrieved` (ranked passages per data item) replaces the index search when given. Nothing is
    installed unless training completes: an exception (also one raised by `progress`) leaves the
    registry as it was.

        info = train(TrainConfig(data="data/pubmedqa/train.jsonl", name="my-med", retrieval_aware=True))
    """
    import torch

    from app import models
    from app.config import adapters_dir

    if config.seeds > 1:
        return train_seeds(config, progress, retrieved)
    root = Path(config.adapters_dir) if config.adapters_dir else adapters_dir()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    items = load_items(config.data)[: config.limit or None]
    train_items, val_items = split(items, config.val_fraction,
                                   config.seed if config.split_seed is None else config.split_seed)
    model, tokenizer, info = models.load(config.base_model)
    train_ret, val_ret = _retrieved_for_splits(items, train_items, val_items, config, retrieved)
    weights = class_weights(train_items, config.class_balance)
    epochs = math.ceil(config.epochs) if config.resample and train_ret is not None else 1
    per_epoch = [build_examples(train_items, tokenizer, config, train_ret, weights, e) for e in range(epochs)]
    val_ex = build_examples(val_items, tokenizer, config, val_ret, weights)
    model, parent = _wrap(model, info, config, root)
    result = fit(model, per_epoch, val_ex, config, progress)
    card = _card(config, info, items, train_items, val_items, per_epoch[0], result, parent)
    return _install(model, info, card, config, root, [str(it["question"]) for it in train_items])


def train_seeds(config: TrainConfig, progress: Callable[[int, int, float], None] | None = None,
                retrieved: list[list[Passage]] | None = None):
    """`config.seeds` runs of one recipe (seeds seed, seed+1, ...; all on the validation split of `split_seed`,
    else of `seed`, so they share their held-out questions), installed as their equal-weight merge
    (app.merge). On PubMedQA one seed moves dev accuracy by up to 22 points; the merge of four was steadier
    and better than the mean seed. The seeds are trained in a scratch registry that is removed afterwards;
    the merged card keeps each seed's command and hyperparameters (`merged_from`) and its own command."""
    from app import merge, models, registry
    from app.config import adapters_dir

    root = Path(config.adapters_dir) if config.adapters_dir else adapters_dir()
    registry.check_name(config.name)
    if (root / config.name).is_dir():  # refused before N trainings, not by the install after them
        registry.check_next_version(registry.get(config.name, root), config.name,
                                    models.resolve(config.base_model).name)
    if config.retrieval_aware and retrieved is None:  # one search, shared by every seed
        retrieved = retrieve_for(load_items(config.data)[: config.limit or None], config)
    scratch = Path(tempfile.mkdtemp(prefix=f"loracle-seeds-{config.name}-"))
    try:
        labels = []
        for i in range(config.seeds):
            seed = config.seed + i
            one = replace(config, seeds=1, seed=seed, name=f"{config.name[:48]}-seed{seed}"[:64],
                          adapters_dir=str(scratch),
                          split_seed=config.seed if config.split_seed is None else config.split_seed)
            report = (lambda step, total, loss, i=i: progress(i * total + step, config.seeds * total, loss)) \
                if progress else None
            labels.append(train(one, report, retrieved).label)
        return merge.merge(config.name, labels, root=root, base_model=config.base_model, source_root=scratch,
                           card_update={
                               "description": _description(f"Equal-weight merge of {config.seeds} training seeds of "
                                                           "one recipe trained", config),
                               "hyperparameters": {**_hyperparameters(config), "merge": "cat", "sources": labels,
                                                   "weights": [1.0 / config.seeds] * config.seeds},
                               "reproduce": command_for(config)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def add_arguments(parser) -> None:
    """CLI flags mirroring TrainConfig's fields (app.cliconfig: one mechanism for every config)."""
    from app.cliconfig import add_arguments as add

    add(parser, TrainConfig, required=("data", "name"))


def config_from_args(args) -> TrainConfig:
    from app.cliconfig import from_args

    return from_args(TrainConfig, args)
