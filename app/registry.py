"""Adapters on disk: list, read, check, install (atomic, versioned), remove, record eval evidence.

Layout (documented in adapters/README.md):
  <root>/<name>/                 the current version: PEFT files + card.json + README.md
  <root>/<name>/versions/v<N>/   every earlier version, complete, never modified
Installing under an existing name builds the new folder in a staging dir next to it (new files plus
hard links to all earlier versions), then swaps it in with two renames; a listing never sees a
half-written adapter, and a crash between the renames is repaired on the next read.

card.json is read into one typed `app.adapter_card.AdapterCard` (every shape written so far is accepted)
and written from it.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.adapter_card import SCHEMA_VERSION, AdapterCard, BaseModelRef, LossPoint, render_readme
from app.config import adapters_dir

__all__ = ["SCHEMA_VERSION", "AdapterCard", "AdapterInfo", "BaseModelRef", "LossPoint", "check_compatible",
           "check_name", "check_shapes", "disable", "enable", "get", "install", "is_disabled", "list_adapters",
           "read_folder", "record_eval", "record_extra", "remove", "render_readme", "rollback", "root_dir", "scan",
           "status", "versions"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MACHINE_PATH = re.compile(r"^(?:/|~|[A-Za-z]:[\\/]|\\\\)")  # absolute POSIX, home, Windows drive or UNC
_TRASH = ".trash-"
# staging folders of installs (".staging-") and trainings (".train-") live seconds; older ones are a killed run's
_LEFTOVERS, _LEFTOVER_AGE_S = (".staging-", ".train-"), 3600
STATUS_FILE = "status.json"  # per adapter name, not per version: kept across installs and rollbacks


@dataclass
class AdapterInfo:
    name: str
    version: int
    path: Path  # folder PeftModel.from_pretrained loads
    base_model: str  # canonical base-model name: the card's, else adapter_config.json's (hub ids only)
    card: AdapterCard = field(default_factory=AdapterCard)

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"


def root_dir(root=None) -> Path:
    """The registry folder: root when given, else $LORACLE_ADAPTERS or <home>/adapters.

    Example: `root_dir()` -> Path(".../adapters"); `root_dir("/tmp/reg")` -> Path("/tmp/reg").
    """
    return Path(root) if root else adapters_dir()


def check_name(name: str) -> str:
    """The name itself when it can be a folder name in the registry, else a ValueError saying what is allowed.

    Example: `check_name("medical-v2")` -> "medical-v2"; `check_name("../x")` raises ValueError.
    """
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


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors header (nothing loaded, no torch); a ValueError when unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}); re-save the adapter with "
                         f"save_pretrained(..., safe_serialization=True)") from None


def _peft_base_name(value: Any) -> str:
    """adapter_config.json's base_model_name_or_path as a base-model name. A hub id is one; a folder is one only
    here, through its own files: the trainer's machine path (shipped adapters carry it) names no model."""
    value = str(value or "")
    folder = Path(value).expanduser()
    if not value or not (_MACHINE_PATH.match(value) or folder.is_dir()):
        return value
    for fname, key in (("loracle_source.json", "name"), ("config.json", "_name_or_path")):
        try:
            found = json.loads((folder / fname).read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        return str(found or folder.name)
    return ""


def read_folder(path: Path, name: str | None = None) -> AdapterInfo:
    """Validate one adapter folder (PEFT files, optional card.json) and describe it.

    Example: `read_folder(Path("adapters/medical-pubmedqa")).card.base_model.name`
    -> "HuggingFaceTB/SmolLM2-135M-Instruct".
    """
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
    _tensor_shapes(weights)
    raw = _read_json(path / "card.json", "adapter card") if (path / "card.json").exists() else {}
    try:
        card = AdapterCard.from_dict(raw)
    except ValueError as exc:
        raise ValueError(f"adapter card {path / 'card.json'} has {exc}") from None
    card.name = card.name or name or path.name
    base = card.base_model.name or _peft_base_name(cfg.get("base_model_name_or_path"))
    return AdapterInfo(name=card.name, version=card.version, path=path, base_model=base, card=card)


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
    """All adapters under root, plus (folder, reason) for folders that are not valid adapters.

    Example: `good, bad = scan()`; `[a.label for a in good]` -> ["medical-pubmedqa@v2"].
    """
    root = root_dir(root)
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
    """The valid adapters under root (see `scan` for the invalid ones). Example: `[a.name for a in list_adapters()]`."""
    return scan(root)[0]


def get(name: str, root=None, version: int | None = None) -> AdapterInfo:
    """One adapter by name: its current version, or `version` from its lineage.

    Example: `get("medical-pubmedqa").label` -> "medical-pubmedqa@v2"; `get("medical-pubmedqa", version=1).path`.
    """
    root = root_dir(root)
    _recover(root)
    path = root / check_name(name)
    if not path.is_dir():
        import difflib

        names = [a.name for a in list_adapters(root)]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? Else train" if close else "train"
        raise FileNotFoundError(f"no adapter '{name}' in {root} (installed: {', '.join(names) or 'none'}); {hint} "
                                f"one with `loracle train --name {name}` or pass a folder path")
    info = read_folder(path, name)
    if version is None or version == info.version:
        return info
    old = path / "versions" / f"v{version}"
    if not old.is_dir():
        have = sorted(_kept_versions(path) + [info.version])
        raise FileNotFoundError(f"adapter '{name}' has no version v{version}; it has "
                                f"{', '.join(f'v{v}' for v in have)} (current v{info.version}): use {name}@vN")
    return read_folder(old, name)


def get_spec(spec: str, root=None) -> AdapterInfo:
    """"NAME" (its current version) or "NAME@vN" (that version) -> AdapterInfo.

    Example: `get_spec("medical-pubmedqa@v2").version` -> 2.
    """
    name, at, ver = spec.partition("@")
    if not at:
        return get(name, root)
    number = ver[1:] if ver[:1] == "v" else ver
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"adapter '{spec}': write a version as NAME@vN, e.g. {name}@v1")
    return get(name, root, version=int(number))


