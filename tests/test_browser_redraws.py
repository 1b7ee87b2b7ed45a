"""What the page keeps when it redraws on a server event (headless Chromium, Image mode, a
scripted VLM): a text selection in the answer while a chat answer streams in, the keyboard focus
in the library when it refreshes and on Stop when auto-refine ends, a click's object when the
image's objects come back from the server; and an answer that comes late (a library list, an
opened image) does not replace what the person did after asking for it.

Each redraw is forced: the server's answer is held (a scripted VLM that waits, a routed request)
until the page is in the state to check, then let go.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

from streamer.app import create_app
from streamer.settings import Settings
from tests.browser import (
    BROWSER_TEST,
    IMAGE_TO_PAGE,
    click_clip,
    handled,
    held_post,
    held_route,
    image_page,
    reached,
    served_page,
    square_png,
    two_images_page,
    upload_clip,
)
from tests.conftest import request_text, spotlight_answerer
from tests.test_clip_media import square_center, write_clip

pytestmark = BROWSER_TEST


async def held_until(event: threading.Event, answer: Any) -> Any:
    """The scripted VLM's answer, once the test lets it go."""
    while not event.is_set():
        await asyncio.sleep(0.05)
    return answer


async def test_a_redraw_keeps_the_selection_the_focus_and_a_new_object(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    png = square_png(tmp_path)
    describe = spotlight_answerer()
    describe_now, chat_now, refine_now = threading.Event(), threading.Event(), threading.Event()

    def answer(body: dict[str, Any]) -> Any:
        text = request_text(body)
        if "What colour" in text:
            return held_until(chat_now, "It is red.")
        if "next click" in text:
            return held_until(refine_now, '{"action": "done"}')
        if "Describe only the highlighted object" in text:
            return held_until(describe_now, describe(body))
        return describe(body)

    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    async with image_page(sam2_tiny_128, settings, answer, png) as (page, errors):
        item = page.get_by_test_id("object-item")
        library = page.locator("[data-testid=library][data-for=image]")
        open_button = library.get_by_test_id("library-open")

        # The library refreshes when a description's verdict comes: the focus stays on the
        # library button it was on (it used to fall to the page: Tab started over).
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        await expect(item).to_have_count(1, timeout=60_000)
        await expect(library.get_by_test_id("library-item")).to_contain_text(
            "1 object ·", timeout=30_000
        )
        await open_button.evaluate("(b) => { b.dataset.before = ''; b.focus(); }")
        describe_now.set()
        await expect(page.get_by_test_id("verdict")).to_contain_text("verified", timeout=60_000)
        await expect(library.locator("[data-testid=library-open][data-before]")).to_have_count(
            0, timeout=30_000
        )  # drawn anew
        await expect(open_button).to_be_focused()

        # A chat answer streams in while the person has the description selected (to copy
        # it): the selection stays (the answer used to be drawn anew on every word).
        await page.get_by_test_id("chat-input").fill("What colour is it?")
        await page.get_by_test_id("chat-submit").click()
        answer_box = page.get_by_test_id("answer")
        await expect(answer_box.get_by_test_id("answer-pending")).to_be_visible()
        description = answer_box.locator(".description")
        await description.select_text()
        selected = await page.evaluate("() => window.getSelection().toString()")
        assert "red square" in selected
        chat_now.set()
        await expect(answer_box).to_contain_text("A: It is red.", timeout=60_000)
        assert await page.evaluate("() => window.getSelection().toString()") == selected

        # Auto-refine ends by itself (the VLM says done) while the keyboard is on Stop: the
        # focus goes to Auto-refine, shown in Stop's place, not to the page.
        await expect(item).to_have_class("selected")
        await page.get_by_test_id("auto-refine").click()
        stop = page.get_by_test_id("stop-refine")
        await stop.focus()
        await expect(stop).to_be_focused()
        refine_now.set()
        await expect(stop).to_be_hidden(timeout=60_000)
        await expect(page.get_by_test_id("auto-refine")).to_be_focused()

        # Back in Image mode the page takes the image's objects back from the server. A click
        # made before that answer comes keeps its object, listed, drawn and selected (the
        # answer, older than the click, used to replace them).
        image_id = await page.locator("#image-canvas").get_attribute("data-image-id")
        release, held = asyncio.Event(), asyncio.Event()
        await page.route(f"**/api/images/{image_id}", held_route(release, held))
        await page.get_by_test_id("mode-clip").click()
        await page.get_by_test_id("mode-image").click()
        await asyncio.wait_for(held.wait(), 30)
        # The click's description is held too: its events list every object of the image
        # (the server's word, as the reload's is), which would fill the list before the check.
        describe_now.clear()
        # (#1 is listed and selected as it was left: Esc, so the click makes a new object.)
        await expect(item).to_have_attribute("data-object-id", "1")
        await page.keyboard.press("Escape")
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [20, 100, 160, 120]))
        await expect(item.last).to_have_attribute("data-object-id", "2", timeout=60_000)
        await expect(item).to_have_count(2)
        release.set()
        await expect(item).to_have_count(2, timeout=30_000)
        await expect(page.locator("[data-testid=object-item][data-object-id='2']")).to_have_class(
            "selected"
        )
        await expect(page.locator("[data-testid=object-item][data-object-id='1']")).to_be_visible()
        describe_now.set()
        assert not errors, errors


