"""Adapters on disk: list, read, check, install (atomic, versioned), remove, record eval evidence.

Layout (documented in adapters/README.md):
  <root>/<name>/                 the current version: PEFT files + card.json + README.md
  <root>/<name>/versions/v<N>/   every earlier version, complete, never modified
Installing under an existing name builds the new folder in a staging dir next to it (new files plus
hard links to all earlier versions), then swaps it in with two renames; a listing never sees a
half-written adapter, and a crash between the renames is repaired on the next read.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.config import adapters_dir

CARD_FORMAT = 1
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_TRASH = ".trash-"
# staging folders of installs (".staging-") and trainings (".train-") live seconds; older ones are a killed run's
_LEFTOVERS, _LEFTOVER_AGE_S = (".staging-", ".train-"), 3600


@dataclass
class AdapterInfo:
    name: str
    version: int
    path: Path  # folder PeftModel.from_pretrained loads
    base_model: str  # canonical base-model name (app.models.ModelInfo.name)
    card: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"


def root_dir(root=None) -> Path:
    """The registry folder: root when given, else $LORACLE_ADAPTERS or <home>/adapters."""
    return Path(root) if root else adapters_dir()


_root = root_dir


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ValueError(f"invalid adapter name '{name}': use letters, digits, '-' or '_' (at most 64, no dots)")
    return name


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid JSON ({exc}); fix or delete the file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, found {type(data).__name__}")
    return data


def _check_safetensors(path: Path) -> dict:
    """Read the safetensors header only: catches truncated or foreign files without importing torch."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, struct.error, UnicodeDecodeError):
        raise ValueError(f"{path} is not a readable safetensors file; re-save the adapter with "
                         f"save_pretrained(..., safe_serialization=True)") from None
    return header


