"""Adapters: the registry as a table, one adapter's card, lineage graph and bias probe; oversight (roll back,
disable / enable, each with a reason kept in the audit log); train a new one in the background; merge several
into one; set the default."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import streamlit as st

from app import registry
from app.jobs import runner
from app.registry import AdapterCard
from app.types import MODES
from app.ui import state
from app.ui.settings import save_settings, settings_path

st.set_page_config(page_title="Loracle · Adapters", page_icon="🧩", layout="wide")
state.keep_widgets()
st.title("Adapters")
st.caption("LoRA adapters over the one base model. Training runs in the background; questions keep being answered.")


def _version_number(key: str) -> int:
    digits = str(key).lstrip("v")
    return int(digits) if digits.isdigit() else 0


def eval_summary(card: AdapterCard) -> str:
    """The latest evaluated version's headline metric per mode, e.g. "lora 0.54, lora+rag 0.64"."""
    if not card.evals:
        return "-"
    latest = card.evals[max(card.evals, key=_version_number)]
    parts = []
    for mode, metrics in latest.items():
        if mode in MODES and isinstance(metrics, dict):
            value = metrics.get("accuracy", metrics.get("rouge_l"))
            parts.append(f"{mode} {value:.2f}" if isinstance(value, (int, float)) else mode)
    return ", ".join(parts) or "-"


def curve_frame(card: AdapterCard):
    """Training and validation loss as one step-indexed frame (None when the card has no curve)."""
    import pandas as pd

    series = {label: pd.Series({p.step: p.loss for p in curve})
              for label, curve in (("train", card.loss_curve), ("validation", card.val_loss_curve)) if curve}
    return pd.DataFrame(series) if series else None


infos = state.adapters()
default = state.default_adapter_name()
if not infos:
    st.info("No adapter is registered yet: train one below.")
