"""Clip's page reconnects its websocket by itself (headless Chromium): the server killed mid-job
and started again on the same port and data dir, the same page, not reloaded, says it is
reconnecting, then shows the job interrupted with Resume, and the object (it said "clip
connection closed" over a stale "Tracking #1" until the person reloaded)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import test_persistence
from tests.browser import BROWSER_TEST, browser_page, click_clip, upload_clip
from tests.test_clip_media import square_center, write_clip
from tests.test_persistence import Server

pytestmark = BROWSER_TEST


@pytest.mark.slow
async def test_after_the_server_restarts_the_page_reconnects_and_shows_the_job_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.async_api import expect

    # Long enough that the job is still running when the server is killed.
    clip = write_clip(tmp_path / "long.mp4", frames=200)
    server = Server(tmp_path / "data", tmp_path / "first.log")
    try:
        async with browser_page() as page:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(server.url)
            await upload_clip(page, clip)
            await click_clip(page, *square_center(0))
            items = page.get_by_test_id("object-item")
            await expect(items).to_have_count(1, timeout=30_000)
            progress = page.get_by_test_id("progress")
            await expect(progress).to_contain_text(re.compile(r"Tracking #1 \w+: [1-9]"))
            await page.evaluate("() => { window.notReloaded = true; }")

            server.kill()
            status = page.get_by_test_id("status")
            await expect(status).to_contain_text("reconnecting (")
            monkeypatch.setattr(test_persistence, "_free_port", lambda: server.port)
            server = Server(tmp_path / "data", tmp_path / "second.log")

            # The same page, brought up to date by the new server's hello: the job the kill
            # stopped is interrupted, with Resume; the object is listed once.
            await expect(progress).to_have_attribute("data-state", "interrupted", timeout=60_000)
            await expect(progress).to_contain_text("#1: interrupted at")
            await expect(status).to_have_text("clip: long.mp4")
            await expect(items).to_have_count(1)
            assert await page.evaluate("() => window.notReloaded === true")

            # Resume goes on, its progress coming over the new connection.
            await page.get_by_test_id("resume-job").click()
            await expect(progress).to_contain_text(re.compile(r"Tracking #1 (?!queued)\w+: "))
            assert errors == []
    finally:
        server.stop()
