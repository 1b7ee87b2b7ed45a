"""A clip whose browser copy failed says so in Chromium, whether the page was connected when it
failed (the websocket's `proxy` message) or opens the clip afterwards (the clip's info): not
"a copy is being made" for good. The bar, the stage's line, a click on the stage and Play's
tooltip say it in one wording."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from streamer.clip import exports
from tests.browser import BROWSER_TEST
from tests.test_browser_clip_drop import served_page
from tests.test_clip_media import write_clip

pytestmark = BROWSER_TEST

# The first sentence of what the page says of a clip with no picture (Play's tooltip).
NO_PICTURE_YET = "No picture yet: a copy of this clip that the browser can play is being made"
NO_PICTURE = "No picture: the browser cannot play this clip's codec and converting it failed"
# Page JS: the stage's line (its ::after) and the clip bar's text.
STAGE_AND_BAR = """() => [
  getComputedStyle(document.getElementById('stage'), '::after').content,
  document.querySelector('[data-testid=progress] .text').textContent,
]"""

# Page JS: the one clip's browser copy state, as the server tells a page that opens it.
PROXY_NOW = """async () => {
  const { clips } = await (await fetch('/api/clips')).json();
  return (await (await fetch(`/api/clips/${clips[0].id}`)).json()).proxy;
}"""


async def no_playing(page: Any, why: str) -> None:
    """Play and the scrubber are disabled, saying why: with no picture, Play said "Pause" over a
    still stage and the scrubber moved to no frame."""
    from playwright.async_api import expect

    for testid in ("clip-play", "scrubber"):
        control = page.get_by_test_id(testid)
        await expect(control).to_be_disabled()
        await expect(control).to_have_attribute("title", re.compile(re.escape(why)))


async def test_a_clip_plays_once_its_browser_copy_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.async_api import expect

    real_copy = exports.render_overlay_video
    turn = threading.Event()  # the browser copy is made once the test lets it

    def held_copy(*args: Any, **kwargs: Any) -> Any:
        assert turn.wait(60)
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(exports, "render_overlay_video", held_copy)
    avi = write_clip(tmp_path / "old.avi", frames=10, codec="mjpeg")
    async with served_page(tmp_path) as (page, errors):
        await page.get_by_test_id("mode-clip").click()
        await page.get_by_test_id("upload-input").set_input_files(str(avi))
        await expect(page.get_by_test_id("progress")).to_contain_text(NO_PICTURE_YET)
        await no_playing(page, NO_PICTURE_YET)
        turn.set()
        play = page.get_by_test_id("clip-play")
        await expect(play).to_be_enabled(timeout=60_000)
        await expect(page.get_by_test_id("scrubber")).to_be_enabled()
        await expect(play).not_to_have_attribute("title", re.compile("."))
        await page.wait_for_function("() => document.querySelector('#clip-video').readyState >= 2")
        await play.click()
        await expect(play).to_have_text("Pause")
        assert errors == []


async def test_a_failed_browser_copy_is_shown_when_the_clip_is_opened_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from playwright.async_api import expect

    turns = threading.Semaphore(0)  # each browser copy fails once the test lets it

    def failing_copy(*args: Any, **kwargs: Any) -> None:
        assert turns.acquire(timeout=60)
        raise RuntimeError("the encoder gave up")

    monkeypatch.setattr(exports, "render_overlay_video", failing_copy)
    first = write_clip(tmp_path / "old.avi", frames=10, codec="mjpeg")
    second = write_clip(tmp_path / "older.avi", frames=10, codec="mjpeg")
    async with served_page(tmp_path) as (page, errors):
        await page.get_by_test_id("mode-clip").click()
        progress = page.get_by_test_id("progress")

        # The copy fails while no page has the clip open...
        await page.get_by_test_id("upload-input").set_input_files(str(first))
        await expect(page.get_by_test_id("status")).to_have_text("clip: old.avi")
        await expect(progress).to_contain_text(NO_PICTURE_YET)
        await page.goto(page.url.split("#")[0])  # a page on no clip (a reload reopens it)
        turns.release()
        while await page.evaluate(PROXY_NOW) != "failed":
            await asyncio.sleep(0.05)

        # ...and the page that opens it afterwards says so, and what still works.
        await page.get_by_test_id("mode-clip").click()
        await page.get_by_test_id("library-open").first.click()
        await expect(page.get_by_test_id("status")).to_have_text("clip: old.avi")
        await expect(progress).to_contain_text(NO_PICTURE)
        await expect(progress).to_contain_text("describe")
        await expect(progress).to_have_attribute("data-state", "failed")
        await no_playing(page, NO_PICTURE)
        # The stage says what the bar says after the clip's figures, word for word (CSS quotes it).
        stage, bar = await page.evaluate(STAGE_AND_BAR)
        note = bar.split(" · ")[-1]
        assert note.startswith(NO_PICTURE) and "describe" in note
        assert stage == json.dumps(note)
        # A click on the stage has no picture to land on: it says so, not nothing.
        await page.get_by_test_id("stage").click()
        await expect(page.get_by_test_id("error")).to_contain_text(note)
        await page.screenshot(path=str(tmp_path / "clip-copy-failed.png"))

        # A page connected when the copy fails hears why, at once.
        await page.get_by_test_id("upload-input").set_input_files(str(second))
        await expect(page.get_by_test_id("status")).to_have_text("clip: older.avi")
        await expect(progress).to_contain_text(NO_PICTURE_YET)
        await no_playing(page, NO_PICTURE_YET)
        stage, bar = await page.evaluate(STAGE_AND_BAR)
        assert stage.startswith(json.dumps(bar.split(" · ")[-1])[:-1])  # and what works already
        turns.release()
        await expect(page.get_by_test_id("error")).to_contain_text("the encoder gave up")
        await expect(progress).to_contain_text(NO_PICTURE)
        await no_playing(page, NO_PICTURE)
        assert errors == []
    print("screenshot:", tmp_path / "clip-copy-failed.png")
