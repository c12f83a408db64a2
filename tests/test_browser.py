"""End to end in a real browser: `streamlit run` + Debian's Chromium driven by Playwright.

Asks one question with the adapter on and retrieval on, and checks an answer and a cited passage show; then
opens the Monitor page on a pre-filled audit log.
Skips only when /usr/bin/chromium is missing (`.ci/run` installs it with apt-get).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.ui_setup import ADAPTER, CHROMIUM, CHROMIUM_ARGS, StreamlitServer, build_ui_home, sample_index_or_none, wait_idle


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory, request):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); the browser test needs it")
    root = tmp_path_factory.mktemp("browser")
    env = build_ui_home(tiny_model_dir, root, sample_index_or_none(request))
    with StreamlitServer(env, log=root / "streamlit.log") as srv:
        yield srv


def test_ask_with_adapter_and_retrieval_in_chromium(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from app.audit import AuditLog
    from app.types import Answer

    log = AuditLog(server.env["LORACLE_AUDIT"])  # what the Monitor page shows
    for i, mode in enumerate(("base", "lora", "lora+rag")):
        log.record(Answer("Yes.", mode, None if mode == "base" else f"{ADAPTER}@v1", question=f"q{i}?"), "ui", 1.0 + i,
                   route={"adapter": None if i == 0 else ADAPTER, "score": 0.2 + i / 10})
    log.event("disable", ADAPTER, "tester", "flagged for the browser test")
    log.close()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(f"{server.url}/Ask")
            wait_idle(page)
            adapter = page.get_by_role("combobox", name="Adapter")  # adapter on: the default is preselected
            expect(adapter).to_match_aria_snapshot(f'- combobox "Adapter": {ADAPTER}')
            expect(page.get_by_label("Retrieval", exact=True)).to_be_checked()
            page.get_by_label("Question").fill("Is vitamin D useful for preventing falls in the elderly?")
            page.get_by_role("button", name="Ask").click()
            page.get_by_text("Passages (").wait_for(timeout=120_000)
            wait_idle(page)
            expect(page.get_by_text("mode lora+rag")).to_be_visible()
            expect(page.get_by_test_id("stChatMessage").first).not_to_be_empty()
            passages = page.get_by_test_id("stExpander")
            assert passages.count() >= 1
            first = passages.first
            expect(first).to_contain_text("[1]")
            expect(first).to_contain_text("score")
            first.click()
            expect(first.get_by_test_id("stCode")).to_be_visible()  # the full chunk, as plain text
            shot = tmp_path / "ask.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            page.goto(f"{server.url}/Monitor")  # the audit log, pre-filled above
            wait_idle(page)
            expect(page.get_by_test_id("stMetric").first).to_contain_text("Answers")
            expect(page.get_by_text("flagged for the browser test")).to_be_attached()  # events table (a canvas grid)
            expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible()  # volume over time
            expect(page.get_by_role("button", name="Answers (CSV)")).to_be_visible()
            shot = tmp_path / "monitor.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
