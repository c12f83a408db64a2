"""Model ids of the OpenAI-compatible API -> what the engine is asked for (adapter, retrieval, index), and
the API's error type. `app.server` serves them; see its docstring for the id grammar.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse

from app.engine import AUTO, AdapterUnavailable
from app.scheduler import Busy
from ingest.folders import is_index_name


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status, headers=exc.headers)


def _engine_error(exc: BaseException) -> ApiError:
    """The API error for an exception raised by the engine or the scoring code."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Busy):
        wait = max(1, int(round(getattr(exc, "retry_after", 1) or 1)))
        return ApiError(503, f"{message}; retry after {wait} s", "server_busy", code="busy",
                        headers={"Retry-After": str(wait)})
    if isinstance(exc, AdapterUnavailable):
        return ApiError(409, message, "invalid_request_error", "model", "adapter_unavailable")
    if isinstance(exc, FileNotFoundError):
        return ApiError(404, message, "not_found_error")
    if isinstance(exc, ValueError):
        return ApiError(400, message)
    return ApiError(500, f"internal error: {type(exc).__name__}: {message}", "server_error")


# --- model ids -----------------------------------------------------------------------------------------
def parse_model(model_id: str) -> tuple[str | None, bool, str | None]:
    """"base" / "NAME" / "NAME@vN", optionally "+rag" or "+rag:INDEX" -> (adapter or None, retrieval, index).

        parse_model("medical-pubmedqa+rag") == ("medical-pubmedqa", True, None)
        parse_model("base+rag:pubmedqa") == (None, True, "pubmedqa")
    """
    head, plus, tail = (model_id or "").strip().partition("+")
    retrieval, index = False, None
    if plus:
        kind, colon, index = tail.partition(":")
        if kind != "rag" or (colon and not index):
            raise ValueError(f"model '{model_id}' is not a model id: write MODEL, MODEL+rag or MODEL+rag:INDEX "
                             f"(see GET /v1/models)")
        retrieval, index = True, (index or None)
    if not head:
        raise ValueError(f"model '{model_id}' names no model: use 'base' or an adapter name (see GET /v1/models)")
    return (None if head == "base" else head), retrieval, index


@dataclass
class Target:
    model: str  # the id as the client wrote it
    adapter: str | None  # what the engine is asked for: "NAME" or "NAME@vN"
    key: str | None  # the backend's name of that adapter
    retrieval: bool
    index: str | None


def served_adapters(engine) -> dict[str, str]:
    """Model id -> backend key for each loaded adapter: NAME and NAME@vN for a current version, NAME@vN only
    for a pinned older one."""
    out: dict[str, str] = {}
    for key in engine.loaded_adapters():
        ref = engine.adapter_ref(key)
        if key == ref.name:
            out[ref.name] = key
        out[ref.label] = key
    return out


def _index_exists(name: str) -> bool:
    from ingest.folders import index_path

    try:
        return (index_path(name) / "manifest.json").is_file()
    except ValueError:
        return False


def available_indexes(engine) -> list[str]:
    """Indexes a request may name: those in the index store, plus the engine's default one."""
    from ingest.folders import list_indexes

    try:
        names = list(list_indexes())
    except OSError:
        names = []
    default = str(engine.config.index)
    return names + ([default] if default not in names and _index_exists(default) else [])


def _default_index(engine, key: str | None) -> str:
    settings = engine._adapters[key].settings if key and key in getattr(engine, "_adapters", {}) else {}
    return str(settings.get("index") or engine.config.index)


def list_models(engine, created: int = 0) -> list[dict]:
    """The /v1/models entries: base and each served adapter, each alone, +rag and +rag:INDEX per index."""
    indexes = available_indexes(engine)
    served = served_adapters(engine)
    entries = [("base", None, None)] + [(mid, key, engine.adapter_ref(key).label) for mid, key in served.items()
                                       if "@" not in mid or key != mid.partition("@")[0]]
    entries += [(AUTO, None, AUTO)] if served else []
    out = []
    for mid, key, label in entries:
        info = {"base_model": engine.info.name, "adapter": label}
        out.append({"id": mid, "object": "model", "created": created, "owned_by": "loracle",
                    "loracle": {**info, "retrieval": False, "index": None}})
        default = _default_index(engine, key)
        if _index_exists(default):
            out.append({"id": f"{mid}+rag", "object": "model", "created": created, "owned_by": "loracle",
                        "loracle": {**info, "retrieval": True, "index": default}})
        for ix in indexes:
            out.append({"id": f"{mid}+rag:{ix}", "object": "model", "created": created, "owned_by": "loracle",
                        "loracle": {**info, "retrieval": True, "index": ix}})
    return out


def resolve_model(engine, model_id: str, index: str | None = None) -> Target:
    """Check a model id (and an extension `index`) against what this engine serves."""
    def not_found(message: str) -> ApiError:
        return ApiError(404, message, "invalid_request_error", "model", "model_not_found")

    try:
        adapter, retrieval, in_id = parse_model(model_id)
    except ValueError as exc:
        raise not_found(str(exc)) from None
    if adapter == engine.info.name:  # the base model's own name is an alias of "base"
        adapter = None
    served = served_adapters(engine)
    if adapter == AUTO:  # routed per question by the engine; the registry's adapters load on demand
        served = {**served, AUTO: None}
    if adapter is not None and adapter not in served:
        known = ", ".join(["base", *served]) or "base"
        try:
            from app import registry

            registry.get_spec(adapter, engine.root)
            fix = f"or restart with `loracle serve --adapters {adapter}`"
        except (FileNotFoundError, ValueError):  # not in the registry either: say so, not "restart" or "train"
            fix = "the server's registry has no adapter of that name either"
        raise not_found(f"model '{model_id}': no adapter '{adapter}' is loaded on this server (serving: {known}); "
                        f"pick one from GET /v1/models, {fix}")
    if in_id and index and in_id != index:
        raise ApiError(400, f"model '{model_id}' names index '{in_id}' but the request's index is '{index}': "
                       f"give one of them", param="index")
    wanted = in_id or index
    if wanted and not retrieval:
        raise ApiError(400, f"index '{wanted}' applies only to retrieval models: use model '{model_id}+rag'",
                       param="index")
    if wanted and not is_index_name(wanted):
        raise ApiError(400, f"index '{wanted}' is not an index name: letters, digits, '.', '_' or '-' (see GET "
                       f"/v1/models for the indexes this server has)", param="model" if in_id else "index")
    if wanted and wanted not in available_indexes(engine):
        which = "model" if in_id else "index"
        raise ApiError(404, f"no index '{wanted}' on this server (indexes: "
                       f"{', '.join(available_indexes(engine)) or 'none'}); build it with `loracle ingest "
                       f"FILES --index {wanted}`", "invalid_request_error", which,
                       "model_not_found" if in_id else "index_not_found")
    key = served[adapter] if adapter else None
    return Target(model_id, adapter, key, retrieval, wanted)
