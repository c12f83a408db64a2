"""The adapter card (card.json) as one typed dataclass, and the human model card (README.md) made from it.

Every card shape written so far is read (base_model as a name or an object; loss points as [step, loss],
{"step", "loss"} or bare losses; no "schema_version"); what is written is the current schema. Keys this
version does not know are kept in `extra` and written back, so a rewrite loses nothing. No I/O here:
`app.registry` reads and writes the files.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

SCHEMA_VERSION = 2  # card.json layout; cards without "schema_version" (they had "format": 1) are version 1


class LossPoint(NamedTuple):
    step: int
    loss: float


def _loss_points(raw: Any) -> list[LossPoint]:
    """[step, loss] lists or tuples, {"step", "loss"} dicts, or bare losses (step = position) -> LossPoints."""
    points = []
    for i, p in enumerate(raw if isinstance(raw, (list, tuple)) else []):
        try:
            if isinstance(p, dict):
                points.append(LossPoint(int(p.get("step", i)), float(p["loss"])))
            elif isinstance(p, (list, tuple)):
                points.append(LossPoint(int(p[0]), float(p[1])))
            elif _is_int(p) or isinstance(p, float):
                points.append(LossPoint(i, float(p)))
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # a point nothing can plot
    return points


def _dict_or(value: Any, default: dict | None) -> dict | None:
    return value if isinstance(value, dict) else default


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_settings(settings: dict | None) -> dict | None:
    """answer_settings as the engine will use them; a wrong value names the field and what it should be."""
    for key in ("k", "passage_chars", "max_new_tokens"):
        value = (settings or {}).get(key)
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(f"answer_settings.{key} {value!r}; expected a whole number >= 1, or null")
    for key in ("index", "template"):
        value = (settings or {}).get(key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ValueError(f"answer_settings.{key} {value!r}; expected a name (text), or null")
    return settings


def _checked_calibration(table: dict | None) -> dict | None:
    for mode, offsets in (table or {}).items():
        if mode == "fitted_on":
            continue
        if not isinstance(offsets, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in offsets.values()):
            raise ValueError(f"calibration.{mode} {offsets!r}; expected numbers per option, e.g. "
                             '{"yes": 0.0, "no": 0.4, "maybe": 0.0}')
    return table


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass
class BaseModelRef:
    name: str = ""  # canonical base-model name (app.models.ModelInfo.name); loading elsewhere is refused
    spec: str = ""  # what training was given: built-in name, folder or hub id
    sha256: str = ""  # hash of the source weights file, "" when unknown
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: Any) -> BaseModelRef:
        """From {"name", "spec", "sha256"} or, as early cards wrote it, the bare name."""
        if not isinstance(raw, dict):
            return cls(name=str(raw or ""))
        known = ("name", "spec", "sha256")
        return cls(*(_text(raw.get(k)) for k in known), extra={k: v for k, v in raw.items() if k not in known})

    def to_dict(self) -> dict:
        return {"name": self.name, "spec": self.spec, "sha256": self.sha256, **copy.deepcopy(self.extra)}


@dataclass
class AdapterCard:
    """card.json, typed. `from_dict` accepts every shape written so far; `to_dict` gives the current one.

    >>> card = AdapterCard.from_dict({"base_model": "org/model", "loss_curve": [[1, 2.5], {"step": 2, "loss": 2.1}]})
    >>> card.base_model.name, card.loss_curve[-1].loss
    ('org/model', 2.1)
    """
    schema_version: int = SCHEMA_VERSION
    name: str = ""
    version: int = 1
    description: str = ""
    base_model: BaseModelRef = field(default_factory=BaseModelRef)
    training_data: dict = field(default_factory=dict)  # {"path", "sha256", "items", "train", "val"}
    hyperparameters: dict = field(default_factory=dict)  # the training config
    retrieval: dict | None = None  # retrieval-aware training: {"index", "k", "examples_with_passages", ...}
    loss_curve: list[LossPoint] = field(default_factory=list)
    val_loss_curve: list[LossPoint] = field(default_factory=list)
    training_time_s: float | None = None
    reproduce: str = ""  # the `loracle train ...` command that rebuilds it
    libraries: dict = field(default_factory=dict)  # {"torch": version, "peft": version}
    created: str = ""  # UTC ISO time
    parent: dict | None = None  # {"name", "version"} this version replaced or was trained from
    evals: dict = field(default_factory=dict)  # "v<N>" -> mode -> metrics (+ "run", "differences")
    answer_settings: dict | None = None  # what it was trained for: {"k", "passage_chars", "template", "index", "chunker"}
    calibration: dict | None = None  # per-mode decision offsets
    extra: dict = field(default_factory=dict)  # keys this version does not know: written back unchanged

    @classmethod
    def from_dict(cls, raw: dict) -> AdapterCard:
        """Normalise a card of any schema version; a version that is not an integer >= 1 is a ValueError."""
        raw = copy.deepcopy(raw)
        version, schema = raw.get("version", 1), raw.get("schema_version", 1)
        if not _is_int(version) or version < 1:
            raise ValueError(f"version {version!r}; expected an integer >= 1")
        data, seconds = raw.get("training_data"), raw.get("training_time_s")
        known = {f.name for f in fields(cls) if f.name != "extra"} | {"format"}  # "format": schema 1's schema_version
        return cls(
            schema_version=schema if _is_int(schema) else 1, name=_text(raw.get("name")), version=version,
            description=_text(raw.get("description")), base_model=BaseModelRef.from_raw(raw.get("base_model")),
            training_data={"path": data} if isinstance(data, str) else _dict_or(data, {}),
            hyperparameters=_dict_or(raw.get("hyperparameters"), {}), retrieval=_dict_or(raw.get("retrieval"), None),
            loss_curve=_loss_points(raw.get("loss_curve")), val_loss_curve=_loss_points(raw.get("val_loss_curve")),
            training_time_s=float(seconds) if _is_int(seconds) or isinstance(seconds, float) else None,
            reproduce=_text(raw.get("reproduce")), libraries=_dict_or(raw.get("libraries"), {}),
            created=_text(raw.get("created")), parent=_dict_or(raw.get("parent"), None),
            evals=_dict_or(raw.get("evals"), {}), answer_settings=_checked_settings(_dict_or(raw.get("answer_settings"), None)),
            calibration=_checked_calibration(_dict_or(raw.get("calibration"), None)),
            extra={k: v for k, v in raw.items() if k not in known})

    def to_dict(self) -> dict:
        """The card.json object (current schema): known fields in order, then the unknown ones."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        out.update(schema_version=SCHEMA_VERSION, base_model=self.base_model.to_dict(),
                   loss_curve=[list(p) for p in self.loss_curve], val_loss_curve=[list(p) for p in self.val_loss_curve])
        return {**out, **{k: copy.deepcopy(v) for k, v in self.extra.items() if k not in out}}

    def __getitem__(self, key: str) -> Any:  # dict-style reads, for callers written against the old dict card
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