def read_folder(path: Path, name: str | None = None) -> AdapterInfo:
    """Validate one adapter folder (PEFT files, optional card.json) and describe it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"adapter folder {path} does not exist")
    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        if (path / "adapter_model.bin").exists():
            raise ValueError(f"adapter {path} has only pickle weights (adapter_model.bin), which can run code "
                             f"when loaded; convert it to adapter_model.safetensors (save_pretrained with "
                             f"safe_serialization=True) and install again")
        raise FileNotFoundError(f"adapter {path} has no adapter_model.safetensors")
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"adapter {path} has no adapter_config.json (PEFT config)")
    cfg = _read_json(path / "adapter_config.json", "adapter config")
    if "peft_type" not in cfg:
        raise ValueError(f"adapter config {path / 'adapter_config.json'} has no 'peft_type'; it is not a PEFT config")
    _check_safetensors(weights)
    card = _read_json(path / "card.json", "adapter card") if (path / "card.json").exists() else {}
    base = card.get("base_model") or {}
    base_name = base.get("name") if isinstance(base, dict) else str(base)
    base_name = base_name or cfg.get("base_model_name_or_path") or ""
    version = card.get("version", 1)
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"adapter card {path / 'card.json'} has version {version!r}; expected an integer >= 1")
    return AdapterInfo(name=card.get("name") or name or path.name, version=version, path=path,
                       base_model=base_name, card=card)


def _recover(root: Path) -> None:
    """Finish an install interrupted between its two renames: put the previous folder back."""
    if not root.is_dir():
        return
    for trash in root.glob(f"{_TRASH}*"):
        name = trash.name[len(_TRASH):].rsplit(".", 1)[0]
        if _NAME.match(name) and not (root / name).exists():
            os.replace(trash, root / name)
        else:
            shutil.rmtree(trash, ignore_errors=True)
    for leftover in (p for prefix in _LEFTOVERS for p in root.glob(f"{prefix}*")):
        if time.time() - leftover.stat().st_mtime > _LEFTOVER_AGE_S:
            shutil.rmtree(leftover, ignore_errors=True)


def scan(root=None) -> tuple[list[AdapterInfo], list[tuple[Path, str]]]:
    """All adapters under root, plus (folder, reason) for folders that are not valid adapters."""
    root = _root(root)
    _recover(root)
    good, bad = [], []
    if not root.is_dir():
        return good, bad
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.name.startswith((".", "_")):
            continue
        try:
            good.append(read_folder(path, path.name))
        except (ValueError, FileNotFoundError) as exc:
            bad.append((path, str(exc)))
    return good, bad


def list_adapters(root=None) -> list[AdapterInfo]:
    return scan(root)[0]


def get(name: str, root=None, version: int | None = None) -> AdapterInfo:
    root = _root(root)
    _recover(root)
    path = root / check_name(name)
    if not path.is_dir():
        known = ", ".join(a.name for a in list_adapters(root)) or "none"
        raise FileNotFoundError(f"no adapter '{name}' in {root} (installed: {known}); train one with "
                                f"`loracle train --name {name}` or pass a folder path")
    info = read_folder(path, name)
    if version is None or version == info.version:
        return info
    old = path / "versions" / f"v{version}"
    if not old.is_dir():
        raise FileNotFoundError(f"adapter '{name}' has no version v{version} (current is v{info.version})")
    return read_folder(old, name)


def versions(name: str, root=None) -> list[AdapterInfo]:
    """Every version of an adapter, oldest first (the lineage)."""
    cur = get(name, root)
    olds = [read_folder(p, name) for p in (cur.path / "versions").glob("v*") if p.is_dir()]
    return sorted(olds, key=lambda a: a.version) + [cur]


def check_compatible(info: AdapterInfo, base_model_name: str) -> None:
    if info.base_model and info.base_model != base_model_name:
        raise ValueError(f"adapter '{info.name}' was trained on {info.base_model} but the engine runs "
                         f"{base_model_name}; pass --base-model {info.base_model} or use an adapter "
                         f"trained on {base_model_name}")


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def check_shapes(info: AdapterInfo, model, base_model_name: str) -> None:
    """Compare the LoRA matrices' shapes (from the safetensors header, nothing loaded) with the layers
    of `model`; a mismatch is a ValueError naming both, raised before PEFT touches the model."""
    header = _check_safetensors(info.path / "adapter_model.safetensors")
    modules = dict(model.named_modules())
    for key, meta in header.items():
        m = _LORA_KEY.match(key)
        if not m or not isinstance(meta, dict):
            continue
        layer = modules.get(m.group(1)) or modules.get(f"base_model.model.{m.group(1)}")
        if layer is None:
            raise ValueError(f"adapter '{info.name}' adapts layer {m.group(1)}, which {base_model_name} does not "
                             f"have; it was trained for {info.base_model or 'another model'}, not this base model")
        want = getattr(layer, "in_features" if m.group(2) == "A" else "out_features", None)
        shape = meta.get("shape") or [0, 0]
        have = shape[1] if m.group(2) == "A" else shape[0]
        if want is not None and have != want:
            raise ValueError(f"adapter '{info.name}' has {m.group(1)}.lora_{m.group(2)} of shape {shape} (width "
                             f"{have}) but {base_model_name} has width {want} there; it was trained for another "
                             f"model than its card says ({info.base_model or 'unknown'}); retrain it on "
                             f"{base_model_name}")


def render_readme(card: dict) -> str:
    """The human model card, generated from card.json."""
    base = card.get("base_model") or {}
    data = card.get("training_data") or {}
    parent = card.get("parent") or {}
    lines = [f"# {card.get('name')} v{card.get('version')}", "",
             card.get("description", "A LoRA adapter for Loracle."), "",
             f"- Base model: `{base.get('name', '?')}` (sha256 `{str(base.get('sha256', ''))[:16]}`)",
             f"- Training data: `{data.get('path', '?')}` (sha256 `{str(data.get('sha256', ''))[:16]}`)",
             f"- Created: {card.get('created', '?')}",
             f"- Parent: {parent.get('name')}@v{parent.get('version')}" if parent else "- Parent: none",
             "", "## Reproduce", "", "```", card.get("reproduce", "(not recorded)"), "```", "",
             "## Hyperparameters", ""]
    lines += [f"- {k}: {v}" for k, v in (card.get("hyperparameters") or {}).items()] or ["(not recorded)"]
    curve = card.get("loss_curve") or []
    if curve:
        first, last = curve[0], curve[-1]
        lines += ["", "## Training loss", "", f"{len(curve)} points; first {first}, last {last}"]
    lines += ["", "## Evaluation (per version, per mode)", ""]
    evals = card.get("evals") or {}
    if not evals:
        lines.append("(no evaluation recorded yet; run `loracle eval`)")
    for ver, summary in evals.items():
        lines.append(f"### {ver}")
        lines += [f"- {mode}: {json.dumps(vals, sort_keys=True)}" for mode, vals in summary.items()] + [""]
    lines += ["", "Loads as it is with `PeftModel.from_pretrained(base, this_folder)`. Weights are safetensors."]
    return "\n".join(lines) + "\n"


def _write_card(folder: Path, card: dict) -> None:
    for fname, text in (("card.json", json.dumps(card, indent=2, sort_keys=False) + "\n"),
                        ("README.md", render_readme(card))):
        fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, folder / fname)


def _link_file(src, dst) -> None:
    """Earlier versions are immutable, so hard links are safe copies (full copy where links fail)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=_link_file)


