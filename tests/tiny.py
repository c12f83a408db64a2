"""A random tiny Llama built offline with the shipped SmolLM2 tokenizer, so tests stay fast and real."""
from __future__ import annotations

from pathlib import Path

TINY_NAME = "loracle-test/tiny-llama"


def build_tiny_llama(target: Path, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    import importlib.util
    import json

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from app.models import BUILTIN_MODELS

    src = BUILTIN_MODELS["smollm2-135m-instruct"]
    pkg = Path(list(importlib.util.find_spec(src.package).submodule_search_locations)[0])
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=src.filename)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "loracle_source.json").write_text(json.dumps({"name": TINY_NAME, "sha256": f"tiny-seed{seed}"}))
    return target
