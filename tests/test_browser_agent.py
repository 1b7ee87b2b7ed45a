"""The VLM in the loop on the page (headless Chromium, a scripted VLM; Image mode, and Clip for
auto-refine's frame): checked Find keeps a rejected candidate flagged when asked, and auto-refine
draws each proposed click, applies it, and says when the VLM is done; the Stop button is there
while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamer.settings import Settings
from tests.browser import (
    BROWSER_TEST,
    HANDLED,
    MEDIA_TO_PAGE,
    OVERLAY_PIXELS,
    count_with_find_all,
    image_page,
    square_png,
)
from tests.conftest import CheckedFindScript, request_text
from tests.test_find_all import PROPOSE_ANYTHING
from workers.reasoning.images import fitted_size

pytestmark = BROWSER_TEST
W, H = 160, 120

# Page JS: the first auto-refine dot's centre is at page point [x, y] (within 3 px).
DOT_AT = """([x, y]) => {
  const r = document.querySelector('[data-testid=refine-click]').getBoundingClientRect();
  return Math.abs(r.x + r.width / 2 - x) < 3 && Math.abs(r.y + r.height / 2 - y) < 3;
}"""


async def test_checked_find_and_auto_refine_on_the_page(sam2_tiny_128: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    png = square_png(tmp_path)

    sw, sh = fitted_size(W, H, 768)

    def click(kind: str, x: float, y: float) -> str:
        return json.dumps({"action": kind, "point_2d": [round(x * sw / W), round(y * sh / H)]})

    refine = [click("positive", 60, 50), click("negative", 20, 100), '{"action": "done"}']
    find = CheckedFindScript([(50, 40, 90, 80), (0, 0, 40, 30)], ["yes", "no"], (W, H))
    asked: list[str] = []

    def answer(body: dict[str, Any]) -> str:
        if "next click" in request_text(body):
            asked.append("refine")
            return refine[min(len(asked), len(refine)) - 1]
        return find(body)

    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    async with image_page(sam2_tiny_128, settings, answer, png, token_delay_s=0.05) as (
        page,
        errors,
    ):
        # Checked Find, keeping rejected candidates: both listed, the rejected one flagged.
        await page.get_by_test_id("find-all-candidates").check()
        await page.get_by_test_id("find-input").fill("Find: the red square")
        await page.get_by_test_id("find-submit").click()
        items = page.get_by_test_id("object-item")
        await expect(items).to_have_count(2, timeout=60_000)
        await expect(items.nth(1)).to_contain_text("(VLM: not a match)")
        await expect(items.nth(0)).not_to_contain_text("VLM:")
        await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
        # The first found is selected, as in Live (it was not: Auto-refine had nothing to act on).
        await expect(items.nth(0)).to_have_attribute("aria-current", "true")

        # Auto-refine the first: two clicks drawn in order, then the VLM says done (double-
        # clicked: the second click, on the Stop in its place, stops nothing).
        await page.get_by_test_id("auto-refine").dblclick()
        await expect(page.get_by_test_id("stop-refine")).to_be_visible()
        status = page.get_by_test_id("refine-status")
        await expect(status).to_contain_text("mask is right after 2 clicks", timeout=90_000)
        dots = page.get_by_test_id("refine-click")
        await expect(dots).to_have_count(2)
        assert await dots.all_inner_texts() == ["1", "2"]
        assert await dots.nth(0).get_attribute("class") == "refine-click positive"
        assert await dots.nth(1).get_attribute("class") == "refine-click negative"
        # The first dot sits where the click was, on the picture.
        x, y = await page.evaluate(MEDIA_TO_PAGE, ["#image-canvas", 60, 50])
        box = await dots.nth(0).bounding_box()
        assert box is not None
        assert abs(box["x"] + box["width"] / 2 - x) < 3
        assert abs(box["y"] + box["height"] / 2 - y) < 3
        # The stage narrows, the window does not (as when what sits above it grows): the dot
        # moves with the picture (it stayed where the picture had been).
        await page.evaluate("() => { document.querySelector('#stage').style.width = '55%'; }")
        moved = await page.evaluate(MEDIA_TO_PAGE, ["#image-canvas", 60, 50])
        assert abs(moved[0] - x) > 20, (moved, x)
        await page.wait_for_function(DOT_AT, arg=moved, timeout=10_000)
        await page.evaluate("() => { document.querySelector('#stage').style.width = ''; }")
        await expect(page.get_by_test_id("stop-refine")).to_be_hidden()
        await expect(page.get_by_test_id("auto-refine")).to_be_visible()
        await page.screenshot(path=str(tmp_path / "agent.png"))
        # Removing the object takes its clicks off the stage (they stayed, over any picture).
        await items.nth(0).get_by_test_id("object-remove").click()
        await expect(items).to_have_count(1)
        await expect(dots).to_have_count(0)
        assert errors == []
    print("screenshot:", tmp_path / "agent.png")


async def test_a_stop_while_sam2_applies_a_click_counts_it_and_shows_its_mask(
    sam2_tiny_128: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image: Stop lands while SAM2 applies the VLM's first click. The server sees the click
    through and reports it as the others, and the page says so, draws its dot and the mask it
    made, as a reload does (it closed the stream: it said 0 clicks and kept the old mask until a
    reload)."""
    from playwright.async_api import expect

    from streamer.image import agent

    entered, release = threading.Event(), threading.Event()
    click_object = agent.click_object

    async def held(*args: Any) -> Any:
        entered.set()
        await asyncio.to_thread(release.wait, 60)
        return await click_object(*args)

    monkeypatch.setattr(agent, "click_object", held)
    sw, sh = fitted_size(W, H, 768)
    far_click = json.dumps(
        {"action": "positive", "point_2d": [round(20 * sw / W), round(100 * sh / H)]}
    )

    def answer(body: dict[str, Any]) -> str:
        return far_click if "next click" in request_text(body) else "A red square."

    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    try:
        async with image_page(sam2_tiny_128, settings, answer, square_png(tmp_path)) as (
            page,
            errors,
        ):
            await page.get_by_test_id("stage").click()
            await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=60_000)
            await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
            before = await page.evaluate(OVERLAY_PIXELS)
            await page.get_by_test_id("auto-refine").click()
            assert await asyncio.to_thread(entered.wait, 90)
            await page.get_by_test_id("stop-refine").click()
            status = page.get_by_test_id("refine-status")
            await expect(status).to_have_text("stopping…")
            release.set()
            await expect(status).to_have_text("stopped; the 1 click applied stays", timeout=60_000)
            await expect(page.get_by_test_id("stop-refine")).to_be_hidden()
            await expect(page.get_by_test_id("auto-refine")).to_be_visible()
            await expect(page.get_by_test_id("refine-click")).to_have_count(1)
            await page.wait_for_function(f"({OVERLAY_PIXELS})() !== {before}", timeout=30_000)
            shown = await page.evaluate(OVERLAY_PIXELS)
            # Coming back to Image draws the server's masks (its reload): the same as shown.
            await page.evaluate(HANDLED)
            read = await page.evaluate("() => window.__handled.json.length")
            await page.get_by_test_id("mode-clip").click()
            await page.get_by_test_id("mode-image").click()
            reloaded = "(n) => window.__handled.json.slice(n).some((u) => /\\/api\\/images\\/[^/]+$/.test(u))"
            await page.wait_for_function(reloaded, arg=read, timeout=30_000)
            assert await page.evaluate(OVERLAY_PIXELS) == shown
            assert errors == []
    finally:
        release.set()