else:
    import pandas as pd

    rows = []
    for a in infos:
        card, parent = a.card, a.card.parent
        rows.append({
            "name": a.name, "version": a.version, "default": "★" if a.name == default else "",
            "base model": a.base_model, "training data": card.training_data.get("path", "-"),
            "created": card.created or "-",
            "parent": f"{parent.get('name')}@v{parent.get('version')}" if parent else "-",
            "eval": eval_summary(card),
            "status": "disabled" if registry.is_disabled(a.name) else "in service",
        })
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

    names = [a.name for a in infos]
    c1, c2 = st.columns([3, 1])
    chosen = c1.selectbox("Adapter", names, index=names.index(default) if default in names else 0, key="card_adapter")
    c2.write("")
    if c2.button("Set as default", key="set_default", disabled=chosen == default):
        with state.friendly_errors("Saving the default adapter"):
            save_settings({"default_adapter": chosen})
            st.success(f"'{chosen}' is now the default adapter (saved in settings).")
            st.rerun()
    info = next(a for a in infos if a.name == chosen)
    card_tab, eval_tab, lineage_tab, bias_tab, raw_tab = st.tabs(
        ["Model card", "Evaluation per mode", "Lineage", "Bias probe", "card.json"])
    with card_tab:
        readme = info.path / "README.md"
        text = readme.read_text(encoding="utf-8") if readme.exists() else "_(no README.md)_"
        images = [info.path / m for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)]
        tried = re.search(r"\n## Training settings tried.*?(?=\n## |\Z)", text, re.S)  # long: folded away
        text = text.replace(tried.group(0), "") if tried else text
        st.markdown(re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text))  # card images are shown below, from the folder
        if tried:
            with st.expander(f"Training settings tried ({tried.group(0).count(chr(10) + '| ') - 1})"):
                st.markdown(tried.group(0).split("\n", 2)[2])
        for img in images:
            inside = img.resolve().is_relative_to(info.path.resolve())
            if inside and img.suffix.lower() in (".png", ".jpg", ".jpeg") and img.is_file():
                st.image(str(img), caption=img.name, width=640)
        curve = curve_frame(info.card)
        if curve is not None:
            st.caption("training / validation loss")
            st.line_chart(curve, height=200)
    with eval_tab:
        if not info.card.evals:
            st.info("No evaluation recorded yet: run one on the Evaluate page.")
        for version, summary in info.card.evals.items():
            st.markdown(f"**{version}**")
            run = summary.get("run") or {}
            how = ", ".join(f"{key} {run[key]}" for key in ("n_items", "decisions", "max_new_tokens", "calibrate", "k",
                                                            "index") if run.get(key) is not None)
            st.caption(f"run: {how or 'settings not recorded'}; versions compare only where these match "
                       "(the Lineage tab says when they do not)")
            st.dataframe(pd.DataFrame({m: v for m, v in summary.items() if m in MODES}).T, width="stretch")
    with lineage_tab:
        from app.lineage import lineage, to_dot

        with state.friendly_errors("Reading the version history"):
            graph = lineage(registry.versions(chosen))
            st.graphviz_chart(to_dot(chosen, graph), width="stretch")
            st.caption("Each box is a version (the current one filled); an edge goes from the version a new one "
                       "replaced or came from, labelled with the eval change (F1 = macro-F1 of the yes/no/maybe "
                       "decision), or 'not comparable' when the two evaluations were run differently (another "
                       "question set, token budget or decision method); dashed: a rollback.")
    with bias_tab:
        from app.bias import summary_rows

        probe = info.card.extra.get("bias_probe")
        if not isinstance(probe, dict) or not probe.get("modes"):
            st.info(f"No bias probe recorded for this adapter: run `loracle ops bias-probe {chosen} --save`.")
        else:
            st.caption(f"Counterfactual probe of v{probe.get('version', '?')} ({probe.get('created', '?')}): "
                       f"{probe.get('pairs')} {probe.get('template_set', 'research')} question pairs that differ only "
                       f"in the patient group (sex, age, "
                       f"ethnicity); the flip rate is the share of pairs whose yes/no/maybe decision differs. In "
                       f"the rag modes the group word can also change the passages retrieved: the flip rate over "
                       f"pairs given the same passages is the model's own.")
            st.dataframe(pd.DataFrame(summary_rows(probe)), hide_index=True, width="stretch")
            examples = [{"mode": m, **e} for m, r in probe["modes"].items() for e in r.get("examples", [])]
            if examples:
                with st.expander(f"Flipped pairs ({len(examples)} shown)"):
                    st.dataframe(pd.DataFrame(examples), hide_index=True, width="stretch")
    with raw_tab:
        st.code(json.dumps(info.card.to_dict(), indent=2), language="json")

    st.subheader("Oversight")
    note = st.session_state.pop("oversight_note", None)
    if note:
        st.success(note)
    status = registry.status(chosen)
    if status.get("disabled"):
        st.warning(f"'{chosen}' is disabled (by {status.get('who') or '?'}, {status.get('time', '?')}): "
                   f"{status.get('reason') or 'no reason given'}. It is not used for answers until enabled.")
    else:
        st.caption(f"'{chosen}' v{info.version} is in service. Every change below is kept in the audit log "
                   f"(Monitor page) with your reason.")
    from app.audit import current_user as default_who

    r1, r2 = st.columns([3, 1])
    if st.session_state.pop("ovs_done", False):  # a reason is for one change: the next one needs its own
        st.session_state["ovs_reason"] = ""
    reason = r1.text_input("Reason (required)", key="ovs_reason", placeholder="e.g. v3 gives wrong dosing answers")
    who = r2.text_input("Who", value=default_who(), key="ovs_who")
    earlier = [v.version for v in registry.versions(chosen) if v.version != info.version]
    o1, o2, o3 = st.columns([2, 1, 1])
    target = o1.selectbox("Roll back to version", earlier, format_func=lambda v: f"v{v}", key="ovs_version",
                          disabled=not earlier, help="The chosen version becomes current again as a new version; "
                                                     "history is append-only.")
    o2.write("")
    rollback_clicked = o2.button("Roll back", key="ovs_rollback", disabled=not earlier)
    o3.write("")
    toggle = "Enable" if status.get("disabled") else "Disable"
    toggle_clicked = o3.button(toggle, key="ovs_toggle", type="primary" if toggle == "Disable" else "secondary")

    def oversight(kind: str, detail: dict, message: str) -> None:
        from app.audit import AuditLog

        AuditLog().event(kind, chosen, who.strip() or default_who(), reason.strip(), detail)
        st.session_state["oversight_note"] = message
        st.session_state["ovs_done"] = True
        st.rerun()

    if rollback_clicked or toggle_clicked:
        if not reason.strip():
            st.error("Give a reason: it is kept in the audit log with the change.")
        elif rollback_clicked:
            with state.friendly_errors("Rolling back"):
                new = registry.rollback(chosen, int(target), who=who.strip(), reason=reason.strip())
                oversight("rollback", {"from_version": info.version, "to_version": int(target),
                                       "new_version": new.version},
                          f"v{target} of '{chosen}' is current again as {new.label}; v{info.version} is kept.")
        else:
            with state.friendly_errors(f"{toggle[:-1]}ing"):
                change = registry.disable if toggle == "Disable" else registry.enable
                done = change(chosen, reason=reason.strip(), who=who.strip())
                oversight(toggle.lower(), {"version": done["version"]}, f"'{chosen}' {toggle.lower()}d.")