def find(spec: str, root=None) -> AdapterInfo:
    """What the engine accepts as an adapter: an adapter folder (a path with "/" or starting with "."), else
    "NAME" or "NAME@vN" in the registry (`get_spec`)."""
    path = Path(spec).expanduser()
    if ("/" in spec or spec.startswith(".")) and path.is_dir():
        return read_folder(path)
    return get_spec(spec, root)


def versions(name: str, root=None, unreadable: list | None = None) -> list[AdapterInfo]:
    """Every version of an adapter, oldest first (the lineage). Example: `[v.label for v in versions("med")]`.
    With an `unreadable` list, an old version whose files cannot be read is left out and noted there as
    (folder, reason) instead of failing the whole lineage."""
    cur = get(name, root)
    olds = []
    for p in (cur.path / "versions").glob("v*"):
        if not p.is_dir():
            continue
        try:
            olds.append(read_folder(p, name))
        except ValueError as exc:
            if unreadable is None:
                raise
            unreadable.append((p, str(exc)))
    return sorted(olds, key=lambda a: a.version) + [cur]


def check_compatible(info: AdapterInfo, base_model_name: str) -> None:
    """A ValueError naming both models when the adapter was trained on another base model (unknown passes).

    Example: `check_compatible(get("medical-pubmedqa"), engine.info.name)`.
    """
    if info.base_model and info.base_model != base_model_name:
        raise ValueError(f"adapter '{info.name}' was trained on {info.base_model} but the engine runs "
                         f"{base_model_name}; pass --base-model {info.base_model} or use an adapter "
                         f"trained on {base_model_name}")


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def check_shapes(info: AdapterInfo, model, base_model_name: str) -> None:
    """Compare the LoRA matrices' shapes (from the safetensors header, nothing loaded) with the layers
    of `model`; a mismatch is a ValueError naming both, raised before PEFT touches the model.

    Example: `check_shapes(get("medical-pubmedqa"), model, "HuggingFaceTB/SmolLM2-135M-Instruct")`.
    """
    modules = dict(model.named_modules())
    for key, shape in _tensor_shapes(info.path / "adapter_model.safetensors").items():
        m = _LORA_KEY.match(key)
        if not m or len(shape) != 2:
            continue
        layer = modules.get(m.group(1)) or modules.get(f"base_model.model.{m.group(1)}")
        if layer is None:
            raise ValueError(f"adapter '{info.name}' adapts layer {m.group(1)}, which {base_model_name} does not "
                             f"have; it was trained for {info.base_model or 'another model'}, not this base model")
        want = getattr(layer, "in_features" if m.group(2) == "A" else "out_features", None)
        have = shape[1] if m.group(2) == "A" else shape[0]
        if want is not None and have != want:
            raise ValueError(f"adapter '{info.name}' has {m.group(1)}.lora_{m.group(2)} of shape {shape} (width "
                             f"{have}) but {base_model_name} has width {want} there; it was trained for another "
                             f"model than its card says ({info.base_model or 'unknown'}); retrain it on "
                             f"{base_model_name}")


