"""An OpenAI-compatible HTTP API over one Engine (`loracle serve`): any OpenAI client, curl, or an evaluator
such as lm-evaluation-harness can ask in all four modes.

Model ids (GET /v1/models lists the servable ones):
  base                      the base model, no adapter, no retrieval (its name is in each entry's `loracle` field)
  NAME                      a loaded adapter by registry name (its current version); NAME@vN a pinned version
  auto                      each question routed to the closest adapter, or to none (app.routing)
  MODEL+rag                 MODEL with retrieval over its default index (the adapter card's, else the engine's)
  MODEL+rag:INDEX           MODEL with retrieval over the index INDEX (one of `loracle index list`)
Only adapters the engine loaded at start are served (`loracle serve --adapters a,b`).

Routes:
  GET  /v1/models, /v1/models/{id}
  POST /v1/chat/completions  stream true/false. The question is the last message (a user message: a string or
       text parts); earlier user/assistant pairs become few-shot examples (Request.examples) before it;
       system messages are ignored (the prompt template has its own). Decoding is greedy: temperature,
       top_p, seed, stop are accepted and ignored. Extension request fields (top level, e.g. the openai
       client's `extra_body`): k, index, decide, passage_chars. The response (and the last streamed chunk)
       carries a `loracle` field: mode, adapter, decision {label, probs, source, calibration}, citations
       [{number, valid, doc_id, location}], passages [{rank, doc_id, score, location, text}], settings, timings.
  POST /v1/completions  raw prompts (no chat template), for log-likelihood scoring: prompt (string, strings,
       token ids or lists of token ids), max_tokens (0 allowed: score only; default 16), logprobs (top-N,
       at most 20), echo, stop. Not for +rag models (a raw prompt has no question to retrieve for). The
       adapter is taken as a chat request takes it (its current version after a rollback), but a disabled
       one is refused (409), never silently replaced by the base model; at most `queue_limit` calls run
       or wait at once (503 beyond), and a client that went away stops the remaining prompts.
  GET  /health  status, base model, adapters, and the scheduler's queue figures when the engine has them.

Errors always have OpenAI's shape {"error": {message, type, param, code}}: 400 bad input, 401 missing or wrong
key (when started with an API key, for /v1/*), 404 unknown model or route, 409 a disabled adapter on
/v1/completions, 413 body too large, 503 busy
(with Retry-After), 500 anything else (one line).
"""
from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import loglik
from app.engine import AUTO
from app.scheduler import Busy
from app.server_models import ApiError, _engine_error, _error_response, error_body, list_models, resolve_model

DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_TOKENS_LIMIT = 512
MAX_LOGPROBS = 20
MAX_PROMPTS = 64
_END = object()

# --- request bodies ----------------------------------------------------------------------------------
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1)
    k: int | None = Field(None, ge=1, le=50, strict=True)  # true is not k=1
    index: str | None = None
    decide: bool | None = None
    passage_chars: int | None = Field(None, ge=1, le=100_000)


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False


def _text(content, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}: only text content parts are supported (got type "
                           f"'{part.get('type')}'); send {{'type': 'text', 'text': ...}}", param="messages")
        parts.append(part["text"])
    return "\n".join(parts)