st.divider()
st.subheader("Train a new adapter")
with st.form("train_form", enter_to_submit=False):
    source = st.radio("Training data", ["Upload QA JSONL", "Retrieval-aware from the current index"],
                      key="train_source", horizontal=True)
    upload = st.file_uploader("QA JSONL ({id, question, long_answer, final_decision?, context_doc_id?} per line)",
                              type=["jsonl"], key="train_upload")
    c1, c2, c3, c4, c5 = st.columns(5)
    name = c1.text_input("Adapter name", key="train_name", placeholder="e.g. medical-v2")
    epochs = c2.number_input("Epochs", 1, 20, 1, key="train_epochs")
    rank = c3.number_input("LoRA rank", 1, 128, 8, key="train_rank")
    limit = c4.number_input("Max examples (0 = all)", 0, 100000, 0, key="train_limit")
    seeds = c5.number_input("Seeds", 1, 8, 1, key="train_seeds",
                            help="Train this many runs with different seeds and install their equal-weight merge: "
                                 "steadier than one run, answers at one adapter's cost, N times the training time.")
    index = state.index_picker("train_index", label="Index (retrieval-aware training)")
    submitted = st.form_submit_button("Train", type="primary")


def staged_training_file(upload) -> str:
    """The upload written to a temp file and checked with the trainer's own reader (errors name the upload)."""
    from app.train import load_items

    path = Path(tempfile.mkdtemp(prefix="loracle-train-")) / (Path(upload.name).name or "train.jsonl")
    path.write_bytes(upload.getvalue())
    try:
        load_items(path)
    except ValueError as exc:
        raise ValueError(str(exc).replace(str(path), upload.name)) from None
    return str(path)


def start_training(cfg_kwargs: dict):
    def job(report):
        from app.train import TrainConfig, train

        config = TrainConfig(**cfg_kwargs)

        def progress(step: int, total: int, loss: float) -> None:
            seed, seed_step, per_seed = state.seed_of_step(step, total, config.seeds, config.seed)
            where = f"seed {seed} · step {seed_step}/{per_seed}" if config.seeds > 1 else f"step {step}/{total}"
            report.steps(step, total, f"{where} · loss {loss:.3f}", step=seed_step, loss=float(loss),
                         series=f"seed {seed}")

        report(0.0, "preparing")
        info = train(config, progress=progress)
        from app.audit import registry_event

        registry_event("install", info.name, {"version": info.version, "by": "train (UI)", "data": config.data})
        return info

    return runner().submit("train", f"train '{cfg_kwargs['name']}'", job, targets=(cfg_kwargs["name"],))


if submitted:
    with state.friendly_errors("Starting training"):
        from app.registry import check_name

        check_name(name)
        retrieval_aware = source.startswith("Retrieval")
        if upload is None:
            raise ValueError("upload a QA JSONL file with the questions and answers to train on")
        data = staged_training_file(upload)
        if retrieval_aware and index is None:
            raise ValueError("retrieval-aware training needs an index; create one on the Documents page")
        cfg = {"data": str(data), "name": name, "epochs": int(epochs), "rank": int(rank), "retrieval_aware": retrieval_aware}
        if limit:
            cfg["limit"] = int(limit)
        if seeds > 1:
            cfg["seeds"] = int(seeds)
        if retrieval_aware:
            cfg["index"] = index
        base = state.engine_config().base_model
        if base:
            cfg["base_model"] = base
        st.session_state["train_job"] = start_training(cfg).id

job_id = st.session_state.get("train_job")
other = state.active_job("train")
if other is not None and other.id != job_id:
    st.info(f"Training in progress: {other.title}")
    job_id = other.id
if job_id:
    try:
        job = state.follow_job(runner().get(job_id), loss_chart=True, cancellable=True)
    except KeyError:
        job = None
    if job is not None and job.status == "done" and job.result is not None:
        if st.session_state.get("train_shown") != job.id:  # once: the table and menus above list the new adapter
            st.session_state["train_shown"] = job.id
            st.rerun()
        st.success(f"Trained and registered {getattr(job.result, 'label', job.result)}. "
                   f"It is available in the adapter menus now (no reload).")
st.subheader("Merge adapters")
st.caption("Seeds of one recipe, merged into one adapter: the weighted sum of their LoRA weight changes (PEFT's "
           "cat merge), served at one adapter's cost. The sources must share base model, layers and answer settings.")
with st.form("merge_form", enter_to_submit=False):
    m1, m2 = st.columns([3, 1])
    sources = m1.multiselect("Adapters to merge (equal weights)", [a.name for a in infos], key="merge_sources")
    merged_name = m2.text_input("Merged adapter name", key="merge_name", placeholder="e.g. medical-ensemble")
    merge_clicked = st.form_submit_button("Merge")
if merge_clicked:
    with state.friendly_errors("Merging"):
        from app.merge import merge
        from app.registry import check_name

        check_name(merged_name)
        with st.spinner(f"Merging {', '.join(sources)}"):
            merged = merge(merged_name, sources, base_model=state.engine_config().base_model or None)
        from app.audit import registry_event

        registry_event("install", merged.name, {"version": merged.version, "by": "merge (UI)", "sources": sources})
        st.success(f"Merged {', '.join(merged.card.hyperparameters['sources'])} into {merged.label}.")
with st.expander("Background jobs"):
    state.recent_jobs_table()
st.caption(f"Default adapter is stored in {settings_path()}")
