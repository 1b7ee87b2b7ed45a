"""Clip in headless Chromium when the answer that shows a clip comes late: a clip opened from the
library whose answer is held until another clip has been opened after it does not replace that
one, and an upload that ends while another mode is shown leaves that mode's objects alone."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from streamer.app import create_app
from streamer.settings import Settings
from tests.browser import (
    BROWSER_TEST,
    HANDLED,
    IMAGE_TO_PAGE,
    handled,
    held_post,
    held_route,
    reached,
    served_page,
    square_png,
)
from tests.test_clip_media import write_clip

pytestmark = BROWSER_TEST


async def test_a_clip_opened_late_does_not_replace_the_clip_opened_after_it(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    async with served_page(app, "clip") as (page, errors):
        await page.evaluate(HANDLED)
        video = page.locator("#clip-video")
        status = page.get_by_test_id("status")
        ids = []
        for name in ("first.mp4", "second.mp4"):
            await page.get_by_test_id("upload-input").set_input_files(
                str(write_clip(tmp_path / name, frames=10))
            )
            await expect(status).to_contain_text(f"clip: {name}", timeout=60_000)
            ids.append(await video.get_attribute("data-clip-id"))
        first, second = ids
        library = page.locator("[data-testid=library][data-for=clip]")
        await expect(library.get_by_test_id("library-item")).to_have_count(2, timeout=30_000)

        def row(clip_id: str | None) -> Any:
            return library.locator(f"[data-testid=library-item][data-id='{clip_id}']")

        # Open the first clip (its answer held), then the second: the first's answer, late,
        # does not replace the second (it used to: the first clip's picture and objects).
        release, held = asyncio.Event(), asyncio.Event()
        await page.route(f"**/api/clips/{first}", held_route(release, held))
        await row(first).get_by_test_id("library-open").click()
        await asyncio.wait_for(held.wait(), 30)
        await row(second).get_by_test_id("library-open").click()
        await page.wait_for_function(handled(f"/api/clips/{second}", held=False))
        release.set()
        await page.wait_for_function(handled(f"/api/clips/{first}"))
        await expect(video).to_have_attribute("data-clip-id", second or "")
        await expect(status).to_contain_text("clip: second.mp4")
        assert not errors, errors


async def test_a_clip_upload_that_ends_while_image_is_shown_leaves_the_images_objects(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """A clip uploads (its request held) while the person goes on in Image and clicks an object
    there: when the upload ends, Image's object list and status stay (the clip's load used to
    empty the list and connect the clip over them), and the clip shows once Clip is open again."""
    from playwright.async_api import expect

    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    async with served_page(app, "clip") as (page, errors):
        await page.evaluate(HANDLED)
        release, held = asyncio.Event(), asyncio.Event()
        await page.route("**/api/clips", held_post(release, held))
        clip_path = write_clip(tmp_path / "late.mp4", frames=10)
        await page.get_by_test_id("upload-input").set_input_files(str(clip_path))
        await reached(held, page, "the upload's POST /api/clips")

        await page.get_by_test_id("mode-image").click()
        await page.get_by_test_id("image-input").set_input_files(str(square_png(tmp_path)))
        await expect(page.get_by_test_id("image-info")).to_contain_text(
            "encoded in", timeout=60_000
        )
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        item = page.get_by_test_id("object-item")
        await expect(item).to_have_count(1, timeout=60_000)
        status = page.get_by_test_id("status")
        await expect(status).to_contain_text("image:")
        release.set()
        # Listed once the page has taken the upload's answer in (the library asks after it).
        clips = page.locator("[data-testid=library][data-for=clip] [data-testid=library-item]")
        await expect(clips).to_have_count(1, timeout=30_000)
        await expect(item).to_have_count(1)
        await expect(status).to_contain_text("image:")

        await page.get_by_test_id("mode-clip").click()
        await expect(status).to_contain_text("clip: late.mp4", timeout=30_000)
        await expect(page.locator("#clip-video")).to_have_attribute("data-clip-id", re.compile("."))
        await expect(item).to_have_count(0)  # the clip's objects: none yet
        assert not errors, errors
