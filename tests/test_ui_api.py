"""`loracle ui --api`: the UI and the OpenAI-compatible API in one process share one engine and one scheduler
queue. An answer asked in Chromium on the Ask page shows up in the API's /health queue counters, and an API
chat request is served by the same scheduler."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.ui_setup import CHROMIUM, CHROMIUM_ARGS, StreamlitServer, build_ui_home, sample_index_or_none, wait_idle


def _get(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def both(tiny_model_dir, tmp_path_factory, request):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); the browser test needs it")
    root = tmp_path_factory.mktemp("ui-api")
    env = build_ui_home(tiny_model_dir, root, sample_index_or_none(request))
    with StreamlitServer(env, log=root / "ui-api.log", api=True) as srv:
        yield srv.url, srv.api


def test_ui_and_api_share_one_scheduler(both):
    from openai import OpenAI
    from playwright.sync_api import sync_playwright

    ui, api = both
    served = lambda: _get(f"{api}/health")["queue"]["served"]  # noqa: E731
    before = served()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(f"{ui}/Ask")
            wait_idle(page)
            page.get_by_label("Question").fill("Is vitamin D useful for preventing falls in the elderly?")
            page.get_by_role("button", name="Ask").click()
            page.get_by_text("Passages (").wait_for(timeout=120_000)
            wait_idle(page)
        finally:
            browser.close()
    after_ui = served()
    assert after_ui == before + 1  # the UI's answer went through the API process's scheduler
    client = OpenAI(base_url=f"{api}/v1", api_key="unused")
    reply = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Is X safe?"}],
                                           max_tokens=4)
    assert reply.choices[0].message.content is not None
    assert served() == after_ui + 1