def _write_text(folder: Path, fname: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, folder / fname)


def _write_card(folder: Path, card: AdapterCard) -> None:
    """card.json and README.md, each written to a temp file then renamed over the old one."""
    _write_text(folder, "card.json", json.dumps(card.to_dict(), indent=2) + "\n")
    _write_text(folder, "README.md", render_readme(card))


def _link_file(src, dst) -> None:
    """Earlier versions are immutable, so hard links are safe copies (full copy where links fail)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def check_next_version(prev: AdapterInfo | None, name: str, base_model_name: str) -> None:
    """A ValueError when a new version of `name` would be for another base model than its current one (`prev`)."""
    if prev is not None and prev.base_model and prev.base_model != base_model_name:
        raise ValueError(f"adapter '{name}' v{prev.version} is for {prev.base_model}, the new one for "
                         f"{base_model_name}; install it under another name")


def _new_card(card: AdapterCard | dict, name: str, prev: AdapterInfo | None) -> AdapterCard:
    """The card of the version being installed: a copy of the given one with name, version, created,
    parent and the earlier versions' eval evidence filled in."""
    card = AdapterCard.from_dict(card if isinstance(card, dict) else card.to_dict())
    if not card.base_model.name:
        raise ValueError("adapter card needs base_model {'name': ..., 'sha256': ...}; the registry refuses "
                         "adapters whose base model is unknown")
    check_next_version(prev, name, card.base_model.name)
    card.name, card.version = name, (prev.version + 1) if prev else 1
    card.created = card.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if prev is not None:
        card.parent = card.parent or {"name": name, "version": prev.version}
        card.evals = {**prev.card.evals, **card.evals}
    return card


def _swap_in(build: Path, target: Path, prev: AdapterInfo | None) -> None:
    """Make `build` the adapter at `target`, the previous version (if any) kept under versions/v<N>."""
    if prev is None:
        os.replace(build, target)
        return
    (build / "versions").mkdir()
    if (target / "versions").is_dir():
        for old in (target / "versions").iterdir():
            shutil.copytree(old, build / "versions" / old.name, copy_function=_link_file)
    cur = build / "versions" / f"v{prev.version}"
    cur.mkdir()
    for f in target.iterdir():
        if f.is_file() and f.name != STATUS_FILE:  # the name's on/off switch is no part of a version
            _link_file(f, cur / f.name)
    trash = target.parent / f"{_TRASH}{target.name}.{os.getpid()}"
    os.replace(target, trash)
    os.replace(build, target)
    shutil.rmtree(trash, ignore_errors=True)


def install(staging_dir, name: str, card: AdapterCard | dict, root=None) -> AdapterInfo:
    """Install the PEFT files in staging_dir as adapter `name`: version 1, or the next version with the
    previous one kept under versions/ and recorded as parent. The staging folder is consumed. `card` is
    an AdapterCard or a plain dict of card.json fields (it must name the base model).

    Example: `install(tmp, "medical-v2", {"base_model": {"name": info.name, "sha256": info.sha256}})`.
    """
    return _install(staging_dir, name, lambda prev: _new_card(card, name, prev), root)


def _kept_versions(path: Path) -> list[int]:
    """The version numbers kept under an adapter folder's versions/ (the current one is not among them)."""
    return [int(p.name[1:]) for p in (path / "versions").glob("v*") if p.name[1:].isdigit()]


