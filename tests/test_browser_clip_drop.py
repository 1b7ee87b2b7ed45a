"""Clip mode before any clip, in headless Chromium: the status says what to do, no empty progress
bar shows, and a file dropped on the stage is uploaded as the Upload clip button would (a
picture refused with the upload's own reason, a video opened)."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamer.app import create_app
from streamer.settings import Settings
from tests.browser import BROWSER_TEST, browser_page, square_png
from tests.conftest import ServerThread
from tests.test_clip_media import write_clip

pytestmark = BROWSER_TEST

# Page JS: drop a file (its bytes in base64) on the stage, as a person dragging it from the desktop.
DROP_ON_STAGE = """([b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type }));
  const stage = document.querySelector('[data-testid=stage]');
  for (const kind of ['dragenter', 'dragover', 'drop'])
    stage.dispatchEvent(new DragEvent(kind, { dataTransfer: data, bubbles: true, cancelable: true }));
}"""


async def drop_on_stage(page: Any, path: Path, mime: str) -> None:
    await page.evaluate(
        DROP_ON_STAGE, [base64.b64encode(path.read_bytes()).decode(), path.name, mime]
    )


@contextlib.asynccontextmanager
async def served_page(tmp_path: Path, init_script: str | None = None) -> AsyncIterator[Any]:
    """The page of a service with random weights and no VLM, opened (after `init_script`);
    yields (page, its script errors)."""
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    app = create_app(settings, reasoner=None, load_vision=False)
    with ServerThread(app) as server:
        async with browser_page() as page:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            if init_script:
                await page.add_init_script(init_script)
            await page.goto(server.base_url)
            yield page, errors


# Page JS: the line the empty stage shows (its ::after), or "none".
STAGE_LINE = "() => getComputedStyle(document.querySelector('#stage'), '::after').content"


async def test_empty_clip_mode_guides_and_takes_a_dropped_file(tmp_path: Path) -> None:
    from playwright.async_api import expect

    clip_path = write_clip(tmp_path / "moving.mp4", frames=20)
    png = square_png(tmp_path)
    async with served_page(tmp_path) as (page, errors):
        status, progress = page.get_by_test_id("status"), page.get_by_test_id("progress")
        # Live (the first tab) has settled: this browser has no camera to give it.
        await expect(status).to_have_text("no camera")
        # The black stage says why too, the error dismissed (it said nothing).
        await page.get_by_test_id("error-dismiss").click()
        assert "could not open the camera" in await page.evaluate(STAGE_LINE)
        await page.get_by_test_id("mode-clip").click()
        error = page.get_by_test_id("error")
        # Before any clip: what to do, as Image says it; no empty bordered bar.
        await expect(status).to_have_text("no clip: upload or drop one")
        assert "Upload a clip" in await page.evaluate(STAGE_LINE)
        await expect(progress).to_be_hidden()
        await page.screenshot(path=str(tmp_path / "clip-empty.png"))

        # A picture dropped on the stage is refused with the upload's own reason.
        await drop_on_stage(page, png, "image/png")
        await expect(error).to_contain_text("still image")
        await expect(error).to_contain_text("pictures go in the page's Image mode")
        await expect(status).to_have_text("no clip: upload or drop one")

        # A video dropped on the stage opens as an uploaded one does.
        await drop_on_stage(page, clip_path, "video/mp4")
        await page.wait_for_function(
            "() => document.querySelector('#clip-video').readyState >= 2", timeout=30_000
        )
        await expect(error).to_be_hidden()
        await expect(status).to_have_text("clip: moving.mp4")
        await expect(progress).to_be_visible()
        await expect(progress).to_contain_text("20 frames · 160x120")
        await expect(page.get_by_test_id("frame-label")).to_contain_text("frame 0 / 19")
        await page.screenshot(path=str(tmp_path / "clip-dropped.png"))
        assert errors == []
    print("screenshots:", tmp_path / "clip-empty.png", tmp_path / "clip-dropped.png")


# Page JS: drop a file on the element `selector`: whether the page kept the browser from opening
# it in the page's place (the drop's default), and whether the Clip stage took it.
DROP_ON = """(selector) => {
  const data = new DataTransfer();
  data.items.add(new File([new Uint8Array(8)], 'a.mp4', { type: 'video/mp4' }));
  const target = document.querySelector(selector);
  const drop = new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true });
  target.dispatchEvent(new DragEvent('dragover', { dataTransfer: data, bubbles: true, cancelable: true }));
  target.dispatchEvent(drop);
  return drop.defaultPrevented;
}"""


async def test_a_file_dropped_beside_the_stage_or_in_live_leaves_the_page_as_it_was(
    tmp_path: Path,
) -> None:
    """Dropped on the object list, or on Live's stage: the browser does not open the file in the
    page's place (a live session and everything on the page would go), and nothing uploads."""
    from playwright.async_api import expect

    async with served_page(tmp_path) as (page, errors):
        status = page.get_by_test_id("status")
        await expect(status).to_have_text("no camera")
        assert await page.evaluate(DROP_ON, "[data-testid=stage]")  # Live takes no files
        await page.get_by_test_id("mode-clip").click()
        assert await page.evaluate(DROP_ON, "#objects")
        assert await page.evaluate(DROP_ON, "body")
        await expect(status).to_have_text("no clip: upload or drop one")
        assert errors == []


