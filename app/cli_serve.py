"""`loracle serve`: the OpenAI-compatible HTTP API (app.server) over one engine, run by uvicorn."""
from __future__ import annotations

import argparse
import ipaddress
import os

from app.config import EngineConfig

API_KEY_ENV = "LORACLE_API_KEY"


def register(sub: argparse._SubParsersAction) -> None:
    from app.cliconfig import add_arguments

    p = sub.add_parser("serve", help="serve an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, "
                       "/v1/models)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only; "
                   "any other address needs an API key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' on /v1 routes (default: "
                   f"${API_KEY_ENV}; none on 127.0.0.1)")
    p.add_argument("--max-tokens-limit", type=int, default=None,
                   help="largest max_tokens a request may ask for (default 512)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body in bytes (default 1000000)")
    p.add_argument("--no-build", action="store_true", help="do not build the default index when it is missing")
    add_arguments(p, EngineConfig, unset_defaults=True)
    p.set_defaults(func=_run_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None) -> None:
    """Listening beyond this machine without a key would give anyone on the network the model: refuse."""
    if not api_key and not is_loopback(host):
        raise ValueError(f"refusing to listen on {host} without an API key: anyone who can reach it could use the "
                         f"model; pass --api-key KEY (or set {API_KEY_ENV}), or listen on 127.0.0.1")


def _run_serve(args: argparse.Namespace) -> int:
    api_key = (args.api_key or os.environ.get(API_KEY_ENV) or "").strip() or None  # a blank key is no key
    check_exposure(args.host, api_key)
    import uvicorn

    from app.cliconfig import overrides
    from app.engine import Engine
    from app.server import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS_LIMIT, make_app

    tokens_limit = DEFAULT_MAX_TOKENS_LIMIT if args.max_tokens_limit is None else args.max_tokens_limit
    body_limit = DEFAULT_MAX_BODY_BYTES if args.max_body_bytes is None else args.max_body_bytes
    if tokens_limit < 1 or body_limit < 1024:
        raise ValueError("--max-tokens-limit must be at least 1 and --max-body-bytes at least 1024")

    config = EngineConfig.from_env(**overrides(EngineConfig, args))
    if not args.no_build and config.backend == "local":
        from ingest.config import DEFAULT_INDEX
        from ingest.pipeline import ensure_default_index

        if config.index == DEFAULT_INDEX:
            print("checking the default index (built once from data/pubmedqa when missing)...", flush=True)
            ensure_default_index()
        from app.jobs import build_missing_indexes

        for job in build_missing_indexes():
            print(f"{job.title}: started in the background (the other indexes answer meanwhile)", flush=True)
    engine = Engine(config)
    for warning in engine.warnings:
        print(f"warning: {warning}", flush=True)
    app = make_app(engine, api_key=api_key, max_body_bytes=body_limit, max_tokens_limit=tokens_limit)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    adapters = ", ".join(engine.adapter_ref(k).label for k in engine.loaded_adapters()) or "none"
    print(f"Loracle API: http://{shown}:{args.port}/v1  (base model {engine.info.name}; adapters: {adapters}; "
          f"{'API key required' if api_key else 'no API key'}; Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
