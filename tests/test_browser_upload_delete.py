"""Deleting the item on the stage while an upload is on its way (headless Chromium, Clip and
Image): the upload still shows when it is done. The delete used to void every answer on its way,
the upload's too: Image said "uploading…" for good and refused every click, Clip never showed it.

The upload is held before the server has it (tests/browser.py held_post), the shown item is
deleted from the library, then the upload is let go.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from streamer.app import create_app
from streamer.settings import Settings
from tests.browser import BROWSER_TEST, held_post, reached, served_page, square_png
from tests.test_clip_media import write_clip

pytestmark = BROWSER_TEST

# mode: (the picker's test id, the collection, the element that names the shown item, its attribute)
MODES = {
    "image": ("image-input", "images", "#image-canvas", "data-image-id"),
    "clip": ("upload-input", "clips", "#clip-video", "data-clip-id"),
}


@pytest.mark.parametrize("mode", list(MODES))
async def test_an_upload_on_its_way_shows_though_the_shown_item_was_deleted(
    mode: str, sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    picker, collection, shown, attribute = MODES[mode]
    media = square_png(tmp_path) if mode == "image" else write_clip(tmp_path / "a.mp4", frames=12)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    async with served_page(app, mode) as (page, errors):
        items = page.locator(f"[data-testid=library][data-for={mode}]").get_by_test_id(
            "library-item"
        )
        stage = page.locator(shown)
        await page.get_by_test_id(picker).set_input_files(str(media))
        await expect(items).to_have_count(1, timeout=60_000)
        first = await items.nth(0).get_attribute("data-id")
        await expect(stage).to_have_attribute(attribute, str(first), timeout=60_000)

        release, held = asyncio.Event(), asyncio.Event()
        await page.route(f"**/api/{collection}", held_post(release, held))
        await page.get_by_test_id(picker).set_input_files(str(media))
        await reached(held, page, f"the upload's POST /api/{collection}")
        page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await items.nth(0).get_by_test_id("library-delete").click()
        await expect(items).to_have_count(0, timeout=30_000)
        release.set()

        await expect(items).to_have_count(1, timeout=60_000)
        second = await items.nth(0).get_attribute("data-id")
        assert second != first
        await expect(stage).to_have_attribute(attribute, str(second), timeout=60_000)
        await expect(page.get_by_test_id("status")).not_to_contain_text("uploading")
        assert not errors, errors
