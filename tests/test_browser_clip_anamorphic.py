"""A clip of non-square pixels (anamorphic: 160x120 frames shown 320x120) in headless Chromium:
the browser's videoWidth is the shown width, the server's frames are the decoded ones. A click
lands on the frame pixel under the pointer, and auto-refine's dots sit on the frame pixels the
VLM named."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.browser import BROWSER_TEST, FRAME_TO_PAGE, served_page
from tests.conftest import request_text, spotlight_answerer
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_media import square_center, write_clip
from workers.reasoning.images import fitted_size

pytestmark = BROWSER_TEST

W, H = 160, 120  # the frames; shown 320x120


async def test_a_click_and_the_vlms_clicks_land_on_the_frame_pixels_they_name(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    clip = write_clip(
        tmp_path / "wide.mp4", frames=8, width=W, height=H, pixel_aspect=Fraction(2, 1)
    )
    describe = spotlight_answerer()
    sw, sh = fitted_size(W, H, 768)  # the VLM's pixels: the frame as it was sent
    refine = [{"action": "positive", "point_2d": [round(100 * sw / W), round(30 * sh / H)]}]
    refine.append({"action": "done"})
    asked: list[str] = []

    def answer(body: dict[str, Any]) -> str:
        if "next click" in request_text(body):
            asked.append("refine")
            return json.dumps(refine[min(len(asked), len(refine)) - 1])
        return describe(body)

    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    with ScriptedVLMServer(answer=answer) as vlm:
        reasoner = build_reasoner(Settings(vlm_url=vlm.url))[0]
        app = create_app(settings, vision_model=sam2_tiny_128, reasoner=reasoner, load_vision=False)
        async with served_page(app, "clip") as (page, errors):
            await page.get_by_test_id("upload-input").set_input_files(str(clip))
            video = page.locator("#clip-video")
            await page.wait_for_function(
                "() => document.querySelector('#clip-video').readyState >= 2", timeout=60_000
            )
            # (the browser shows it twice as wide as its frames)
            assert await video.evaluate("(v) => [v.videoWidth, v.videoHeight]") == [2 * W, H]

            # A click on the square's middle: the server gets that frame pixel (it got the
            # shown one, twice as far right).
            x, y = square_center(0, W, H)
            await page.mouse.click(*await page.evaluate(FRAME_TO_PAGE, ["#clip-video", x, y, W, H]))
            items = page.get_by_test_id("object-item")
            await expect(items).to_have_count(1, timeout=60_000)
            get = "async (url) => (await fetch(url)).json()"
            (listed,) = (await page.evaluate(get, "/api/clips"))["clips"]
            export = await page.evaluate(get, f"/api/clips/{listed['id']}/export.json")
            assert export["clip"]["pixel_aspect"] == [2, 1]  # (its grid: the frame's 160x120)
            assert (export["clip"]["width"], export["clip"]["height"]) == (W, H)
            (obj,) = export["objects"]
            assert obj["prompts"][0]["frame"] == 0
            ((px, py),) = obj["prompts"][0]["points"]
            assert abs(px - x) < 1 and abs(py - y) < 1, obj["prompts"]  # (the pointer's rounding)

            # Auto-refine: the VLM's click is drawn on the frame pixel it named.
            await expect(items.first).to_have_class("selected")
            await page.get_by_test_id("auto-refine").click()
            status = page.get_by_test_id("refine-status")
            await expect(status).to_contain_text("mask is right after 1 click", timeout=90_000)
            dot = await page.get_by_test_id("refine-click").bounding_box()
            assert dot is not None
            at = await page.evaluate(FRAME_TO_PAGE, ["#clip-video", 100, 30, W, H])
            assert abs(dot["x"] + dot["width"] / 2 - at[0]) < 3, (dot, at)
            assert abs(dot["y"] + dot["height"] / 2 - at[1]) < 3, (dot, at)
            await page.screenshot(path=str(tmp_path / "anamorphic.png"))
            assert errors == []
