"""The OpenAI-compatible client backend against a real local HTTP server speaking the chat-completions shape."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app import registry
from app.config import EngineConfig
from app.engine import Engine, Request
from tests.tiny_adapter import card_for, make_adapter

BASE = "loracle-test/tiny-llama"


class _Handler(BaseHTTPRequestHandler):
    seen: list[dict] = []
    served = [BASE, "med"]

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.served]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or body["model"] not in self.served:
            return self._send(404, {"error": {"message": f"model {body.get('model')} not found"}})
        self.seen.append(body)
        user = body["messages"][-1]["content"]
        text = f"Yes. {body['model']} answers [1] [7]" if "Passages" in user else f"No. {body['model']} says"
        self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": len(user.split()), "completion_tokens": 5, "total_tokens": 9}})


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


@pytest.fixture(scope="module")
def root(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("remote")
    registry.install(make_adapter(tiny_model_dir, d / "staging", seed=1), "med", card_for(tiny_model_dir), d / "ad")
    return d / "ad"


def test_remote_engine_sends_adapter_as_model_field(server, root):
    engine = Engine(EngineConfig(backend="openai", server_url=server, base_model=BASE, adapters_dir=str(root),
                                 adapters=("med",), max_new_tokens=16))
    _Handler.seen.clear()
    base, lora = engine.answer_batch([Request("Is tea good?"), Request("Is tea good?", adapter="med")])
    assert [b["model"] for b in _Handler.seen] == [BASE, "med"]
    assert _Handler.seen[0]["max_tokens"] == 16 and _Handler.seen[0]["temperature"] == 0.0
    assert _Handler.seen[0]["messages"][0]["role"] == "system"
    assert (base.mode, base.adapter, base.text) == ("base", None, f"No. {BASE} says")
    assert (lora.mode, lora.adapter, lora.text) == ("lora", "med@v1", "No. med says")
    assert lora.timings["new_tokens"] == 5 and lora.timings["prompt_tokens"] > 0
    items = list(engine.stream("Is tea good?", adapter="med"))
    assert items[0] == "No. med says" and items[-1].adapter == "med@v1"


def test_remote_rag_answer_flags_citations_of_passages_not_given(server, root, request):
    pytest.importorskip("app.retrieve")
    try:
        index = str(request.getfixturevalue("sample_index"))
    except pytest.FixtureLookupError:
        pytest.skip("sample_index fixture not available yet")
    engine = Engine(EngineConfig(backend="openai", server_url=server, base_model=BASE, adapters_dir=str(root),
                                 adapters=()))
    a = engine.answer("What does the document say?", adapter="med", retrieval=True, index=index, k=2)
    assert a.mode == "lora+rag" and len(a.passages) == 2
    assert [(c.number, c.valid) for c in a.citations] == [(1, True), (7, False)]
    assert a.citations[0].passage is a.passages[0]


def test_remote_errors_are_clear(server, root, tiny_model_dir, tmp_path):
    registry.install(make_adapter(tiny_model_dir, tmp_path / "s", seed=2), "other", card_for(tiny_model_dir), root)
    engine = Engine(EngineConfig(backend="openai", server_url=server, base_model=BASE, adapters_dir=str(root),
                                 adapters=()))
    with pytest.raises(ValueError, match="'other' is not served.*--lora-modules other="):
        engine.answer("q", adapter="other")
    with pytest.raises(ValueError, match="trained on loracle-test/tiny-llama but the engine runs some/other"):
        Engine(EngineConfig(backend="openai", server_url=server, base_model="some/other",
                            adapters_dir=str(root), adapters=("med",)))
    dead = Engine(EngineConfig(backend="openai", server_url="http://127.0.0.1:9/v1", base_model=BASE,
                               adapters_dir=str(root), adapters=()))
    with pytest.raises(RuntimeError, match="cannot reach generation server"):
        dead.answer("q")
    with pytest.raises(ValueError, match="unknown backend 'grpc'"):
        Engine(EngineConfig(backend="grpc"))
