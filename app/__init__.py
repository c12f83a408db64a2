"""Loracle: one base model, a switchable LoRA adapter and switchable retrieval.

The public API, importable from the package (loaded on first use, so `import app` stays light):

    from app import Engine, EngineConfig, Request, Answer

    engine = Engine(EngineConfig.from_env())          # the shipped model, adapter and index
    ans = engine.answer("Do statins prevent stroke?", adapter="medical-pubmedqa", retrieval=True)
    print(ans.decision.label, ans.decision.probs, ans.text, [c.number for c in ans.citations])
    answers = engine.compare("Is aspirin useful after stroke?")       # base, lora, rag, lora+rag
"""
from __future__ import annotations

from importlib import import_module as _import_module

_EXPORTS = {
    "Engine": "app.engine", "Request": "app.engine",
    "EngineConfig": "app.config", "TrainConfig": "app.config", "EvalConfig": "app.config",
    "Answer": "app.types", "Passage": "app.types", "AdapterRef": "app.types", "MODES": "app.types",
    "Decision": "app.decision",
    "run_eval": "app.evaluate", "load_questions": "app.questions",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")
