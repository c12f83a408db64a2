"""`loracle serve`: the OpenAI-compatible API on the tiny model, served by a real uvicorn on a loopback port and
called with the official `openai` client (and raw httpx where the client hides the wire): models, chat in the
four modes (plain and streamed), the `loracle` extension, errors in OpenAI's shape, auth and limits, completions
log-probs against a direct forward pass, a client that disconnects mid-stream, and the CLI's refusals."""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from types import SimpleNamespace

import pytest

QUESTION = "Do statins reduce the risk of stroke?"
MODELS = {"base": (None, False), "alpha": ("alpha", False), "base+rag": (None, True), "alpha+rag": ("alpha", True)}


@contextlib.contextmanager
def running(app):
    """Serve an ASGI app with uvicorn in a thread on a free loopback port; yields the port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def client(port: int, key: str = "unused"):
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, shared_data):
    """One engine (tiny base, adapter 'alpha', index 'sample' in an index store) behind one server."""
    from app import registry
    from app.config import EngineConfig
    from app.engine import Engine
    from app.server import make_app
    from ingest.pipeline import ingest_paths
    from tests.tiny_adapter import card_for, make_adapter, untie_base

    tmp = tmp_path_factory.mktemp("serve")
    base = untie_base(tiny_model_dir, tmp / "base")
    root = tmp / "adapters"
    registry.install(make_adapter(base, tmp / "staging", seed=1), "alpha", card_for(base), root)
    store = tmp / "indexes"
    ingest_paths(sorted((shared_data / "sample" / "docs").glob("*.txt"))[:4], index=store / "sample")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORACLE_INDEXES", str(store))
        engine = Engine(EngineConfig(base_model=str(base), adapters_dir=str(root), adapters=("alpha",),
                                     index="sample", k=2, max_new_tokens=8))
        app = make_app(engine, max_body_bytes=200_000, max_tokens_limit=512)
        with running(app) as port:
            yield SimpleNamespace(engine=engine, port=port, url=f"http://127.0.0.1:{port}", base=base, root=root)


def _chat(served, model: str, **kw):
    return client(served.port).chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=8, **kw)


def test_models_lists_every_mode(served):
    models = {m.id: m for m in client(served.port).models.list()}
    for mid in ("base", "base+rag", "base+rag:sample", "alpha", "alpha+rag", "alpha+rag:sample"):
        assert mid in models, sorted(models)
    ext = models["alpha+rag"].model_extra["loracle"]
    assert ext == {"base_model": served.engine.info.name, "adapter": "alpha@v1", "retrieval": True, "index": "sample"}
    assert models["base"].model_extra["loracle"]["adapter"] is None
    assert client(served.port).models.retrieve("alpha+rag").id == "alpha+rag"


@pytest.mark.parametrize("model", list(MODELS))
def test_chat_plain_and_streamed_in_each_mode(served, model):
    adapter, retrieval = MODELS[model]
    plain = _chat(served, model)
    text = plain.choices[0].message.content
    direct = served.engine.answer(QUESTION, adapter, retrieval, max_new_tokens=8)
    assert text == direct.text and plain.model == model and plain.object == "chat.completion"
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage.prompt_tokens == direct.timings["prompt_tokens"] > 0
    assert plain.usage.completion_tokens == direct.timings["new_tokens"]
    ext = plain.model_extra["loracle"]
    assert ext["mode"] == {"base": "base", "alpha": "lora", "base+rag": "rag", "alpha+rag": "lora+rag"}[model]
    assert ext["adapter"] == ("alpha@v1" if adapter else None)
    assert set(ext["decision"]["probs"]) == {"yes", "no", "maybe"}
    assert ext["decision"]["label"] in ext["decision"]["probs"]
    if retrieval:
        assert [p["rank"] for p in ext["passages"]] == [1, 2]
        assert all(p["doc_id"] and p["text"] for p in ext["passages"])
        assert ext["settings"]["index"] == "sample"
        for c in ext["citations"]:
            assert c["valid"] == (c["doc_id"] is not None)
    else:
        assert ext["passages"] == [] and ext["citations"] == []

    chunks = list(_chat(served, model, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.model == model for c in chunks)
    joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert joined == text
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert last.model_extra["loracle"]["mode"] == ext["mode"]
    assert last.model_extra["loracle"]["decision"] == ext["decision"]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_extension_fields_and_history(served):
    import httpx

    body = {"model": "base+rag", "k": 1, "decide": False, "passage_chars": 80, "max_tokens": 4,
            "messages": [{"role": "system", "content": "ignored"},
                         {"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": "Yes."},
                         {"role": "user", "content": [{"type": "text", "text": QUESTION}]}]}
    r = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    ext = r.json()["loracle"]
    assert len(ext["passages"]) == 1 and ext["decision"] is None
    assert ext["settings"]["k"] == 1 and ext["settings"]["passage_chars"] == 80
    assert ext["settings"]["source"]["k"] == "request"
    direct = served.engine.answer(QUESTION, None, True, k=1, decide=False, passage_chars=80, max_new_tokens=4,
                                  examples=[("Is the sky blue?", "Yes.")])
    assert r.json()["choices"][0]["message"]["content"] == direct.text
    # no max_tokens: the adapter card's budget, else the engine's; finish_reason follows that budget
    del body["max_tokens"]
    r = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=120)
    out = r.json()
    assert out["loracle"]["settings"]["max_new_tokens"] == served.engine.config.max_new_tokens
    assert out["choices"][0]["finish_reason"] == (
        "length" if out["usage"]["completion_tokens"] >= served.engine.config.max_new_tokens else "stop")


def test_auto_routes_and_every_answer_is_audited(served):
    import httpx

    from app import registry, routing

    engine = served.engine
    routing.build_summary(registry.get("alpha", engine.root).path,
                          ["Does aspirin reduce the risk of heart attack?", "Do statins prevent stroke?",
                           "Is vitamin D useful for preventing falls?", "Are beta blockers safe after infarction?"])
    engine.reload_router()
    assert "auto" in {m.id for m in client(served.port).models.list()}
    body = {"model": "auto", "max_tokens": 3, "messages": [{"role": "user", "content": "Does aspirin prevent heart "
                                                                                           "attacks?"}]}
    r = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    ext = r.json()["loracle"]
    assert ext["route"]["adapter"] == "alpha" and ext["adapter"] == "alpha@v1" and ext["answer_id"]
    row = next(a for a in engine.audit.answers() if a["id"] == ext["answer_id"])
    assert (row["entry_point"], row["adapter"], row["route_adapter"], row["mode"]) == ("api", "alpha@v1", "alpha",
                                                                                      "lora")
    body["messages"][0]["content"] = "Who won the football world cup in 1998?"
    ext = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=120).json()["loracle"]
    assert ext["route"]["adapter"] is None and ext["mode"] == "base"
    r = httpx.post(served.url + "/v1/completions", json={"model": "auto", "prompt": "x", "max_tokens": 0}, timeout=60)
    assert r.status_code == 400 and "auto" in r.json()["error"]["message"]


def _error(exc_info) -> dict:
    body = exc_info.value.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_unknown_models_and_indexes_are_404(served):
    import httpx
    import openai

    for model, needle in (("nope", "registry has no adapter of that name either"), ("nope+rag", "no adapter 'nope'"),
                          ("base+rag:missing", "no index 'missing'"), ("base+foo", "MODEL+rag")):
        with pytest.raises(openai.NotFoundError) as e:
            _chat(served, model)
        err = _error(e)
        assert needle in err["message"] and err["param"] == "model", err
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client(served.port).models.retrieve("nope")
    for model, needle in (("base+rag:../../tmp", "is not an index name"), ):
        with pytest.raises(openai.BadRequestError) as e:
            _chat(served, model)
        assert needle in _error(e)["message"] and "loracle train" not in _error(e)["message"]
    r = httpx.post(served.url + "/v1/chat/completions", timeout=60,
                   json={"model": "base+rag", "k": True, "messages": [{"role": "user", "content": "Is it?"}]})
    assert r.status_code == 400 and "k" in r.json()["error"]["message"]  # true is not k=1


def test_bad_requests_are_400_in_openai_shape(served):
    import httpx
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        _chat(served, "base", extra_body={"max_tokens": 100_000})
    assert "max_tokens 100000 is over this server's limit of 512" in _error(e)["message"]
    with pytest.raises(openai.BadRequestError) as e:
        _chat(served, "base", extra_body={"index": "sample"})
    assert "use model 'base+rag'" in _error(e)["message"]
    url = served.url + "/v1/chat/completions"
    cases = [({"model": "base"}, "messages"), ({"model": "base", "messages": []}, "messages"),
             ({"model": "base", "messages": [{"role": "assistant", "content": "hi"}]}, "last message"),
             ({"model": "base", "messages": [{"role": "user", "content": QUESTION}], "k": 0}, "k"),
             ({"model": "base", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text content")]
    for body, needle in cases:
        r = httpx.post(url, json=body, timeout=60)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], (body, r.text)
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    r = httpx.get(served.url + "/v1/nothing-here", timeout=60)
    assert r.status_code == 404 and "/v1/chat/completions" in r.json()["error"]["message"]


def test_oversized_body_is_413(served):
    import httpx
    import openai

    big = "x" * 300_000
    with pytest.raises(openai.APIStatusError) as e:
        client(served.port).chat.completions.create(model="base", messages=[{"role": "user", "content": big}])
    assert e.value.status_code == 413 and "limit of 200000 bytes" in _error(e)["message"]

    def chunked():  # no Content-Length: the bytes really sent are counted
        for _ in range(30):
            yield b"x" * 10_000

    r = httpx.post(served.url + "/v1/chat/completions", content=chunked(), timeout=60)
    assert r.status_code == 413, r.text


def test_api_key(served):
    import httpx
    import openai

    from app.server import make_app

    with running(make_app(served.engine, api_key="s3cret")) as port:
        with pytest.raises(openai.AuthenticationError) as e:
            client(port, key="wrong").models.list()
        assert "Authorization: Bearer" in _error(e)["message"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "base"}, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert "base" in {m.id for m in client(port, key="s3cret").models.list()}
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=60).json()["status"] == "ok"
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/openapi.json", timeout=60).status_code == 401  # the schema is behind the key too
        schema = httpx.get(url + "/openapi.json", headers={"Authorization": "Bearer s3cret"}, timeout=60).json()
        assert "/v1/chat/completions" in schema["paths"]
        assert httpx.get(url + "/docs", timeout=60).status_code == 404  # Swagger's page needs a CDN: not served


def test_busy_engine_is_503_with_retry_after(served, monkeypatch):
    import openai

    from app.scheduler import Busy

    def busy(*args, **kwargs):
        raise Busy("the engine is busy: 32 requests are waiting", retry_after=3)

    monkeypatch.setattr(served.engine, "answer", busy)
    with pytest.raises(openai.APIStatusError) as e:
        _chat(served, "base")
    assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "3"
    assert "busy" in _error(e)["message"]


def test_health(served):
    import httpx

    health = httpx.get(served.url + "/health", timeout=60).json()
    assert health["status"] == "ok" and health["model"] == served.engine.info.name
    assert health["adapters"] == ["alpha@v1"]
    if getattr(served.engine, "scheduler", None) is not None:
        assert {"active", "waiting"} <= set(health["queue"])


def _forward_logprobs(engine, ids: list[int], adapter: str | None) -> list[float]:
    import torch

    with engine._lock, engine.backend._adapter_ctx(adapter), torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]


@pytest.mark.parametrize("model", ["base", "alpha"])
def test_completion_logprobs_equal_a_forward_pass(served, model):
    engine = served.engine
    prompt = "Question: Do statins reduce stroke?\nAnswer: yes"
    out = client(served.port).completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    choice = out.choices[0]
    lp = choice.logprobs
    ids = engine.tokenizer(prompt)["input_ids"]
    assert choice.text == prompt and len(lp.tokens) == len(ids) == out.usage.prompt_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and lp.text_offset[0] == 0
    expected = _forward_logprobs(engine, ids, None if model == "base" else "alpha")
    assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:], expected)) < 1e-4
    for tok, own, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert tok in top and abs(top[tok] - own) < 1e-6 and 1 <= len(top) <= 4
    assert "".join(lp.tokens) == prompt

    # lm-evaluation-harness' request: token ids, echo, one generated token; the prompt part is the same
    raw = client(served.port).completions.create(model=model, prompt=[ids], max_tokens=1, echo=True, logprobs=1)
    lp1 = raw.choices[0].logprobs
    assert len(lp1.token_logprobs) == len(ids) + 1
    assert max(abs(a - b) for a, b in zip(lp1.token_logprobs[1:-1], expected)) < 1e-4
    assert lp1.token_logprobs[-1] == pytest.approx(max(lp1.top_logprobs[-1].values()))


def test_completion_continuation_and_refusals(served):
    import openai

    out = client(served.port).completions.create(model="base", prompt=["Hello", "The sky is"], max_tokens=4)
    assert [c.index for c in out.choices] == [0, 1] and out.usage.completion_tokens <= 8
    assert all(c.logprobs is None and c.finish_reason in ("stop", "length") for c in out.choices)
    with pytest.raises(openai.BadRequestError) as e:
        client(served.port).completions.create(model="base+rag", prompt="x", max_tokens=0, echo=True, logprobs=1)
    assert "use model 'base' here" in _error(e)["message"]
    with pytest.raises(openai.BadRequestError):
        client(served.port).completions.create(model="base", prompt=[[10 ** 9]], max_tokens=0, echo=True)


def test_completions_refuse_a_disabled_adapter_instead_of_scoring_with_the_base_model(served):
    import httpx

    from app import registry

    root = served.engine.root
    body = {"model": "alpha", "prompt": "The sky is", "max_tokens": 0, "echo": True, "logprobs": 1}
    own = httpx.post(served.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
    registry.disable("alpha", root, reason="under review", who="test")
    try:
        r = httpx.post(served.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_unavailable"
        assert "adapter alpha is disabled; name the base model" in r.json()["error"]["message"]
    finally:
        registry.enable("alpha", root, who="test")
    again = httpx.post(served.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
    assert again["token_logprobs"] == own["token_logprobs"]
    health = httpx.get(served.url + "/health", timeout=30).json()
    assert health.get("queue", {"scoring": 0})["scoring"] == 0  # every admitted scoring call has left


def test_disconnect_mid_stream_frees_the_row(served):
    import httpx

    engine = served.engine
    scheduler = getattr(engine, "scheduler", None)
    before = dict(scheduler.stats()) if scheduler is not None and hasattr(scheduler, "stats") else None
    body = {"model": "base", "stream": True, "max_tokens": 500, "decide": False,
            "messages": [{"role": "user", "content": "Tell me a long story about the sea."}]}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", served.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:") and json.loads(line[5:])["choices"][0]["delta"].get("content"):
                    break  # one chunk of text, then hang up
    t0 = time.monotonic()
    plain = _chat(served, "base")
    assert plain.choices[0].message.content and time.monotonic() - t0 < 60
    if before is not None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = scheduler.stats()
            if stats.get("active", 0) == 0 and stats.get("waiting", 0) == 0:
                break
            time.sleep(0.05)
        assert stats.get("active", 0) == 0 and stats.get("waiting", 0) == 0, stats
        if "cancelled" in stats:
            assert stats["cancelled"] >= before.get("cancelled", 0) + 1, (before, stats)
    deadline = time.monotonic() + 10  # the audit log has the cut answer too, marked cancelled
    while time.monotonic() < deadline and not [r for r in engine.audit.answers() if r["cancelled"]]:
        time.sleep(0.05)
    cut = [r for r in engine.audit.answers() if r["cancelled"]]
    assert cut and cut[-1]["question"] == "Tell me a long story about the sea." and cut[-1]["new_tokens"] < 500
    assert engine.audit.stats()["cancelled"] == len(cut)


def test_serve_refuses_a_public_host_without_a_key(monkeypatch, capsys):
    from app.cli import main
    from app.cli_serve import is_loopback

    monkeypatch.delenv("LORACLE_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without an API key" in err and "--api-key" in err
    monkeypatch.setenv("LORACLE_API_KEY", "  ")  # a blank key could never be matched: it is no key
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "without an API key" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_export_vllm_prints_the_command(tmp_path, tiny_model_dir, capsys):
    from app import registry
    from app.cli import main
    from tests.tiny_adapter import card_for, make_adapter

    root = tmp_path / "adapters"
    for name, rank in (("alpha", 4), ("beta", 12)):
        registry.install(make_adapter(tiny_model_dir, tmp_path / f"s-{name}", rank=rank), name,
                         card_for(tiny_model_dir), root)
    assert main(["adapters", "export-vllm", "--root", str(root), "--base-model", "org/tiny"]) == 0
    out = capsys.readouterr().out.splitlines()
    command = out[0]
    assert command.startswith("vllm serve org/tiny ") and "--enable-lora" in command
    assert "--max-lora-rank 16" in command and "--max-loras 2" in command  # 12 rounds up to a rank vLLM takes
    assert f"alpha={(root / 'alpha').resolve()}" in command and f"beta={(root / 'beta').resolve()}" in command
    assert "--backend openai --server-url http://127.0.0.1:8000/v1" in out[1]
    assert main(["adapters", "export-vllm", "--root", str(root)]) == 0  # base from adapter_config.json
    assert str(tiny_model_dir) in capsys.readouterr().out