async def test_a_stop_before_the_refine_has_its_vlm_turn_gives_the_turn_up(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """Image, one VLM request at a time: the click's description holds the VLM, Auto-refine
    waits its turn, and Stop ends it there (its answer has not begun, so no click can have been
    applied: the page closes the request, which gives the turn up), with no error; the next
    Auto-refine runs."""
    from playwright.async_api import expect

    from tests.test_vlm_share_claim import HeldAnswer

    held = HeldAnswer("A red square.")

    def answer(body: dict[str, Any]) -> Any:
        return '{"action": "done"}' if "next click" in request_text(body) else held(body)

    settings = Settings(
        data_dir=tmp_path / "data", weights="random", device="cpu", vlm_max_in_flight_per_session=1
    )
    try:
        async with image_page(sam2_tiny_128, settings, answer, square_png(tmp_path)) as (
            page,
            errors,
        ):
            await page.get_by_test_id("stage").click()
            assert await asyncio.to_thread(held.asked.wait, 60)  # the description holds the VLM
            await page.get_by_test_id("auto-refine").click()
            status = page.get_by_test_id("refine-status")
            await page.get_by_test_id("stop-refine").click()
            await expect(status).to_have_text("stopped; no click was applied")
            await expect(page.get_by_test_id("auto-refine")).to_be_visible()
            await expect(page.get_by_test_id("error")).to_be_hidden()
            held.released.set()
            await page.get_by_test_id("auto-refine").click()
            await expect(status).to_contain_text("mask is right after 0 clicks", timeout=60_000)
            assert errors == []
    finally:
        held.released.set()


async def test_find_all_counts_and_shows_the_masks_on_the_page(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    png = square_png(tmp_path)

    # The VLM says yes to every region it is shown.
    settings = Settings(
        data_dir=tmp_path / "data", weights="random", device="cpu", **PROPOSE_ANYTHING
    )
    answer = '{"answers": ["yes", "yes", "yes", "yes"]}'
    async with image_page(sam2_tiny_128, settings, answer, png) as (page, errors):
        refine = page.get_by_test_id("auto-refine")
        before = await refine.bounding_box()
        # A double-click: its second click lands on the Stop that took the button's place, and
        # must not stop the count it started.
        count = await count_with_find_all(page, "how many squares?", "squares", double=True)
        # The count's line goes under the buttons: Auto-refine stays where it was (a long line
        # pushed it onto a row of its own, away from under the pointer).
        assert await refine.bounding_box() == before
        await expect(page.get_by_test_id("object-item")).to_have_count(count)
        await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
        await expect(page.get_by_test_id("find-all")).to_be_visible()
        await expect(page.get_by_test_id("stop-find")).to_be_hidden()
        assert errors == []


@contextlib.asynccontextmanager
async def finding_all_squares(
    model: Any, tmp_path: Path, answer: Any
) -> AsyncIterator[tuple[Any, list[str]]]:
    """The Image page on the square, SAM2 proposing any region, the VLM answering `answer`, and
    Find all of "squares" clicked: (the page, its script errors)."""
    settings = Settings(
        data_dir=tmp_path / "data", weights="random", device="cpu", **PROPOSE_ANYTHING
    )
    async with image_page(model, settings, answer, square_png(tmp_path)) as (page, errors):
        await page.get_by_test_id("find-input").fill("squares")
        await page.get_by_test_id("find-all").click()
        yield page, errors


async def test_a_find_all_stopped_while_it_makes_objects_shows_those_it_made(
    sam2_tiny_128: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image: Stop while find-all segments its second region: the first region's object, made
    and kept on the server, is listed and drawn at once (the page showed none until a reload)."""
    from playwright.async_api import expect

    from streamer.image import agent

    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []
    segment_now = agent.segment_now

    def second_held(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            entered.set()
            release.wait(60)
        return segment_now(*args)

    monkeypatch.setattr(agent, "segment_now", second_held)
    # SAM2 with random weights proposes one region of the square: the same one twice makes two.
    propose = agent._ImageFindSite.propose

    async def twice(self: Any, grid: Any) -> list[Any]:
        return 2 * await propose(self, grid)

    monkeypatch.setattr(agent._ImageFindSite, "propose", twice)
    answer = '{"answers": ["yes", "yes", "yes", "yes"]}'
    try:
        async with finding_all_squares(sam2_tiny_128, tmp_path, answer) as (page, errors):
            assert await asyncio.to_thread(entered.wait, 90)
            await page.get_by_test_id("stop-find").click()
            await expect(page.get_by_test_id("stop-find")).to_be_hidden()
            release.set()
            await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=30_000)
            await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
            assert errors == []
    finally:
        release.set()


async def test_clear_objects_stops_a_find_all_still_asking_the_vlm(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """Image: Clear objects while find-all's regions are at the VLM (held there): the find-all
    stops at once and says the clear stopped it; it went on asking the VLM until it answered."""
    from playwright.async_api import expect

    held, release = threading.Event(), threading.Event()

    async def held_answer(body: dict[str, Any]) -> str:
        held.set()
        await asyncio.to_thread(release.wait, 120)
        return '{"answers": ["yes", "yes", "yes", "yes"]}'

    try:
        async with finding_all_squares(sam2_tiny_128, tmp_path, held_answer) as (page, errors):
            assert await asyncio.to_thread(held.wait, 90)
            status = page.get_by_test_id("find-status")
            await expect(status).to_contain_text("asking the VLM")
            await page.get_by_test_id("reset-objects").click()
            # Led by what it was, not by "count: 0": the count is of the regions asked.
            await expect(status).to_have_text(
                re.compile(
                    r'^Find all of "squares": stopped after 0 of \d+ regions?; the objects were '
                    r"cleared while it ran \(find again\)$"
                ),
                timeout=30_000,
            )
            await expect(page.get_by_test_id("find-all")).to_be_visible()
            await expect(page.get_by_test_id("stop-find")).to_be_hidden()
            await expect(page.get_by_test_id("object-item")).to_have_count(0)
            assert errors == []
            release.set()  # before the scripted VLM stops: it waits for its held request
    finally:
        release.set()


async def test_a_description_still_streaming_stays_with_its_own_image(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """A click on image A starts its description; the person uploads image B before it ends. A's
    description finishes on A (the server keeps it), and B's list stays empty."""
    from playwright.async_api import expect

    from tests.conftest import spotlight_answerer

    png = square_png(tmp_path)
    other = tmp_path / "other.png"
    other.write_bytes(png.read_bytes())
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    answer = spotlight_answerer(description="a red square " + "and more " * 20)
    async with image_page(sam2_tiny_128, settings, answer, png, token_delay_s=0.2) as (
        page,
        errors,
    ):
        await page.evaluate(HANDLED)
        canvas = page.locator("#image-canvas")
        first = await canvas.get_attribute("data-image-id")
        await page.get_by_test_id("stage").click()
        await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=60_000)
        await page.get_by_test_id("image-input").set_input_files(str(other))
        await expect(canvas).not_to_have_attribute("data-image-id", first or "", timeout=60_000)
        # A's description goes on while B is shown, to its end: the page has read (and
        # handled) all of its events, and the server's copy of A has the verdict.
        await page.wait_for_function("() => window.__handled.streams >= 1", timeout=60_000)
        fetch = "(id) => fetch('/api/images/' + id).then((r) => r.json())"
        kept = await page.evaluate(fetch, first)
        assert kept["objects"][0]["verdict"], kept
        await expect(page.get_by_test_id("object-item")).to_have_count(0)
        # Back on A (from the library): its object, described.
        item = page.get_by_test_id("library-item").filter(has_text="square.png")
        await item.get_by_test_id("library-open").click()
        await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=30_000)
        await expect(page.get_by_test_id("object-item")).to_contain_text("a red square")
        assert errors == []


async def test_clip_auto_refine_shows_the_frame_its_clicks_are_on(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """Auto-refine on a clip places its clicks on the object's clicked frame: with another frame
    showing, the page goes to that frame, so the dots mark the picture they were placed on (they
    sat over the frame showing)."""
    from playwright.async_api import expect

    from streamer.app import create_app
    from streamer.services import build_reasoner
    from tests.browser import served_page
    from tests.fakes.openai_server import ScriptedVLMServer
    from tests.test_browser_clip_states import upload_and_click
    from tests.test_clip_media import square_center

    sw, sh = fitted_size(W, H, 768)
    refines: list[int] = []

    def answer(body: dict[str, Any]) -> str:
        if "next click" not in request_text(body):
            return "a red square"
        refines.append(1)
        if len(refines) > 1:
            return '{"action": "done"}'
        return json.dumps(
            {"action": "positive", "point_2d": [round(30 * sw / W), round(60 * sh / H)]}
        )

    with ScriptedVLMServer(answer=answer) as vlm:
        reasoner, _ = build_reasoner(Settings(vlm_url=vlm.url))
        settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
        app = create_app(settings, vision_model=sam2_tiny_128, reasoner=reasoner, load_vision=False)
        async with served_page(app, "clip") as (page, errors):
            await upload_and_click(page, tmp_path, [square_center(0)])
            progress = page.get_by_test_id("progress")
            await expect(progress).to_have_attribute("data-state", "done", timeout=90_000)
            label = page.get_by_test_id("frame-label")
            await page.get_by_role("slider", name="Frame").fill("6")
            await expect(label).to_contain_text("frame 6 /")
            items = page.get_by_test_id("object-item")
            if await items.first.get_attribute("aria-current") != "true":
                await items.first.locator(".label").click()
            await page.get_by_test_id("auto-refine").click()
            await expect(page.get_by_test_id("refine-click")).to_have_count(1, timeout=90_000)
            await expect(label).to_contain_text("frame 0 /")
            await expect(page.get_by_test_id("refine-status")).to_contain_text(
                "mask is right", timeout=90_000
            )
            assert errors == []