def _same_passages(mode_result: dict) -> str:
    same = mode_result.get("same_passages")
    if not isinstance(same, dict) or not same.get("pairs"):
        return ""
    return (f" ({same.get('flips')} of the {same.get('pairs')} pairs given the same passages flip: "
            f"{same.get('flip_rate')}; the rest of the rate comes with different passages)")


def _losses(source: dict) -> str:
    found = [f"{what} loss {source[key]:.3f}" for what, key in (("train", "train_loss"), ("val", "val_loss"))
             if isinstance(source.get(key), (int, float))]
    return "; " + ", ".join(found) if found else ""


def render_readme(card: AdapterCard | dict) -> str:
    """The human model card (README.md), generated from the card. Example: `print(render_readme(get("med").card))`."""
    card = card if isinstance(card, AdapterCard) else AdapterCard.from_dict(card)
    base, data, parent = card.base_model, card.training_data, card.parent
    lines = [f"# {card.name} v{card.version}", "", card.description or "A LoRA adapter for Loracle.", "",
             f"- Base model: `{base.name or '?'}` (sha256 `{base.sha256[:16]}`)",
             f"- Training data: `{data.get('path', '?')}` (sha256 `{str(data.get('sha256', ''))[:16]}`)",
             f"- Created: {card.created or '?'}",
             (f"- Parent: {parent.get('name')}@v{parent.get('version')}"
              + (" (rolled back to it: same files)" if parent.get("rollback") else "")) if parent else "- Parent: none",
             "", "## Reproduce", "", "```", card.reproduce or "(not recorded)", "```", ""]
    merged = card.extra.get("merged_from") if isinstance(card.extra, dict) else None
    if isinstance(merged, list) and merged and (card.reproduce or "").startswith("loracle adapters merge"):
        lines += ["The sources it names are trained first: their commands are under \"Merged from\".", ""]
    lines += ["## Hyperparameters", ""]
    lines += [f"- {k}: {v}" for k, v in card.hyperparameters.items()] or ["(not recorded)"]
    if isinstance(merged, list) and merged:
        lines += ["", "## Merged from", "", "Each source, its weight and the command that trained it:", ""]
        lines += [f"- {m.get('name')}@v{m.get('version')} (weight {m.get('weight')}{_losses(m)}): "
                  f"`{m.get('reproduce') or '?'}`" for m in merged if isinstance(m, dict)]
    if card.loss_curve:
        first, last = card.loss_curve[0], card.loss_curve[-1]
        lines += ["", "## Training loss", "", f"{len(card.loss_curve)} points; first {list(first)}, last {list(last)}"]
    if card.answer_settings:
        a = card.answer_settings
        lines += ["", "## Answer-time settings", "",
                  f"Trained for k={a.get('k')} passages of {a.get('passage_chars') or 'whole-chunk'} characters "
                  f"from index `{a.get('index')}`; the engine uses these when this adapter is on, unless overridden."]
        if a.get("chunker"):
            c = a["chunker"]
            lines += [f"The index was chunked {c.get('size')}/{c.get('overlap')} {c.get('unit')}s (size/overlap); "
                      f"answers note it when the index in use is chunked otherwise."]
    if card.calibration:
        lines += ["", "## Decision calibration", ""]
        lines += [f"- {mode}: {json.dumps(off, sort_keys=True)}" for mode, off in card.calibration.items()]
    experiments = card.extra.get("experiments") if isinstance(card.extra, dict) else None
    if experiments:
        lines += ["", "## Training settings tried (not shipped unless named above)", "",
                  "| setting | figures |", "|---|---|"]
        lines += [f"| {e.get('setting', '?')} | {e.get('figures', '')} |" for e in experiments if isinstance(e, dict)]
    probe = card.extra.get("bias_probe") if isinstance(card.extra, dict) else None
    if isinstance(probe, dict) and isinstance(probe.get("modes"), dict):
        lines += ["", f"## Counterfactual bias probe (v{probe.get('version', '?')}, {probe.get('pairs', '?')} pairs)", "",
                  "Share of question pairs, differing only in the patient group (sex, age, ethnicity), whose "
                  "yes/no/maybe decision differs (`loracle ops bias-probe`):", ""]
        lines += [f"- {mode}: {r.get('flip_rate')}{_same_passages(r)}" for mode, r in probe["modes"].items()
                  if isinstance(r, dict)]
    lines += ["", "## Evaluation (per version, per mode)", ""]
    if not card.evals:
        lines.append("(no evaluation recorded yet; run `loracle eval`)")
    for ver, summary in card.evals.items():
        lines.append(f"### {ver}")
        lines += [f"- {mode}: {json.dumps(vals, sort_keys=True)}" for mode, vals in dict(summary).items()] + [""]
    lines += ["", "Loads as it is with `PeftModel.from_pretrained(base, this_folder)`. Weights are safetensors."]
    return "\n".join(lines) + "\n"