async def test_a_camera_refusal_after_live_was_left_stays_out_of_the_other_mode(
    tmp_path: Path,
) -> None:
    """The browser answers Live's camera request late (a person reading the permission prompt)
    and says no, after the person has gone to Clip: Clip's status and error panel are not Live's."""
    from playwright.async_api import expect

    refuse_late = """(() => {
      window.__refuseCamera = null;
      navigator.mediaDevices.getUserMedia = () => new Promise((_, reject) => {
        window.__refuseCamera = () => reject(new DOMException('denied', 'NotAllowedError'));
      });
    })()"""
    async with served_page(tmp_path, refuse_late) as (page, errors):
        await page.wait_for_function("() => window.__refuseCamera !== null")  # Live asked
        await page.get_by_test_id("mode-clip").click()
        status = page.get_by_test_id("status")
        await expect(status).to_have_text("no clip: upload or drop one")
        await page.evaluate("() => window.__refuseCamera()")  # the late "no"
        await page.evaluate("() => new Promise((done) => setTimeout(done, 300))")
        await expect(status).to_have_text("no clip: upload or drop one")
        await expect(page.get_by_test_id("error")).to_be_hidden()
        assert errors == []


# Page JS: the clip video's picture size (0 x 0 when the stage shows no clip) and the stage's
# empty-stage line.
STAGE_NOW = """() => {
  const v = document.querySelector('#clip-video');
  const line = getComputedStyle(document.querySelector('#stage'), '::after').content;
  return [v.videoWidth, v.videoHeight, line];
}"""


async def test_the_stage_never_shows_a_clip_that_is_not_the_open_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deleted clip's last frame leaves the stage, and a clip whose browser copy is still being
    made does not sit on the last clip's picture (clicks there would be on another clip's frame):
    the stage says which of the two it is."""
    import asyncio

    from playwright.async_api import expect

    import streamer.clip.routes as clip_routes

    async def slow_copy(clip: Any, slots: Any) -> None:
        await asyncio.Event().wait()  # the browser copy of a codec browsers cannot play: long

    monkeypatch.setattr(clip_routes, "make_proxy", slow_copy)
    mp4 = write_clip(tmp_path / "moving.mp4", frames=20)
    avi = write_clip(tmp_path / "old.avi", frames=20, codec="mjpeg")
    shown = "() => document.querySelector('#clip-video').readyState >= 2"
    async with served_page(tmp_path) as (page, errors):
        await page.get_by_test_id("mode-clip").click()
        await drop_on_stage(page, mp4, "video/mp4")
        await page.wait_for_function(shown, timeout=30_000)

        # Deleted from the library while open: its picture goes, the stage says what to do.
        page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await page.get_by_test_id("library-delete").first.click()
        await expect(page.get_by_test_id("frame-label")).to_have_text("no clip")
        width, height, line = await page.evaluate(STAGE_NOW)
        assert (width, height) == (0, 0) and "Upload a clip" in line
        for nothing_to_move in ("clip-play", "scrubber"):  # no "Pause" over an empty stage
            await expect(page.get_by_test_id(nothing_to_move)).to_be_disabled()

        # Opened again, then a clip that needs a browser copy: not the first one's picture.
        await drop_on_stage(page, mp4, "video/mp4")
        await page.wait_for_function(shown, timeout=30_000)
        await drop_on_stage(page, avi, "video/x-msvideo")
        await expect(page.get_by_test_id("status")).to_have_text("clip: old.avi")
        width, height, line = await page.evaluate(STAGE_NOW)
        assert (width, height) == (0, 0) and "No picture yet" in line
        await page.screenshot(path=str(tmp_path / "clip-converting.png"))
        assert errors == []
    print("screenshot:", tmp_path / "clip-converting.png")
