"""Merge registry adapters into one: a seed ensemble served at one adapter's cost.

PEFT's `add_weighted_adapter(combination_type="cat")` stacks the sources' LoRA matrices, so the merged
weight delta is exactly sum_i w_i * delta_i, at rank sum_i r_i (still one adapter, one forward pass).
With equal weights 1/n it averages the sources' weight deltas; on the medical adapters' seeds this
gave the same decisions as summing the seeds' log-likelihoods (the adapter card's experiments).
"""
from __future__ import annotations

import datetime as dt
import json
import shlex
import shutil
import tempfile
from pathlib import Path

# adapter_config.json fields that must agree for a cat merge to cover every source's layers
_SHARED_CONFIG = ("target_modules", "layers_to_transform", "peft_type")


def _config_key(cfg: dict, key: str):
    value = cfg.get(key)
    return sorted(value) if isinstance(value, (list, set, tuple)) else value


def check_sources(infos: list, weights: list[float]) -> None:
    """ValueErrors, each naming the sources and the fix, for sources that cannot be merged into one."""
    if len(infos) < 2:
        raise ValueError("merging needs at least two source adapters (NAME or NAME@vN)")
    if len(weights) != len(infos):
        raise ValueError(f"{len(weights)} weights for {len(infos)} adapters; give one weight per adapter "
                         "or none (equal weights 1/n)")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights must be positive, got {weights}")
    first = infos[0]
    first_cfg = json.loads((first.path / "adapter_config.json").read_text())
    for info in infos[1:]:
        if info.base_model != first.base_model:
            raise ValueError(f"{info.label} is for {info.base_model} but {first.label} for {first.base_model}; "
                             "only adapters of one base model merge")
        cfg = json.loads((info.path / "adapter_config.json").read_text())
        for key in _SHARED_CONFIG:
            a, b = _config_key(first_cfg, key), _config_key(cfg, key)
            if a != b:
                raise ValueError(f"{info.label} has {key}={b} but {first.label} has {a}; merge adapters trained "
                                 "with the same --target-modules and --layers")
        a, b = first.card.answer_settings, info.card.answer_settings
        if a != b:
            raise ValueError(f"{info.label} answers with answer_settings={b} but {first.label} with {a}; a merged "
                             "adapter has one set of answer-time settings, so merge adapters trained for the same ones")


def _card(infos: list, weights: list[float], base_info, command: str) -> dict:
    first = infos[0].card
    if len({i.card.training_data.get("sha256") for i in infos}) > 1:  # ids of different files are not comparable
        parts = [{"adapter": i.label, **i.card.training_data} for i in infos]
        data = {"path": " + ".join(str(d.get("path", "?")) for d in parts), "sha256": "", "sources": parts}
    else:  # only questions no source trained on stay held out; a source that lists none may have trained on all
        data = {k: v for k, v in first.training_data.items() if k not in ("val_ids", "val")}
        val_lists = [i.card.training_data.get("val_ids") for i in infos]
        if all(v is not None for v in val_lists):
            held_out = set.intersection(*map(set, val_lists))
            data["val_ids"] = [i for i in val_lists[0] if i in held_out]
            data["val"] = len(data["val_ids"])
    sources = [{"name": i.name, "version": i.version, "weight": w, "reproduce": i.card.reproduce,
                "hyperparameters": i.card.hyperparameters,
                "train_loss": i.card.loss_curve[-1].loss if i.card.loss_curve else None,
                "val_loss": i.card.val_loss_curve[-1].loss if i.card.val_loss_curve else None}
               for i, w in zip(infos, weights)]
    return {
        "description": f"Merge of {', '.join(i.label for i in infos)} (LoRA concatenation: the weighted sum of "
                       "their weight deltas, served as one adapter)",
        "base_model": {"name": base_info.name, "spec": base_info.spec, "sha256": base_info.sha256},
        "training_data": data,
        "hyperparameters": {"merge": "cat", "weights": weights, "sources": [i.label for i in infos]},
        "retrieval": first.retrieval,
        "answer_settings": first.answer_settings,
        "merged_from": sources,
        "training_time_s": sum(i.card.training_time_s or 0 for i in infos),
        "reproduce": command,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def merge(name: str, sources: list[str], weights: list[float] | None = None, root=None,
          base_model: str | None = None, source_root=None, card_update: dict | None = None):
    """Install `name` (a new adapter, or its next version) as the weighted cat-merge of `sources`;
    returns its registry.AdapterInfo. Nothing is installed unless the merge completes.
    `source_root`: the registry the sources are in, when not `root`; `card_update`: card fields to replace
    (`loracle train --seeds` names its own command and hyperparameters).

        merge("medical-pubmedqa", ["med-s0", "med-s1", "med-s2"])   # equal weights 1/3
    """
    from peft import PeftModel

    from app import models, registry, routing

    infos = [registry.get_spec(s, source_root or root) for s in sources]
    weights = list(weights) if weights else [1.0 / len(infos)] * len(infos)
    check_sources(infos, weights)
    model, _, base_info = models.load(base_model or infos[0].card.base_model.spec or infos[0].base_model)
    for info in infos:
        registry.check_compatible(info, base_info.name)
    peft_model = PeftModel.from_pretrained(model, str(infos[0].path), adapter_name="s0")
    for i, info in enumerate(infos[1:], 1):
        peft_model.load_adapter(str(info.path), adapter_name=f"s{i}")
    names = [f"s{i}" for i in range(len(infos))]
    peft_model.add_weighted_adapter(names, weights, "merged", combination_type="cat")
    peft_model.set_adapter("merged")
    for n in names:
        peft_model.delete_adapter(n)
    peft_model.peft_config["merged"].base_model_name_or_path = base_info.name
    command = shlex.join(["loracle", "adapters", "merge", name, *(i.label for i in infos),
                          "--weights", *(f"{w:g}" for w in weights)])
    card = {**_card(infos, weights, base_info, command), **(card_update or {})}
    root_path = registry.root_dir(root)
    root_path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".train-{name}.", dir=root_path))
    try:
        peft_model.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False)
        saved = staging / "merged"  # PEFT saves a non-default adapter name in its own subfolder
        for f in saved.iterdir():
            shutil.move(str(f), staging / f.name)
        saved.rmdir()
        routing.merge_summaries([i.path for i in infos], staging, source=", ".join(i.label for i in infos))
        return registry.install(staging, name, card, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
