"""The Find box follows the item shown (headless Chromium, Image mode, a scripted VLM): a checked
Find still under way when the person opens another image is not waited for over it, and its
late refusal is not said there.

The Find's request is held (a routed POST, before the server has it) until the other image is
shown, then let go; the test waits until the page has read the answer, not for a while.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.browser import (
    BROWSER_TEST,
    handled,
    held_post,
    two_images_page,
)

pytestmark = BROWSER_TEST

# Page JS: delete image `id` as another tab of the same browser would; the answer's status.
DELETE_IMAGE = """async (id) => (await fetch(`/api/images/${id}`, { method: 'DELETE' })).status"""


async def test_a_find_under_way_when_another_image_opens_leaves_that_image_alone(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """A Find on the second image waits; the person opens the first: Find is free there at once
    (no "finding ..." line, the button enabled), and when the Find's answer comes late, a
    refusal (the second image was deleted meanwhile, in another tab), the first image shows
    no error for it."""
    from playwright.async_api import expect

    async with two_images_page(sam2_tiny_128, tmp_path) as (page, errors, first, second):
        canvas = page.locator("#image-canvas")
        library = page.locator("[data-testid=library][data-for=image]")

        release, held = asyncio.Event(), asyncio.Event()
        await page.route(f"**/api/images/{second}/find", held_post(release, held))
        find, pending = page.get_by_test_id("find-submit"), page.get_by_test_id("find-pending")
        await page.get_by_test_id("find-input").fill("the red square")
        await find.click()
        await asyncio.wait_for(held.wait(), 30)
        await expect(pending).to_contain_text('finding "the red square"')
        await expect(find).to_be_disabled()

        row = library.locator(f"[data-testid=library-item][data-id='{first}']")
        await row.get_by_test_id("library-open").click()
        await expect(canvas).to_have_attribute("data-image-id", first, timeout=30_000)
        await expect(pending).to_be_hidden()
        await expect(find).to_be_enabled()

        assert await page.evaluate(DELETE_IMAGE, second) < 300
        release.set()
        await page.wait_for_function(handled(f"/api/images/{second}/find", held=False))
        await expect(page.get_by_test_id("error")).to_be_hidden()
        await expect(page.get_by_test_id("object-item")).to_have_count(0)
        await expect(pending).to_be_hidden()
        assert not errors, errors
