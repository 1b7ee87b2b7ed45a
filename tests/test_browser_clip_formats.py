"""Clip mode's file picker offers the video files the server takes, as the server lists them
(`video_suffixes` in /api/capabilities, from streamer/clip/video_io.py): a format added there shows
in the picker with no change to the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser import BROWSER_TEST
from tests.test_browser_clip_drop import served_page

pytestmark = BROWSER_TEST


async def test_the_file_picker_offers_the_formats_the_server_lists(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async def with_a_new_format(route: Any) -> None:
        answer = await route.fetch()
        caps = await answer.json()
        caps["video_suffixes"] = [".mp4", ".ts"]  # as if MPEG-TS were added to VIDEO_FORMATS
        await route.fulfill(response=answer, json=caps)

    async with served_page(tmp_path) as (page, errors):
        await page.route("**/api/capabilities", with_a_new_format)
        await page.reload()
        await page.get_by_test_id("mode-clip").click()
        await expect(page.get_by_test_id("upload-input")).to_have_attribute(
            "accept", "video/*,.mp4,.ts"
        )
        assert errors == []