async def test_an_answer_that_comes_late_does_not_undo_what_came_after_it(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    async with two_images_page(sam2_tiny_128, tmp_path) as (page, errors, first, second):
        canvas = page.locator("#image-canvas")
        library = page.locator("[data-testid=library][data-for=image]")
        items = library.get_by_test_id("library-item")
        row = {
            i: library.locator(f"[data-testid=library-item][data-id='{i}']")
            for i in (first, second)
        }

        # Open the first image (its answer held), then the second: the first's answer, late,
        # does not replace the second, opened after it.
        release, held = asyncio.Event(), asyncio.Event()
        await page.route(f"**/api/images/{first}", held_route(release, held))
        await row[first].get_by_test_id("library-open").click()
        await asyncio.wait_for(held.wait(), 30)
        await row[second].get_by_test_id("library-open").click()
        await page.wait_for_function(handled(f"/api/images/{second}", held=False))
        release.set()
        await page.wait_for_function(handled(f"/api/images/{first}"))
        await page.wait_for_function("() => window.__handled.decoding === 0")
        await expect(canvas).to_have_attribute("data-image-id", second)
        await page.unroute(f"**/api/images/{first}")

        # The library asks for its list (coming back to Image; answer held), then the first
        # image is deleted and the list asked again: the older list, late, does not bring it back.
        release, held = asyncio.Event(), asyncio.Event()
        await page.route("**/api/images", held_route(release, held))
        await page.get_by_test_id("mode-clip").click()
        await page.get_by_test_id("mode-image").click()
        await asyncio.wait_for(held.wait(), 30)
        page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await row[first].get_by_test_id("library-delete").click()
        await expect(items).to_have_count(1, timeout=30_000)
        release.set()
        await page.wait_for_function(handled("/api/images"))
        await expect(items).to_have_count(1)
        await expect(items).to_have_attribute("data-id", second)
        assert not errors, errors


async def test_an_image_upload_that_ends_while_clip_is_shown_leaves_the_clips_objects(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """An image uploads (slowly: its request held) while the person goes on in Clip and clicks an
    object there: when the upload ends, Clip's object list stays (it used to be emptied for the
    new image's), and the image shows once Image is open again."""
    from playwright.async_api import expect

    png = square_png(tmp_path)
    clip_path = write_clip(tmp_path / "short.mp4", frames=20)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    async with served_page(app, "image") as (page, errors):
        release, held = asyncio.Event(), asyncio.Event()
        await page.route("**/api/images", held_post(release, held))
        await page.get_by_test_id("image-input").set_input_files(str(png))
        await reached(held, page, "the upload's POST /api/images")

        await upload_clip(page, clip_path, ready=2)
        await click_clip(page, *square_center(0))
        item = page.get_by_test_id("object-item")
        await expect(item).to_have_count(1, timeout=60_000)
        release.set()
        # The image is loaded (its id is on the canvas once Image mode has taken it in).
        canvas = page.locator("#image-canvas")
        await expect(canvas).to_have_attribute("data-image-id", re.compile("."), timeout=60_000)
        await expect(item).to_have_count(1)

        await page.get_by_test_id("mode-image").click()
        await expect(page.get_by_test_id("image-info")).to_contain_text("encoded in")
        await expect(item).to_have_count(0)  # the new image's objects: none yet
        assert not errors, errors
