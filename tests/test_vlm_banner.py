"""A configured VLM that does not answer (down, or a vLLM server still loading) is said up front.

`GET /api/vlm` is what the page polls: down with what is wrong and what to do while nothing
answers at --vlm-url, up once a server does. The page shows the note as a banner and drops it by
itself when the VLM comes up, no reload. The VLM itself is asked at most every few seconds however
often the route is polled.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from streamer.app import create_app
from streamer.settings import Settings
from tests.browser import browser_page, needs_chromium
from tests.conftest import ServerThread
from tests.fakes.openai_server import ScriptedVLMServer, free_port
from workers.reasoning.families import DEFAULT_VLM_MODEL


def test_the_page_learns_the_vlm_is_down_and_then_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fmu.services")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    app = create_app(Settings(data_dir=tmp_path, vlm_url=url), load_vision=False)
    app.state.services.vlm_health_every_s = 0  # ask the VLM on every poll here
    with TestClient(app) as client:
        down = client.get("/api/vlm").json()
        assert down["configured"] is True and down["reachable"] is False
        assert url in down["note"] and "does not answer" in down["note"]
        assert "will work once it does" in down["note"]  # what to expect
        assert "vllm serve" in down["note"]  # and what to do
        assert "ConnectError" in down["detail"]  # and why, in the check's own words
        with ScriptedVLMServer(answer="a red cup", model=DEFAULT_VLM_MODEL, port=port):
            up = client.get("/api/vlm").json()
            family = client.get("/readyz").json()["vlm"]["family"]
        assert up["configured"] is True and up["reachable"] is True and up["note"] is None
        assert family == "qwen2.5-vl"  # what descriptions need is learnt once it answers
        assert client.get("/api/vlm").json()["reachable"] is False  # stopped again
        client.get("/api/vlm")
    # The server log says each change once (the page's polls find it), not each poll.
    changes = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "fmu.services"]
    assert changes[0] == ("INFO", f"the VLM at {url} answers again")
    assert changes[1][0] == "WARNING"
    assert changes[1][1].startswith(f"the VLM stopped answering: no VLM server at {url}: ")
    assert len(changes) == 2, changes


def test_no_vlm_configured_is_not_a_vlm_that_is_down(tmp_path: Path) -> None:
    # Descriptions off is said by /api/capabilities and the panel's notice, never as a banner.
    app = create_app(Settings(data_dir=tmp_path), load_vision=False)
    with TestClient(app) as client:
        off = client.get("/api/vlm").json()
        assert off["configured"] is False and off["note"] is None


def test_the_vlm_is_asked_once_however_many_pages_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    app = create_app(Settings(data_dir=tmp_path, vlm_url=url), load_vision=False)
    services = app.state.services
    backend = services.reasoner.backend
    asked: list[int] = []
    real_health = backend.health

    async def counted_health() -> dict[str, Any]:
        asked.append(1)
        return await real_health()

    monkeypatch.setattr(backend, "health", counted_health)

    async def many_pages() -> list[dict[str, Any]]:
        together = await asyncio.gather(*(services.vlm_health() for _ in range(20)))
        one_after_another = [await services.vlm_health() for _ in range(20)]
        return [*together, *one_after_another]

    answers = asyncio.run(many_pages())
    assert len(asked) == 1
    assert all(a["reachable"] is False and url in a["detail"] for a in answers)


@pytest.mark.browser
@pytest.mark.timeout(120)
@needs_chromium
async def test_the_banner_shows_while_the_vlm_is_down_and_goes_when_it_answers(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"  # nothing listens there yet
    app = create_app(
        Settings(data_dir=tmp_path / "data", vlm_url=url, vlm_model=DEFAULT_VLM_MODEL),
        vision_model=sam2_tiny_128,
        load_vision=False,
    )
    errors: list[Exception] = []
    with ServerThread(app) as server:
        async with browser_page() as page:
            page.on("pageerror", lambda e: errors.append(e))
            banner = page.get_by_test_id("vlm-banner")
            await page.goto(server.base_url)
            await expect(banner).to_be_visible()
            await expect(banner).to_contain_text(f"127.0.0.1:{port}")
            await expect(banner).to_contain_text("does not answer")
            await expect(page.get_by_test_id("weights-banner")).to_be_hidden()
            await expect(page.get_by_test_id("vlm-notice")).to_be_hidden()  # descriptions are on
            # What needs the VLM cannot be tried while it is down: disabled, the banner's reason
            # as the tooltip (not a click that fails afterwards).
            needs_vlm = ["find-input", "find-submit", "find-all", "chat-input", "chat-submit"]
            for testid in needs_vlm:
                control = page.get_by_test_id(testid)
                await expect(control).to_be_disabled()
                await expect(control).to_have_attribute("title", re.compile("does not answer"))
            await page.screenshot(path=str(tmp_path / "vlm-banner.png"))
            # Up, but serving another model than the one configured: every request would fail.
            with ScriptedVLMServer(answer="a red cup", model="another/model", port=port):
                await expect(banner).to_contain_text("cannot serve", timeout=20_000)
                for testid in needs_vlm:
                    control = page.get_by_test_id(testid)
                    await expect(control).to_be_disabled()
                    await expect(control).to_have_attribute("title", re.compile("cannot serve"))
            with ScriptedVLMServer(answer="a red cup", model=DEFAULT_VLM_MODEL, port=port):
                await expect(banner).to_be_hidden(timeout=20_000)  # the page polls, no reload
                for testid in needs_vlm:
                    await expect(page.get_by_test_id(testid)).to_be_enabled()
                # each control's own tooltip is back
                await expect(page.get_by_test_id("find-all")).to_have_attribute(
                    "title", "Find every instance of the phrase and count them"
                )
                await expect(page.get_by_test_id("find-submit")).not_to_have_attribute(
                    "title", re.compile(".")
                )
            assert errors == []
