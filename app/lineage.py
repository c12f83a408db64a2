"""An adapter's version tree (parent -> child, from the cards' `parent` fields) with the eval deltas on its
edges (from the cards' `evals`), as plain data and as a Graphviz DOT string (the Adapters page draws it with
st.graphviz_chart; no system graphviz needed). No Streamlit here.

    graph = lineage(registry.versions("medical-pubmedqa"))
    dot = to_dot("medical-pubmedqa", graph)
"""
from __future__ import annotations

from typing import Any

EDGE_MODES = ("lora", "lora+rag")  # the modes an adapter changes
EDGE_METRICS = ("macro_f1", "accuracy")  # the first one a version pair both have is shown on the edge
_SHORT = {"macro_f1": "F1", "accuracy": "acc", "rouge_l": "ROUGE-L"}


def merged_evals(infos: list[Any]) -> dict:
    """Every version's eval evidence, from all the cards (a later card's entry for a version wins)."""
    out: dict = {}
    for info in sorted(infos, key=lambda a: a.version):
        out.update({k: v for k, v in (info.card.evals or {}).items() if isinstance(v, dict)})
    return out


COMPARABLE_RUN = ("data_sha256", "n_items", "decisions", "calibrate", "max_new_tokens")  # what must match


def incomparable(evals: dict, parent: int, child: int) -> str | None:
    """Why two versions' stored evaluations cannot be subtracted (another question set, count, token budget,
    decision method or calibration), e.g. "max_new_tokens 48 vs 1"; None when they can."""
    a = (evals.get(f"v{parent}") or {}).get("run") or {}
    b = (evals.get(f"v{child}") or {}).get("run") or {}
    # scored decisions come from the prefill, whatever the budget; a run that does not say how it decided
    # (recorded before scoring existed) may have parsed them from its text, so its budget counts
    parsed = {a.get("decisions"), b.get("decisions")} & {"free", "both", None}
    for key in COMPARABLE_RUN:
        if key == "max_new_tokens" and not parsed:
            continue
        if a.get(key) is not None and b.get(key) is not None and a[key] != b[key]:
            shown = "another question set" if key == "data_sha256" else f"{key} {a[key]} vs {b[key]}"
            return shown
    return None


def eval_deltas(evals: dict, parent: int, child: int, modes=EDGE_MODES, metrics=EDGE_METRICS) -> dict[str, float]:
    """{"lora+rag macro_f1": +0.063, ...}: child minus parent, per mode, the first metric both versions have;
    none when the two evaluations were run differently (`incomparable`)."""
    a, b = evals.get(f"v{parent}") or {}, evals.get(f"v{child}") or {}
    out = {}
    if incomparable(evals, parent, child):
        return out
    for mode in modes:
        pa, pb = a.get(mode), b.get(mode)
        if not isinstance(pa, dict) or not isinstance(pb, dict):
            continue
        for metric in metrics:
            va, vb = pa.get(metric), pb.get(metric)
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                out[f"{mode} {metric}"] = round(float(vb) - float(va), 4)
                break
    return out


def headline(evals: dict, version: int, modes=EDGE_MODES, metrics=EDGE_METRICS) -> str:
    """E.g. "lora+rag F1 0.379" for the node label: the last mode in `modes` with a metric."""
    summary = evals.get(f"v{version}") or {}
    for mode in reversed(modes):
        metrics_of = summary.get(mode)
        if isinstance(metrics_of, dict):
            for metric in metrics:
                if isinstance(metrics_of.get(metric), (int, float)):
                    return f"{mode} {_SHORT.get(metric, metric)} {metrics_of[metric]:.3f}"
    return "no eval"


def lineage(infos: list[Any]) -> dict:
    """{"name", "current", "nodes": [{"version", "created", "headline", "current", "rollback"}], "edges":
    [{"parent": (name, version), "child": version, "rollback": bool, "deltas": {...}}]} from the AdapterInfos of
    every version of one adapter (`registry.versions(name)`). A parent in another adapter is an edge too."""
    if not infos:
        return {"name": "", "current": None, "nodes": [], "edges": []}
    infos = sorted(infos, key=lambda a: a.version)
    name, current = infos[-1].name, infos[-1].version
    evals = merged_evals(infos)
    nodes, edges = [], []
    for info in infos:
        card = info.card
        rolled = card.extra.get("rollback") if isinstance(card.extra, dict) else None
        nodes.append({"version": info.version, "created": (card.created or "")[:10], "current": info.version == current,
                      "headline": headline(evals, info.version), "rollback": rolled or None})
        parent = card.parent or {}
        if isinstance(parent.get("version"), int):
            pname = parent.get("name") or name
            deltas = eval_deltas(evals, parent["version"], info.version) if pname == name else {}
            unlike = incomparable(evals, parent["version"], info.version) if pname == name else None
            edges.append({"parent": (pname, parent["version"]), "child": info.version,
                          "rollback": bool(parent.get("rollback") or rolled), "deltas": deltas,
                          "incomparable": unlike})
    return {"name": name, "current": current, "nodes": nodes, "edges": edges}


def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def edge_label(edge: dict) -> str:
    parts = ["rollback"] if edge["rollback"] else []
    if edge.get("incomparable"):
        parts.append(f"evals not comparable ({edge['incomparable']})")
    for key, delta in edge["deltas"].items():
        mode, metric = key.rsplit(" ", 1)
        parts.append(f"{mode} {_SHORT.get(metric, metric)} {delta:+.3f}")
    return "\n".join(parts)


def to_dot(name: str, graph: dict) -> str:
    """The version tree as a left-to-right DOT digraph: one box per version (the current one filled), edges
    parent -> child labelled with the eval deltas (dashed for a rollback)."""
    lines = [f"digraph {_quote(name)} {{", "  rankdir=LR;",
             '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=10];']
    known = set()
    for node in graph["nodes"]:
        node_id = f"{name}@v{node['version']}"
        known.add((name, node["version"]))
        label = f"v{node['version']}" + (" (current)" if node["current"] else "")
        label += f"\n{node['created']}" if node["created"] else ""
        label += f"\n{node['headline']}"
        style = ', style="rounded,filled", fillcolor="#dbeafe"' if node["current"] else ""
        lines.append(f"  {_quote(node_id)} [label={_quote(label)}{style}];")
    for edge in graph["edges"]:
        pname, pversion = edge["parent"]
        parent_id = f"{pname}@v{pversion}"
        if (pname, pversion) not in known:
            known.add((pname, pversion))
            lines.append(f'  {_quote(parent_id)} [label={_quote(parent_id)}, style="dashed"];')
        attrs = [f"label={_quote(edge_label(edge))}"] + (['style="dashed"'] if edge["rollback"] else [])
        child_id = f"{name}@v{edge['child']}"
        lines.append(f"  {_quote(parent_id)} -> {_quote(child_id)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
