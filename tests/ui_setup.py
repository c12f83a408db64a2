"""The tiny setup the UI tests and the browser test run on: tiny model, real tiny adapter, real small index."""
from __future__ import annotations

import shutil
from pathlib import Path

ADAPTER = "medical-pubmedqa"
INDEX = "sample"


def build_ui_home(tiny_model_dir: Path, target: Path, sample_index: Path | None = None) -> dict[str, str]:
    """Build <target>/{base,adapters,indexes,home}; return the environment variables pointing at them.

    `sample_index` (the ingestion fixture) is copied, never modified; without it the index is built here
    from the shared sample documents."""
    from app import registry
    from tests.conftest import SHARED_DATA
    from tests.tiny_adapter import card_for, make_adapter, untie_base

    base = untie_base(tiny_model_dir, target / "base")  # untied head: the tiny model says more than newlines
    adapters = target / "adapters"
    registry.install(make_adapter(base, target / "staging"), ADAPTER, card_for(base), adapters)
    indexes = target / "indexes"
    indexes.mkdir()
    if sample_index is not None:
        shutil.copytree(sample_index, indexes / INDEX)
    else:
        from ingest.pipeline import ingest_paths

        ingest_paths([SHARED_DATA / "sample" / "docs"], index=str(indexes / INDEX))
    home = target / "home"
    home.mkdir()
    return {
        "LORACLE_BASE_MODEL": str(base),
        "LORACLE_ADAPTERS": str(adapters),
        "LORACLE_INDEXES": str(indexes),
        "LORACLE_INDEX": INDEX,
        "LORACLE_HOME": str(home),
        "LORACLE_AUDIT": str(home / "audit" / "audit.sqlite"),
        "LORACLE_MAX_NEW_TOKENS": "8",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def sample_index_or_none(request) -> Path | None:
    import pytest

    try:
        return Path(request.getfixturevalue("sample_index"))
    except pytest.FixtureLookupError:
        return None


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StreamlitServer:
    """`streamlit run app/ui/Home.py` in a subprocess on a free port; a context manager. With `api=True` it is
    `loracle ui --api` instead: the UI plus the OpenAI-compatible API (at `self.api`) in one process."""

    def __init__(self, env: dict[str, str], port: int | None = None, log: Path | None = None, api: bool = False):
        self.env, self.port, self.log = env, port or free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"http://127.0.0.1:{free_port()}" if api else None

    def __enter__(self) -> "StreamlitServer":
        import os
        import subprocess
        import sys
        import time
        import urllib.request

        home = Path(__file__).resolve().parents[1] / "app" / "ui" / "Home.py"
        self._out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        if self.api:
            cmd = [sys.executable, "-m", "app.cli", "ui", "--no-build", "--port", str(self.port), "--api",
                   "--api-port", self.api.rsplit(":", 1)[1]]
        else:
            cmd = [sys.executable, "-m", "streamlit", "run", str(home), "--server.headless=true",
                   f"--server.port={self.port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false",
                   "--server.fileWatcherType=none", "--client.toolbarMode=viewer"]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=self._out, stderr=subprocess.STDOUT)
        health = [f"{self.url}/_stcore/health"] + ([f"{self.api}/health"] if self.api else [])
        wait_s = 120 if self.api else 90
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {self.proc.returncode}; see {self.log}")
            try:
                for url in health:
                    with urllib.request.urlopen(url, timeout=2):
                        pass
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise TimeoutError(f"{' and '.join(health)} did not answer within {wait_s} s; see {self.log}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        if self.log:
            self._out.close()


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until the Streamlit script run has finished (no 'running' status widget)."""
    running = page.get_by_test_id("stStatusWidgetRunningIcon")
    try:
        running.wait_for(state="attached", timeout=2000)
    except Exception:  # noqa: BLE001 - the run may already be over
        pass
    running.wait_for(state="detached", timeout=timeout_ms)
    page.wait_for_timeout(300)


def screenshot_pages(url: str, out_dir: Path, question: str, eval_upload: Path | None = None,
                     eval_questions: int = 2) -> list[Path]:
    """Drive every page in Chromium and save docs-style PNGs (used for docs/ui-*.png)."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # Streamlit scrolls inside its main container, so a tall viewport is what captures a whole page
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        page.goto(f"{url}/Ask")
        wait_idle(page)
        page.get_by_label("Question").fill(question)
        page.get_by_role("button", name="Ask").click()
        page.get_by_text("Passages (").wait_for(timeout=300_000)
        wait_idle(page)
        page.locator('[data-testid="stExpander"]').first.click()
        page.wait_for_timeout(500)
        shots.append(out_dir / "ui-ask.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

        page.goto(f"{url}/Compare")
        wait_idle(page)
        page.get_by_label("Question").fill(question)
        page.get_by_role("button", name="Compare").click()
        page.get_by_text("Save comparison (JSON)").wait_for(timeout=600_000)
        wait_idle(page)
        shots.append(out_dir / "ui-compare.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

        for name, stem in (("Documents", "ui-documents"), ("Adapters", "ui-adapters")):
            page.goto(f"{url}/{name}")
            wait_idle(page)
            page.wait_for_timeout(1500)
            shots.append(out_dir / f"{stem}.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

        page.goto(f"{url}/Evaluate")
        wait_idle(page)
        if eval_upload is not None:
            page.get_by_text("Upload JSONL").click()
            page.locator('input[type="file"]').set_input_files(str(eval_upload))
        limit = page.get_by_label("Questions (0 = all)")
        limit.fill(str(eval_questions))
        limit.press("Tab")
        page.get_by_role("button", name="Run evaluation").click()
        page.get_by_text("Results per mode").wait_for(timeout=600_000)
        wait_idle(page)
        page.wait_for_timeout(1500)
        shots.append(out_dir / "ui-evaluate.png")
        page.screenshot(path=str(shots[-1]), full_page=True)
        browser.close()
    return shots


if __name__ == "__main__":
    # python -m tests.ui_setup docs/  : PNGs of every page on the shipped defaults (real model, index, adapter)
    import sys

    with StreamlitServer({}, log=Path("/tmp/loracle-screenshots.log")) as srv:
        for shot in screenshot_pages(srv.url, Path(sys.argv[1] if len(sys.argv) > 1 else "docs"),
                                     "Do statins reduce the risk of dementia in elderly patients?"):
            print(shot)
