"""Tiny real LoRA adapters for tests: peft get_peft_model + save_pretrained on the tiny model."""
from __future__ import annotations

import json
from pathlib import Path


def make_adapter(base_dir: Path, out_dir: Path, seed: int = 1, rank: int = 4, std: float = 0.5,
                 targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj")) -> Path:
    """Random-init LoRA (A and B nonzero, so it changes outputs) saved as PEFT safetensors files."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=rank, lora_alpha=rank * 2, target_modules=list(targets),
                     init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0.0, std)
    model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def card_for(base_dir: Path, **extra) -> dict:
    src = json.loads((Path(base_dir) / "loracle_source.json").read_text())
    card = {"base_model": {"name": src["name"], "sha256": src.get("sha256", "")},
            "training_data": {"path": "tests", "sha256": "0" * 64},
            "hyperparameters": {"rank": 4}, "loss_curve": [2.0, 1.5], "reproduce": "pytest"}
    card.update(extra)
    return card


def untie_base(tiny_dir: Path, out_dir: Path, seed: int = 7) -> Path:
    """The tiny model with a separate random output head: a tied random model only echoes the prompt's
    last token (newlines), which would make base-vs-batch comparisons trivially equal."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.5)
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in Path(tiny_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "loracle_source")):
            shutil.copy2(f, Path(out_dir) / f.name)
    return Path(out_dir)