def install(staging_dir, name: str, card: dict, root=None) -> AdapterInfo:
    """Install the PEFT files in staging_dir as adapter `name`: version 1, or the next version with the
    previous one kept under versions/ and recorded as parent. The staging folder is consumed."""
    root = _root(root)
    check_name(name)
    staging = Path(staging_dir)
    read_folder(staging, name)  # PEFT files present, safetensors, config readable
    base = card.get("base_model")
    if not base or not (base.get("name") if isinstance(base, dict) else base):
        raise ValueError("adapter card needs base_model {'name': ..., 'sha256': ...}; the registry refuses "
                         "adapters whose base model is unknown")
    root.mkdir(parents=True, exist_ok=True)
    _recover(root)
    target = root / name
    prev = read_folder(target, name) if target.is_dir() else None
    if prev is not None:
        prev_base = prev.base_model
        new_base = base.get("name") if isinstance(base, dict) else base
        if prev_base and prev_base != new_base:
            raise ValueError(f"adapter '{name}' v{prev.version} is for {prev_base}, the new one for {new_base}; "
                             f"install it under another name")
    card = dict(card)
    card.update(format=CARD_FORMAT, name=name, version=(prev.version + 1) if prev else 1)
    if isinstance(base, str):
        card["base_model"] = {"name": base, "sha256": ""}
    card.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if prev is not None:
        card.setdefault("parent", {"name": name, "version": prev.version})
        evals = dict(prev.card.get("evals") or {})
        evals.update(card.get("evals") or {})
        card["evals"] = evals
    card.setdefault("parent", None)
    card.setdefault("evals", {})

    build = Path(tempfile.mkdtemp(prefix=f".staging-{name}.", dir=root))
    try:
        for f in staging.iterdir():
            if f.is_file() and f.name not in ("card.json", "README.md"):
                shutil.copy2(f, build / f.name)
        _write_card(build, card)
        if prev is not None:
            (build / "versions").mkdir()
            if (target / "versions").is_dir():
                for old in (target / "versions").iterdir():
                    _link_tree(old, build / "versions" / old.name)
            cur = build / "versions" / f"v{prev.version}"
            cur.mkdir()
            for f in target.iterdir():
                if f.is_file():
                    _link_file(f, cur / f.name)
            trash = root / f"{_TRASH}{name}.{os.getpid()}"
            os.replace(target, trash)
            os.replace(build, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        _recover(root)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return read_folder(target, name)


def remove(name: str, root=None) -> Path:
    """Delete an adapter and all its versions."""
    info = get(name, root)
    trash = info.path.parent / f".removing-{name}.{os.getpid()}"
    os.replace(info.path, trash)
    shutil.rmtree(trash)
    return info.path


def record_eval(name: str, summary: dict, root=None) -> AdapterInfo:
    """Store eval evidence (mode -> metrics) under the adapter's current version in card.json."""
    info = get(name, root)
    card = dict(info.card) or {"name": name, "version": info.version, "base_model": {"name": info.base_model}}
    evals = dict(card.get("evals") or {})
    evals[f"v{info.version}"] = summary
    card["evals"] = evals
    _write_card(info.path, card)
    return read_folder(info.path, name)
