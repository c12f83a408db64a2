"""lm-evaluation-harness scores a local yes/no/maybe task through `loracle serve`'s /v1/completions (the
`local-completions` model: echo + logprobs, one forward pass per option), all offline: the task is a YAML file
over a JSONL copy of shipped dev questions, read by the `json` builder packaged in `datasets`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIMIT = 10

TASK = """task: loracle_pubmedqa_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: ["yes", "no", "maybe"]
doc_to_target: final_decision
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _questions(dst: Path) -> Path:
    src = REPO / "data" / "pubmedqa" / "dev.jsonl"
    if not src.exists():
        src = REPO / "tests" / "data" / "pubmedqa" / "dev.jsonl"
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()][:LIMIT]
    dst.write_text("".join(json.dumps({k: r[k] for k in ("id", "question", "final_decision")}) + "\n"
                           for r in rows))
    return dst


def _direct(engine, context: str, continuation: str) -> float:
    """The continuation's log-likelihood from one forward pass, tokenized as lm-eval does (no BOS)."""
    import torch

    tok = engine.tokenizer
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    start = len(tok(context, add_special_tokens=False)["input_ids"])
    with engine._lock, torch.inference_mode():
        logp = torch.log_softmax(engine.model(input_ids=torch.tensor([whole])).logits[0].float(), dim=-1)
    return float(sum(logp[t - 1, whole[t]] for t in range(start, len(whole))))


def test_lm_eval_scores_a_local_task_over_the_api(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "")
    import datasets.config
    import lm_eval
    from lm_eval.tasks import TaskManager

    from app.config import EngineConfig
    from app.engine import Engine
    from app.server import make_app
    from tests.test_server import running

    assert datasets.config.HF_HUB_OFFLINE, "the hub must be off for this test"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = _questions(tmp_path / "dev.jsonl")
    (tasks / "loracle_pubmedqa_local.yaml").write_text(TASK.format(data=data, cache=tmp_path / "hf-cache"))
    engine = Engine(EngineConfig(base_model=str(tiny_model_dir), adapters_dir=str(tmp_path / "adapters"),
                                 adapters=(), max_new_tokens=8))
    with running(make_app(engine)) as port:
        results = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=f"base_url=http://127.0.0.1:{port}/v1/completions,model=base,tokenizer_backend=huggingface,"
                       f"tokenizer={tiny_model_dir},num_concurrent=1,max_retries=1",
            tasks=["loracle_pubmedqa_local"], task_manager=TaskManager(include_path=str(tasks)),
            limit=LIMIT, bootstrap_iters=0, log_samples=True)
    scores = results["results"]["loracle_pubmedqa_local"]
    print("\nlm-eval over the API:", {k: v for k, v in scores.items() if k.startswith("acc")})
    assert 0.0 <= scores["acc,none"] <= 1.0
    samples = results["samples"]["loracle_pubmedqa_local"]
    assert len(samples) == LIMIT
    assert all(len(s["resps"]) == 3 and all(isinstance(r[0][0], float) for r in s["resps"]) for s in samples)
    for (context, continuation), resp in zip(samples[0]["arguments"], samples[0]["resps"]):
        assert resp[0][0] == pytest.approx(_direct(engine, context, continuation), abs=1e-3)
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