def question_and_examples(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """The last message is the question; earlier (user, assistant) pairs are few-shot examples."""
    last = messages[-1]
    if last.role != "user":
        raise ApiError(400, f"the last message must be the user's question (got role '{last.role}')",
                       param="messages")
    question = _text(last.content, "the last message").strip()
    if not question:
        raise ApiError(400, "the last user message is empty: put the question in it", param="messages")
    turns = [(m.role, _text(m.content, f"message {i}")) for i, m in enumerate(messages[:-1]) if m.role != "system"]
    examples = [(q, a) for (r1, q), (r2, a) in zip(turns, turns[1:]) if r1 == "user" and r2 == "assistant"]
    return question, examples


def _max_tokens(asked: int | None, default: int | None, limit: int, name: str = "max_tokens") -> int | None:
    """The budget asked for, within the limit; unasked: `default` (None: the adapter card's, else the engine's)."""
    if asked is None:
        return None if default is None else min(default, limit)
    if asked > limit:
        raise ApiError(400, f"{name} {asked} is over this server's limit of {limit}: ask for at most {limit} "
                       f"(the limit is `loracle serve --max-tokens-limit`)", param=name)
    return asked


# --- responses ---------------------------------------------------------------------------------------
def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def loracle_extension(answer) -> dict:
    d = answer.decision
    return _jsonable({
        "mode": answer.mode, "adapter": answer.adapter,
        "decision": None if d is None else {"label": d.label, "probs": d.probs, "source": d.source,
                                            "calibration": d.calibration},
        "citations": [{"number": c.number, "valid": c.valid, "doc_id": c.passage.doc_id if c.passage else None,
                       "location": c.passage.location if c.passage else None} for c in answer.citations],
        "passages": [{"rank": p.rank, "doc_id": p.doc_id, "score": float(p.score), "location": p.location,
                      "text": p.chunk.text} for p in answer.passages],
        "settings": answer.settings, "timings": answer.timings, "route": answer.route, "notes": answer.notes,
        "answer_id": answer.answer_id})


def _usage(answer) -> dict:
    prompt, new = int(answer.timings.get("prompt_tokens", 0) or 0), int(answer.timings.get("new_tokens", 0) or 0)
    return {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new}


def _finish_reason(answer) -> str:
    budget = (answer.settings or {}).get("max_new_tokens")
    return "length" if budget and int(answer.timings.get("new_tokens", 0) or 0) >= budget else "stop"


def _next(gen):
    try:
        return next(gen)
    except StopIteration:
        return _END


async def _engine_call(func, *args, **kwargs):
    try:
        return await run_in_threadpool(func, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - mapped to the API's error shape
        raise _engine_error(exc) from exc


# --- the guard: key and body size, before any route ------------------------------------------------------
class _Guard:
    """ASGI middleware: the API key for /v1 routes, then the body-size limit (Content-Length and the bytes
    really sent); the body is read once here and handed on."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def _reject(self, send, exc: ApiError) -> None:
        body = json.dumps(error_body(exc.message, exc.type, exc.param, exc.code)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _too_large(self, size: str) -> ApiError:
        return ApiError(413, f"request body of {size} is over this server's limit of {self.max_body} bytes: "
                        f"send less (fewer or shorter messages/prompts) or restart with --max-body-bytes",
                        code="request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and (scope["path"].startswith("/v1") or scope["path"] == "/openapi.json"):
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return await self._reject(send, ApiError(
                    401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the key this "
                    "server was started with (--api-key or LORACLE_API_KEY)", "authentication_error",
                    code="invalid_api_key"))
        declared = headers.get(b"content-length")
        try:
            declared_n = int(declared) if declared is not None else None
        except ValueError:
            return await self._reject(send, ApiError(400, f"Content-Length {declared!r} is not a number"))
        if declared_n is not None and declared_n > 16 * self.max_body:  # not worth reading: answer at once
            return await self._reject(send, self._too_large(f"{declared_n} bytes"))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size <= self.max_body:
                chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
            if size > 16 * self.max_body:
                break
        if size > self.max_body:  # read (up to a bound) before answering, so the client sees the 413
            return await self._reject(send, self._too_large(f"{size}+ bytes" if more else f"{size} bytes"))
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# --- the app -----------------------------------------------------------------------------------------
def make_app(engine, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
             max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT) -> FastAPI:
    """The FastAPI app serving `engine`; run it with uvicorn (`loracle serve` does)."""
    # no /docs or /redoc: their pages load Swagger from a CDN, which an offline machine cannot reach; the
    # schema stays at /openapi.json, behind the API key like /v1
    app = FastAPI(title="Loracle", summary="OpenAI-compatible API: base model, LoRA adapters, retrieval",
                  version="1", docs_url=None, redoc_url=None)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        problems, param = [], None
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ()) if p != "body"]
            if e.get("type") == "json_invalid":
                problems.append(f"the body is not valid JSON ({e.get('msg')} at character {loc[0] if loc else 0})")
                continue
            if not loc:
                problems.append("the body must be a JSON object, sent with the header 'Content-Type: "
                                "application/json'")
                continue
            param = param or loc[0]
            problems.append(f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
        return _error_response(ApiError(400, "invalid request: " + "; ".join(problems[:5]) +
                                        " (see the OpenAI API reference and README 'HTTP API')", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return _error_response(ApiError(404, f"no route {request.method} {request.url.path}: the API has "
                                            f"/v1/models, /v1/chat/completions, /v1/completions, /health",
                                            "not_found_error", code="not_found"))
        return _error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                        "invalid_request_error"))

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):
        return _error_response(_engine_error(exc))

    _add_routes(app, engine, max_tokens_limit, created=int(time.time()))
    app.add_middleware(_Guard, api_key=api_key or None, max_body=max_body_bytes)
    return app


# --- routes ------------------------------------------------------------------------------------------
def _queue_stats(engine):
    stats = getattr(getattr(engine, "scheduler", None), "stats", None)
    if not callable(stats):
        return None
    try:
        return _jsonable(stats())
    except Exception:  # noqa: BLE001 - health must answer even when the figures cannot be read
        return None


def _prompts(prompt) -> list[str | list[int]]:
    if isinstance(prompt, str):
        items = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
        items = [list(prompt)]
    else:
        items = list(prompt)
    if not items:
        raise ApiError(400, "prompt is an empty list: give a string, strings, or token ids", param="prompt")
    if len(items) > MAX_PROMPTS:
        raise ApiError(400, f"{len(items)} prompts in one request is over the limit of {MAX_PROMPTS}: split them "
                       f"over several requests", param="prompt")
    return items


async def _chat_events(gen, first, cancel: threading.Event, request: Request, head: dict, include_usage: bool):
    """SSE data lines: a role chunk, content chunks, a last chunk with finish_reason and the `loracle` field,
    an optional usage chunk, then [DONE]. When the client goes away, `cancel` stops the engine's row."""
    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return json.dumps({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                "finish_reason": finish}], **extra})

    item, sent, answer, done = first, "", None, False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while item is not _END:
            if isinstance(item, str):
                if item:
                    sent += item
                    yield chunk({"content": item})
            else:
                answer = item
            if await request.is_disconnected():
                return
            item = await _engine_call(_next, gen)
        if answer is None:
            raise ApiError(500, "the engine's stream ended without a final answer", "server_error")
        if len(answer.text) > len(sent) and answer.text.startswith(sent):  # keep the streamed text == the answer
            yield chunk({"content": answer.text[len(sent):]})
        yield chunk({}, _finish_reason(answer), loracle=loracle_extension(answer))
        if include_usage:
            yield json.dumps({**head, "choices": [], "usage": _usage(answer)})
        done = True
        yield "[DONE]"
    except ApiError as exc:
        done = True
        yield json.dumps(error_body(exc.message, exc.type, exc.param, exc.code))
    finally:
        if not done:
            cancel.set()
        close = getattr(gen, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(close)


def _add_routes(app: FastAPI, engine, limit: int, created: int) -> None:
    from sse_starlette import EventSourceResponse

    @app.get("/health")
    async def health():
        out = {"status": "ok", "model": engine.info.name,
               "adapters": [engine.adapter_ref(k).label for k in engine.loaded_adapters()]}
        queue = _queue_stats(engine)
        if queue is not None:
            queue["scoring"] = scoring["in_flight"]  # /v1/completions calls, which run outside the batch
        return {**out, "queue": queue} if queue is not None else out

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": await run_in_threadpool(list_models, engine, created)}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        for entry in await run_in_threadpool(list_models, engine, created):
            if entry["id"] == model_id:
                return entry
        resolve_model(engine, model_id)  # the precise 404 when it says why
        raise ApiError(404, f"model '{model_id}' is not listed by GET /v1/models", param="model",
                       code="model_not_found")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        target = resolve_model(engine, body.model, body.index)
        question, examples = question_and_examples(body.messages)
        name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_new = _max_tokens(body.max_completion_tokens or body.max_tokens, None, limit, name)
        options = {k: v for k, v in dict(k=body.k, index=target.index, decide=body.decide, examples=examples or None,
                                         passage_chars=body.passage_chars, max_new_tokens=max_new,
                                         origin="api").items()
                   if v is not None}
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
        if not body.stream:
            answer = await _engine_call(engine.answer, question, target.adapter, target.retrieval, **options)
            return {**head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                                 "logprobs": None, "finish_reason": _finish_reason(answer)}],
                    "usage": _usage(answer), "loracle": loracle_extension(answer)}
        cancel = threading.Event()
        kwargs = {**options, "cancel": cancel}
        gen = await _engine_call(lambda: iter(engine.stream(question, target.adapter, target.retrieval, **kwargs)))
        try:  # the first item before the response starts: a busy queue or a bad request is a plain HTTP error
            first = await _engine_call(_next, gen)
        except BaseException:
            cancel.set()
            if hasattr(gen, "close"):
                await run_in_threadpool(gen.close)
            raise
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        events = _chat_events(gen, first, cancel, request, {**head, "object": "chat.completion.chunk"}, include_usage)
        return EventSourceResponse(events, ping=15)

    scoring = {"in_flight": 0}  # /v1/completions calls admitted; bounded like the scheduler's queue

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        target = resolve_model(engine, body.model)
        if target.adapter == AUTO:
            raise ApiError(400, "model 'auto' routes chat questions; on /v1/completions name the adapter (or "
                           "'base') whose log-probabilities you want", param="model")
        if target.retrieval:
            plain = body.model.partition("+")[0]
            raise ApiError(400, f"model '{body.model}' retrieves passages for a question, and a raw prompt has "
                           f"none: use model '{plain}' here, or /v1/chat/completions for retrieval", param="model")
        if body.stream:
            raise ApiError(400, "stream is not supported on /v1/completions: send stream=false (or use "
                           "/v1/chat/completions to stream)", param="stream")
        prompts = _prompts(body.prompt)
        max_tokens = _max_tokens(body.max_tokens, 16, limit)
        stop = tuple([body.stop] if isinstance(body.stop, str) else body.stop or ())
        if len(stop) > 4:
            raise ApiError(400, f"{len(stop)} stop strings is over the limit of 4", param="stop")
        bound = engine.config.queue_limit
        if scoring["in_flight"] >= bound:
            raise _engine_error(Busy(f"the engine is busy: {scoring['in_flight']} scoring requests are in flight "
                                     f"(queue_limit={bound}); try again in a few seconds", retry_after=5))
        scoring["in_flight"] += 1
        choices, prompt_n, new_n = [], 0, 0
        try:
            for i, prompt in enumerate(prompts):
                if await request.is_disconnected():  # nobody to answer: leave the model to the others
                    return Response(status_code=499)
                s = await _engine_call(loglik.complete, engine, prompt, target.adapter, top=body.logprobs or 0,
                                       max_tokens=max_tokens, stop=stop)
                logprobs = loglik.openai_logprobs(engine.tokenizer, s, body.echo) if body.logprobs is not None \
                    else None
                choices.append({"index": i, "text": (s.prompt_text if body.echo else "") + s.text,
                                "logprobs": logprobs, "finish_reason": s.finish_reason})
                prompt_n, new_n = prompt_n + s.n_prompt, new_n + len(s.ids) - s.n_prompt
        finally:
            scoring["in_flight"] -= 1
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": body.model, "choices": choices,
                "usage": {"prompt_tokens": prompt_n, "completion_tokens": new_n, "total_tokens": prompt_n + new_n}}
