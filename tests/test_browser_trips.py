"""What a person trips on, on the page (headless Chromium): a double-click on the stage makes one
object, not two; a long word from the server or the VLM wraps inside the panel and the screen; a
reload comes back to the mode and the clip or image open, and Back / Forward move between them; an
object whose mask vanished says so in its row; Enter on "how many squares?" counts them; a clip
given to Image mode points to Clip."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from streamer.app import create_app
from streamer.settings import Settings
from tests.browser import (
    BROWSER_TEST,
    HANDLED,
    IMAGE_TO_PAGE,
    MASK_POINTS,
    OVERLAY_PIXELS,
    image_page,
    served_page,
    square_png,
)
from tests.test_clip_media import write_clip
from tests.test_find_all import PROPOSE_ANYTHING

pytestmark = BROWSER_TEST

# Page JS: counts the page's click requests (window.__clicks); the request is sent within the
# click's own handler, so the count is whole once the mouse event has been handled.
COUNT_CLICKS = """() => {
  window.__clicks = 0;
  const send = window.fetch;
  window.fetch = (url, init) => {
    if (String(url).endsWith('/clicks')) window.__clicks += 1;
    return send(url, init);
  };
}"""

# Page JS: every click request sent has had its answer handled (HANDLED).
CLICKS_HANDLED = """() => window.__clicks > 0 &&
  window.__handled.json.filter((u) => u.endsWith('/clicks')).length === window.__clicks"""


@contextlib.asynccontextmanager
async def no_vlm_page(
    model: Any, tmp_path: Path, mode: str
) -> AsyncIterator[tuple[Any, list[str]]]:
    """The page in `mode`, served with random-weight SAM2 and no VLM: (the page, its errors)."""
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    app = create_app(settings, vision_model=model, reasoner=None, load_vision=False)
    async with served_page(app, mode) as (page, errors):
        yield page, errors


async def image_shown(page: Any, png: Path) -> None:
    from playwright.async_api import expect

    await page.get_by_test_id("image-input").set_input_files(str(png))
    await expect(page.get_by_test_id("image-info")).to_contain_text("encoded in", timeout=60_000)


async def test_a_double_click_on_the_stage_makes_one_object(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    async with no_vlm_page(sam2_tiny_128, tmp_path, "image") as (page, errors):
        await image_shown(page, square_png(tmp_path))
        await page.evaluate(HANDLED)
        await page.evaluate(COUNT_CLICKS)
        x, y = await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120])
        await page.mouse.dblclick(x, y)
        await page.wait_for_function(CLICKS_HANDLED, timeout=60_000)
        items = page.get_by_test_id("object-item")
        await expect(items).to_have_count(1)
        await expect(items).to_have_class("selected")
        assert await page.evaluate("() => window.__clicks") == 1
        assert errors == []


# A word longer than any line of the panel, as a VLM may answer (an id, a hash, a URL).
LONG = "0f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a6978"

# Page JS: the text under `sel` (visible, not cut short with an ellipsis on purpose) whose right
# edge is past the right edge of `sel` itself: text running out of its box.
RUNS_OUT = """(sel) => {
  const root = document.querySelector(sel);
  const edge = Math.min(root.getBoundingClientRect().right, document.documentElement.clientWidth);
  const out = [];
  const walk = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let n; (n = walk.nextNode()); ) {
    const e = n.parentElement;
    if (!n.textContent.trim() || !e.checkVisibility()) continue;
    if (getComputedStyle(e).textOverflow === 'ellipsis') continue;
    const r = document.createRange();
    r.selectNodeContents(n);
    const right = Math.max(...[...r.getClientRects()].map((q) => q.right));
    if (right > edge + 0.5) out.push(n.textContent.slice(0, 40));
  }
  return out;
}"""


async def test_a_long_word_from_the_server_or_the_vlm_wraps_inside_the_panel(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    png = square_png(tmp_path).rename(tmp_path / f"holiday-{LONG}.png")
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    # The VLM answers the long word to everything: the description is it, and auto-refine's
    # answer is neither a click nor done, which the status and the error box quote.
    async with image_page(sam2_tiny_128, settings, lambda body: LONG, png) as (page, errors):
        x, y = await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120])
        await page.mouse.click(x, y)
        await expect(page.get_by_test_id("verdict")).to_contain_text("IoU", timeout=60_000)
        await expect(page.get_by_test_id("answer")).to_contain_text(LONG)
        await page.get_by_test_id("auto-refine").click()
        await expect(page.get_by_test_id("refine-status")).to_contain_text(LONG[:40])
        await expect(page.get_by_test_id("error")).to_contain_text(LONG[:40])
        await expect(page.get_by_test_id("status")).to_contain_text(LONG)
        for size, name in (
            ({"width": 1200, "height": 800}, "1200"),
            ({"width": 390, "height": 844}, "phone"),
        ):
            await page.set_viewport_size(size)
            for sel in ("#panel", "header", "#error"):
                assert await page.evaluate(RUNS_OUT, sel) == [], (name, sel)
            assert (
                await page.evaluate("() => document.documentElement.scrollWidth") <= size["width"]
            )
            await page.screenshot(path=str(tmp_path / f"long-{name}.png"), full_page=True)
        assert errors == []


def hash_of(page: Any) -> str:
    return page.url.partition("#")[2]


async def test_a_reload_and_back_and_forward_come_back_to_what_was_shown(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    clip = write_clip(tmp_path / "moving.mp4", frames=10)
    async with no_vlm_page(sam2_tiny_128, tmp_path, "image") as (page, errors):
        status, items = page.get_by_test_id("status"), page.get_by_test_id("object-item")
        await image_shown(page, square_png(tmp_path))
        image_id = await page.get_attribute("#image-canvas", "data-image-id")
        assert hash_of(page) == f"image/{image_id}"
        x, y = await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120])
        await page.mouse.click(x, y)
        await expect(items).to_have_count(1)

        await page.get_by_test_id("mode-clip").click()
        await page.get_by_test_id("upload-input").set_input_files(str(clip))
        await expect(status).to_have_text("clip: moving.mp4", timeout=60_000)
        clip_id = await page.get_attribute("#clip-video", "data-clip-id")
        assert hash_of(page) == f"clip/{clip_id}"

        # A reload: Clip again, the clip open (not Live, and no camera asked for).
        await page.reload()
        await expect(page.get_by_test_id("mode-clip")).to_have_attribute(
            "aria-selected", "true", timeout=30_000
        )
        await expect(status).to_have_text("clip: moving.mp4", timeout=60_000)
        await expect(page.get_by_test_id("frame-label")).to_contain_text("frame 0 / 9")
        await expect(page.get_by_test_id("error")).to_be_hidden()

        # Back: the image, its object with it; Forward: the clip again.
        await page.go_back()
        await expect(page.get_by_test_id("mode-image")).to_have_attribute("aria-selected", "true")
        await expect(status).to_have_text("image: square.png · 160x120", timeout=60_000)
        await expect(items).to_have_count(1)
        assert hash_of(page) == f"image/{image_id}"
        await page.go_forward()
        await expect(page.get_by_test_id("mode-clip")).to_have_attribute("aria-selected", "true")
        await expect(status).to_have_text("clip: moving.mp4", timeout=60_000)

        # An address naming a clip the server does not have: Clip, and why it is not there.
        gone = "0" * 32
        # (a new page at that address: a hash-only goto then a reload raced the old page, which
        # on its 404 wrote the clip it still showed back into the address the reload loaded)
        base = page.url.partition("#")[0]
        await page.goto("about:blank")
        await page.goto(f"{base}#clip/{gone}")
        await expect(page.get_by_test_id("mode-clip")).to_have_attribute(
            "aria-selected", "true", timeout=30_000
        )
        await expect(page.get_by_test_id("error")).to_contain_text(
            f"no clip '{gone}'", timeout=30_000
        )
        await expect(page.get_by_test_id("frame-label")).to_have_text("no clip")
        assert hash_of(page) == "clip"
        assert errors == []


async def sam2_loses_it_after_a_negative_click(route: Any) -> None:
    """The server's answer to a click, except that after a negative one SAM2 no longer finds the
    object (present false), as it may when a negative click lands in the middle of it."""
    answer = await route.fetch()
    body = await answer.json()
    if json.loads(route.request.post_data or "{}").get("negative"):
        body["object"]["present"] = False
    await route.fulfill(response=answer, json=body)


async def test_an_object_whose_mask_vanished_says_so_and_a_click_finds_it_again(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    async with no_vlm_page(sam2_tiny_128, tmp_path, "image") as (page, errors):
        await page.route("**/clicks", sam2_loses_it_after_a_negative_click)
        await image_shown(page, square_png(tmp_path))
        item, absent = page.get_by_test_id("object-item"), page.get_by_test_id("object-absent")
        x, y = await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120])
        await page.mouse.click(x, y)
        await expect(item).to_have_class("selected")
        points = await page.evaluate(MASK_POINTS, 2)
        assert points["inside"], points
        await expect(absent).to_have_count(0)

        # A negative click: the mask leaves the stage, and the row says why and what to do.
        await page.keyboard.down("Shift")
        await page.mouse.click(*points["inside"])
        await page.keyboard.up("Shift")
        await expect(absent).to_have_text(
            "not found in the picture now: select it and click where it is"
        )
        assert await page.evaluate(OVERLAY_PIXELS) == 0
        oid = await item.get_attribute("data-object-id")

        # As it says: with it still selected, the pointer says a click re-finds it, and the
        # click does (the same object, refined, not a second one).
        await page.mouse.move(x, y)
        hint = page.get_by_test_id("click-hint")
        await expect(hint).to_have_text(f"re-find #{oid} here (Esc: new object)")
        await page.screenshot(path=str(tmp_path / "absent.png"))
        await page.mouse.click(x, y)
        await expect(absent).to_have_count(0)
        await expect(item).to_have_count(1)
        assert await item.get_attribute("data-object-id") == oid
        assert await page.evaluate(OVERLAY_PIXELS) > 0

        # Lost again and deselected (Esc): a click is a new object, as the hint says.
        await page.keyboard.down("Shift")
        await page.mouse.click(*(await page.evaluate(MASK_POINTS, 2))["inside"])
        await page.keyboard.up("Shift")
        await expect(absent).to_have_count(1)
        await page.keyboard.press("Escape")
        await page.mouse.move(x + 1, y)
        await expect(hint).to_have_text("new object")
        await page.mouse.click(x + 1, y)
        await expect(item).to_have_count(2)
        assert errors == []


async def test_enter_on_how_many_counts_as_find_all_does(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    # The VLM says yes to every region it is shown (find all) and to every candidate (Find).
    settings = Settings(
        data_dir=tmp_path / "data", weights="random", device="cpu", **PROPOSE_ANYTHING
    )
    answer = '{"answers": ["yes", "yes", "yes", "yes"]}'
    async with image_page(sam2_tiny_128, settings, answer, square_png(tmp_path)) as (page, errors):
        await page.get_by_test_id("find-input").fill("how many squares?")
        await page.get_by_test_id("find-input").press("Enter")
        status = page.get_by_test_id("find-status")
        await expect(status).to_contain_text("count: ", timeout=90_000)
        await expect(status).to_contain_text('"squares"')
        count = int((await status.inner_text()).split("count: ")[1].split(" ")[0])
        await expect(page.get_by_test_id("object-item")).to_have_count(count)
        await expect(page.get_by_test_id("error")).to_be_hidden()
        assert errors == []


async def test_a_clip_given_to_image_mode_points_to_clip(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    async with no_vlm_page(sam2_tiny_128, tmp_path, "image") as (page, errors):
        await page.get_by_test_id("image-input").set_input_files(
            str(write_clip(tmp_path / "holiday.mp4", frames=5))
        )
        error = page.get_by_test_id("error")
        await expect(error).to_contain_text("holiday.mp4 is a video, not an image")
        await expect(error).to_contain_text("clips go in the Clip mode")
        assert errors == []
