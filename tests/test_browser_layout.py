"""The page on the screens people have, with a library of five clips and five images: Clip's
controls on one row at 1200 px, the scrubber near half of it; on a 1366x768 laptop the stage starts near the top and the whole
clip or image is in the window, the library a click away; on a phone the toolbar wraps, the
page does not overflow sideways, and the panel comes right under the stage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from streamer.app import create_app
from streamer.settings import Settings
from tests.browser import BROWSER_TEST
from tests.conftest import ServerThread
from tests.test_browser_library import library_page
from tests.test_clip_media import write_clip
from tests.test_image_api import encoded

pytestmark = BROWSER_TEST

OWNER = "0f1e2d3c4b5a69780f1e2d3c4b5a6978"

# Page JS: the boxes of Clip's toolbar controls that a person uses, in order, by name (the job's
# line and the exports have the row under them).
TOOLBAR = """() => [...document.querySelectorAll('#clip-tools > *')]
  .filter((e) => !e.hidden && e.type !== 'file' && !e.classList.contains('clip-status'))
  .map((e) => { const r = e.getBoundingClientRect();
    return {name: e.textContent.trim() || e.dataset.testid || e.className,
            top: r.top, bottom: r.bottom, width: r.width}; })"""


def one_row(boxes: list[dict[str, Any]]) -> bool:
    """Every control's vertical middle is within the first one's height."""
    first = boxes[0]
    return all(first["top"] <= (b["top"] + b["bottom"]) / 2 <= first["bottom"] for b in boxes)


async def open_first(page: Any, mode: str) -> None:
    """Open the newest item of the mode's library and wait until its media is shown."""
    library = page.locator(f"[data-testid=library][data-for={mode}]")
    await library.get_by_test_id("library-open").first.click()
    # (a canvas is 300 px wide before anything is drawn on it: the image's id says it is shown)
    media = "#clip-video').readyState >= 2" if mode == "clip" else "#image-canvas').dataset.imageId"
    await page.wait_for_function(f"() => document.querySelector('{media}", timeout=60_000)
    await page.evaluate("() => window.scrollTo(0, 0)")


async def test_the_stage_and_the_toolbars_fit_a_laptop_and_a_phone(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    from streamer.http.access import OWNER_COOKIE

    settings = Settings(data_dir=tmp_path / "data", device="cpu")
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    with ServerThread(app) as server:
        cookies = {OWNER_COOKIE: OWNER}
        with httpx.Client(base_url=server.base_url, timeout=60, cookies=cookies) as http:
            for i in range(5):
                clip = write_clip(tmp_path / f"holiday-{i}.mp4", frames=10, width=320, height=240)
                r = http.post("/api/clips", files={"file": (clip.name, clip.read_bytes())})
                assert r.status_code == 201, r.text
                r = http.post("/api/images", files={"file": (f"desk-{i}.png", encoded("PNG"))})
                assert r.status_code == 201, r.text
                time.sleep(0.01)  # distinct upload times: the library is newest first
        async with library_page(server.base_url, OWNER, "clip") as (page, library, errors):
            await expect(library.get_by_test_id("library-item")).to_have_count(5)
            # Nothing open: the short empty stage leaves the library in sight, and says it is there.
            await page.set_viewport_size({"width": 1366, "height": 768})
            await expect(library.get_by_test_id("library-item").first).to_be_in_viewport()
            line = await page.evaluate(
                "() => getComputedStyle(document.querySelector('#stage'), '::after').content"
            )
            assert "open one from the Library below" in line

            # 1200 px: upload, play, scrubber and frame on one row, the scrubber near half of it
            # (beside both exports it was 154 px: 20 frames a pixel on a 2-minute clip); the
            # exports right under it, at the right of the job's line.
            await page.set_viewport_size({"width": 1200, "height": 800})
            await open_first(page, "clip")
            boxes = await page.evaluate(TOOLBAR)
            assert len(boxes) == 4 and one_row(boxes), boxes
            row = await page.locator("#clip-tools").bounding_box()
            (scrubber,) = [b for b in boxes if b["name"] == "clip-scrub"]
            assert row is not None and scrubber["width"] >= 0.45 * row["width"], (row, boxes)
            line = await page.get_by_test_id("progress").bounding_box()
            for export in ("export-json", "export-video"):
                box = await page.get_by_test_id(export).bounding_box()
                assert box is not None and line is not None, export
                assert box["x"] > line["x"] + line["width"] and abs(box["y"] - line["y"]) <= 4
                assert box["y"] >= boxes[0]["bottom"], (box, boxes)
            await page.screenshot(path=str(tmp_path / "clip-1200.png"))

            # A 1366x768 laptop: the stage starts near the top and the whole of it is in the
            # window, in Clip and in Image; the library is one click away.
            await page.set_viewport_size({"width": 1366, "height": 768})
            for mode in ("clip", "image"):
                await page.get_by_test_id(f"mode-{mode}").click()
                await open_first(page, mode)
                stage = await page.get_by_test_id("stage").bounding_box()
                assert stage is not None and stage["y"] < 200, stage
                assert stage["y"] + stage["height"] <= 768 and stage["height"] > 500, stage
                await page.screenshot(path=str(tmp_path / f"{mode}-1366x768.png"))
                jump = page.locator(f"[data-testid=library-jump][data-for={mode}]")
                await expect(jump).to_have_text("Library (5) ↓")
                items = page.locator(f"[data-testid=library][data-for={mode}] .library-item")
                await expect(items.first).not_to_be_in_viewport()
                await jump.click()
                await expect(items.first).to_be_in_viewport()

            # A phone: Clip's toolbar wraps, its scrubber still wide enough to drag, and
            # nothing is wider than the screen.
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.get_by_test_id("mode-clip").click()
            await open_first(page, "clip")
            boxes = await page.evaluate(TOOLBAR)
            (scrubber,) = [b for b in boxes if b["name"] == "clip-scrub"]
            assert scrubber["width"] >= 128, boxes
            assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390
            # The panel (Find, the objects, the description a click starts) is right under the
            # stage, the library and the hint after it (they came first: the description was
            # more than a screen below the picture).
            at = await page.evaluate(
                """() => Object.fromEntries(['#stage', '#panel', '#find-form', '#verdict',
                  '.library[data-for=clip]', '#below > .hint'].map((s) => {
                    const r = document.querySelector(s).getBoundingClientRect();
                    return [s, {top: r.top, bottom: r.bottom}]; }))"""
            )
            stage, panel, library = at["#stage"], at["#panel"], at[".library[data-for=clip]"]
            assert 0 <= panel["top"] - stage["bottom"] <= 16, at
            assert at["#verdict"]["bottom"] - stage["top"] <= 844, at  # in one screen
            assert (
                library["top"] >= panel["bottom"] and at["#below > .hint"]["top"] >= panel["bottom"]
            )
            # ... in the page's order too, which a keyboard and a screen reader follow.
            assert await page.evaluate(
                """() => !!(document.querySelector('#panel').compareDocumentPosition(
                    document.querySelector('.library[data-for=clip]'))
                  & Node.DOCUMENT_POSITION_FOLLOWING)"""
            )
            await page.screenshot(path=str(tmp_path / "clip-phone.png"), full_page=True)
            assert errors == []
