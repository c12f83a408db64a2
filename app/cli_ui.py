"""`loracle ui`: build the default index when it is missing, then hand the process to Streamlit."""
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
    p.set_defaults(func=_run_ui)


def _run_ui(args: argparse.Namespace) -> int:
    from ingest.pipeline import ensure_default_index
    from ingest.safety import SafetyLimits

    if not args.no_build:
        print("checking the default index (built once from data/pubmedqa when missing)...", flush=True)
        ensure_default_index()
    env = dict(os.environ)
    if args.index:
        env["LORACLE_INDEX"] = args.index
    home = Path(__file__).resolve().parent / "ui" / "Home.py"
    upload_mb = max(1, -(-SafetyLimits.from_env().max_file_bytes // (1024 * 1024)))  # the ingest size limit, rounded up
    cmd = [sys.executable, "-m", "streamlit", "run", str(home), "--server.headless=true",
           f"--server.port={args.port}", f"--server.address={args.host}", f"--server.maxUploadSize={upload_mb}",
           "--browser.gatherUsageStats=false", "--client.toolbarMode=viewer"]
    shown = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    print(f"Loracle UI: http://{shown}:{args.port}  (Ctrl+C to stop)", flush=True)
    os.execve(sys.executable, cmd, env)  # streamlit takes over this process: signals reach it directly
    return 0