def _damaged(path: Path, name: str, reason: str) -> AdapterInfo:
    """The current version of an adapter whose card or files cannot be read, as far as rollback needs it: its
    version number (the card's if that much is legible, else one past the newest kept version)."""
    kept = _kept_versions(path)
    try:
        number = json.loads((path / "card.json").read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        number = None
    if not isinstance(number, int) or isinstance(number, bool) or number <= max(kept, default=0):
        number = max(kept, default=0) + 1
    card = AdapterCard()
    card.extra["unreadable"] = reason
    return AdapterInfo(name=name, version=number, path=path, base_model="", card=card)


def _install(staging_dir, name: str, make_card, root=None, damaged_ok: bool = False) -> AdapterInfo:
    """install(), with the new version's card made by `make_card(previous AdapterInfo or None)`. With
    `damaged_ok`, a current version that cannot be read is kept under versions/ as it is (see `_damaged`)."""
    root = root_dir(root)
    check_name(name)
    staging = Path(staging_dir)
    read_folder(staging, name)  # PEFT files present, safetensors, config readable
    root.mkdir(parents=True, exist_ok=True)
    _recover(root)
    target = root / name
    try:
        prev = read_folder(target, name) if target.is_dir() else None
    except (ValueError, FileNotFoundError) as exc:
        if not damaged_ok:
            raise
        prev = _damaged(target, name, str(exc))
    card = make_card(prev)
    build = Path(tempfile.mkdtemp(prefix=f".staging-{name}.", dir=root))
    try:
        for f in staging.iterdir():
            if f.is_file() and f.name not in ("card.json", "README.md", STATUS_FILE):
                shutil.copy2(f, build / f.name)
        if (target / STATUS_FILE).is_file():  # a disabled adapter stays disabled through a new version
            shutil.copy2(target / STATUS_FILE, build / STATUS_FILE)
        _write_card(build, card)
        _swap_in(build, target, prev)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        _recover(root)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return read_folder(target, name)


def remove(name: str, root=None) -> Path:
    """Delete an adapter and all its versions; returns the folder it was in. Example: `remove("medical-v2")`.
    Its card is not read, so an adapter whose card is damaged can still be removed."""
    path = root_dir(root) / check_name(name)
    if not path.is_dir():
        get(name, root)  # the not-found error, with the installed names
    trash = path.parent / f".removing-{name}.{os.getpid()}"
    os.replace(path, trash)
    shutil.rmtree(trash)
    return path


def record_eval(name: str, summary: dict, root=None) -> AdapterInfo:
    """Store eval evidence (mode -> metrics) under the adapter's current version in card.json.

    Example: `record_eval("medical-pubmedqa", {"lora": {"accuracy": 0.54}}).card.evals["v2"]`.
    """
    info = get(name, root)
    card = info.card
    card.base_model.name = card.base_model.name or info.base_model
    card.evals = {**card.evals, f"v{info.version}": summary}
    _write_card(info.path, card)
    return read_folder(info.path, name)


def record_calibration(name: str, table: dict, root=None) -> AdapterInfo:
    """Store decision calibration offsets ({"lora": {...}, "lora+rag": {...}, "fitted_on": {mode: {...}}}) in the
    current version's card (other modes' offsets are kept); engines read them when they load the adapter.

    Example: `record_calibration("medical-pubmedqa", {"lora": {"yes": 0, "no": 0.4, "maybe": 1.2}})`.
    """
    info = get(name, root)
    card = info.card
    old = card.calibration or {}
    fitted = {**(old.get("fitted_on") or {}), **(table.get("fitted_on") or {})}
    card.calibration = {**old, **table, "fitted_on": fitted}
    _write_card(info.path, card)
    return read_folder(info.path, name)


def record_extra(name: str, key: str, value: Any, root=None) -> AdapterInfo:
    """Store `value` under `key` in the current version's card (the card's `extra`, written back unchanged by
    every reader), e.g. the bias probe. Example: `record_extra("med", "bias_probe", result)`."""
    info = get(name, root)
    card = info.card
    card.base_model.name = card.base_model.name or info.base_model
    card.extra[key] = value
    _write_card(info.path, card)
    return read_folder(info.path, name)


# --- oversight: rollback, disable / enable ---------------------------------------------------------------
def rollback(name: str, version: int, root=None, who: str = "", reason: str = "") -> AdapterInfo:
    """Make an earlier version current again, append-only: its files (weights, routing summary) and its card
    (calibration, answer settings) become a NEW current version N+1 whose card's `parent` is the version it
    came from (`{"name", "version": K, "rollback": True}`) and whose `extra["rollback"]` names the version it
    replaced; the replaced version is kept under versions/ like any other. It goes through the install swap,
    so it is one atomic step; the weights are the same as vK's, so vK's eval evidence is carried to vN+1.

    A current version whose card or files are damaged can be rolled back from (it is the way out): it is kept
    under versions/ as it is, and `extra["rollback"]["replaced_unreadable"]` says why it could not be read.

    Example: `rollback("medical-pubmedqa", 1).label` -> "medical-pubmedqa@v3" (a copy of v1).
    """
    root = root_dir(root)
    try:
        cur, damaged = get(name, root), False
    except (ValueError, FileNotFoundError) as exc:
        if not (root / check_name(name)).is_dir():
            raise
        cur, damaged = _damaged(root / name, name, str(exc)), True
    if version == cur.version:
        raise ValueError(f"'{name}' v{version} is already the current version; nothing to roll back")
    if damaged:
        kept = root / name / "versions" / f"v{version}"
        if not kept.is_dir():
            raise FileNotFoundError(f"adapter '{name}' has no version v{version} under {kept.parent}")
        old = read_folder(kept, name)
    else:
        old = get(name, root, version=version)  # FileNotFoundError naming the versions there are
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}.rollback.", dir=root))
    try:
        for f in old.path.iterdir():
            if f.is_file() and f.name not in ("card.json", "README.md", STATUS_FILE):
                shutil.copy2(f, staging / f.name)

        def make_card(prev: AdapterInfo | None) -> AdapterCard:
            if prev is None or prev.version != cur.version:
                now = f"v{prev.version}" if prev else "removed"
                raise RuntimeError(f"adapter '{name}' changed while rolling back (now {now}); run the rollback again")
            card = AdapterCard.from_dict(old.card.to_dict())
            card.base_model.name = card.base_model.name or old.base_model or prev.base_model
            card.name, card.version = name, prev.version + 1
            card.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            card.parent = {"name": name, "version": old.version, "rollback": True}
            card.evals = {**prev.card.evals, **old.card.evals}
            if f"v{old.version}" in card.evals:
                card.evals[f"v{card.version}"] = copy.deepcopy(card.evals[f"v{old.version}"])
            card.extra["rollback"] = {"to_version": old.version, "replaced_version": prev.version,
                                      "time": card.created, "who": who, "reason": reason}
            if "unreadable" in prev.card.extra:
                card.extra["rollback"]["replaced_unreadable"] = prev.card.extra["unreadable"]
            return card

        return _install(staging, name, make_card, root, damaged_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _status_path(name: str, root=None) -> Path:
    return root_dir(root) / check_name(name) / STATUS_FILE


def status(name: str, root=None) -> dict:
    """The adapter's oversight status: {"disabled": bool, "reason", "who", "time"} ({"disabled": False} when
    never set). One small file read: cheap enough per request. Example: `status("medical-pubmedqa")["disabled"]`."""
    try:
        data = json.loads(_status_path(name, root).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {"disabled": False}
    except (OSError, ValueError):
        return {"disabled": True, "reason": f"unreadable {STATUS_FILE}: fix or delete it"}  # fail closed
    return data if isinstance(data, dict) and "disabled" in data else {"disabled": True,
                                                                         "reason": f"malformed {STATUS_FILE}"}


def is_disabled(name: str, root=None) -> bool:
    """Whether an operator disabled the adapter (`disable`). Example: `is_disabled("medical-pubmedqa")` -> False."""
    return bool(status(name, root).get("disabled"))


def _set_status(name: str, disabled: bool, root, reason: str, who: str) -> dict:
    info = get(name, root)  # the adapter must exist (FileNotFoundError naming the installed ones)
    now = status(name, root)
    if bool(now.get("disabled")) == disabled and "who" in now:  # a written status, not a failed read
        state = "disabled" if disabled else "in service"
        raise ValueError(f"'{name}' is already {state} (since {now.get('time', '?')}, by {now.get('who') or '?'}: "
                         f"{now.get('reason') or 'no reason given'}); nothing changed")
    data = {"disabled": disabled, "reason": reason, "who": who, "version": info.version,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    _write_text(info.path, STATUS_FILE, json.dumps(data, indent=2) + "\n")
    return data


def disable(name: str, root=None, reason: str = "", who: str = "") -> dict:
    """Take an adapter out of service (all its versions) until `enable`: status.json in its folder, written
    atomically; it survives new versions and rollbacks. Returns the status written.

    Example: `disable("medical-pubmedqa", reason="wrong dosing answers", who="alice")`.
    """
    return _set_status(name, True, root, reason, who)


def enable(name: str, root=None, reason: str = "", who: str = "") -> dict:
    """Put a disabled adapter back in service. Example: `enable("medical-pubmedqa")`."""
    return _set_status(name, False, root, reason, who)
