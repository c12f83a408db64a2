"""`loracle ui`: build the default index when it is missing, then hand the process to Streamlit.

With `--api`, the same process also serves the OpenAI-compatible API (app.server) on another port, and
the UI and the API share ONE engine and so one scheduler queue: one copy of the model in memory, and
UI users and API clients are batched together and bounded by the same queue limit.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app.config import DEFAULT_INDEX


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="start the web UI (Streamlit) and print its local URL")
    p.add_argument("--port", type=int, default=8501, help="port to listen on (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 exposes it to the "
                   "network)")
    p.add_argument("--index", default=None, help=f"index preselected for retrieval (default: {DEFAULT_INDEX})")
    p.add_argument("--no-build", action="store_true", help="do not build the default index when it is missing")
    p.add_argument("--api", action="store_true", help="also serve the OpenAI-compatible API from this process, "
                   "sharing the UI's engine and queue (see `loracle serve`)")
    p.add_argument("--api-port", type=int, default=8000, help="API port with --api (default 8000)")
    p.add_argument("--api-host", default="127.0.0.1", help="API address with --api (default 127.0.0.1; any other "
                   "needs an API key)")
    p.add_argument("--api-key", default=None, help="API key with --api (default: $LORACLE_API_KEY)")
    p.set_defaults(func=_run_ui)


BUILD_ENV = "LORACLE_BUILD_INDEXES"


def _run_ui(args: argparse.Namespace) -> int:
    from ingest.pipeline import ensure_default_index
    from ingest.safety import SafetyLimits

    if not args.no_build:
        print("checking the default index (built once from data/pubmedqa when missing)...", flush=True)
        ensure_default_index()
    env = dict(os.environ)
    if not args.no_build:
        env[BUILD_ENV] = "1"  # the UI process builds the other shipped indexes in the background
    if args.index:
        env["LORACLE_INDEX"] = args.index
    home = Path(__file__).resolve().parent / "ui" / "Home.py"
    upload_mb = max(1, -(-SafetyLimits.from_env().max_file_bytes // (1024 * 1024)))  # the ingest size limit, rounded up
    cmd = [sys.executable, "-m", "streamlit", "run", str(home), "--server.headless=true",
           f"--server.port={args.port}", f"--server.address={args.host}", f"--server.maxUploadSize={upload_mb}",
           "--browser.gatherUsageStats=false", "--client.toolbarMode=viewer"]
    shown = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    print(f"Loracle UI: http://{shown}:{args.port}  (Ctrl+C to stop)", flush=True)
    if not args.api:
        os.execve(sys.executable, cmd, env)  # streamlit takes over this process: signals reach it directly
    os.environ.update(env)
    _start_api(args)
    from streamlit.web import cli as streamlit_cli

    sys.argv = ["streamlit", *cmd[3:]]  # streamlit's own CLI, in this process: it parses and types the flags
    return streamlit_cli.main()


def _start_api(args: argparse.Namespace) -> None:
    """Load the engine now, share it with the UI pages (app.engine.share) and serve the API from a thread."""
    import threading

    import uvicorn

    from app.cli_serve import API_KEY_ENV, check_exposure
    from app.config import EngineConfig
    from app.engine import Engine, share
    from app.server import make_app

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    check_exposure(args.api_host, api_key)
    engine = share(Engine(EngineConfig.from_env()))
    server = uvicorn.Server(uvicorn.Config(make_app(engine, api_key=api_key), host=args.api_host,
                                           port=args.api_port, log_level="warning"))
    threading.Thread(target=server.run, name="loracle-api", daemon=True).start()
    print(f"Loracle API: http://{args.api_host}:{args.api_port}/v1  (same engine and queue as the UI)", flush=True)
