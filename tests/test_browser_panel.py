"""The object panel as a person uses it, in headless Chromium (Image mode, a scripted VLM).

A click is marked on the stage until its answer comes, and its description is said to be on its
way before the first word; a long label fits a phone-wide screen (cut short, whole in its tooltip) instead of widening the
page; a row of the object list is reached and selected from the keyboard; a question shows that
its answer is coming until the first words of it arrive; a description cut short is said once,
where the person looks for it.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from streamer.settings import Settings
from tests.browser import BROWSER_TEST, IMAGE_TO_PAGE, image_page, square_png
from tests.conftest import request_text, spotlight_answerer

pytestmark = BROWSER_TEST

LONG = "a red square block with sharp corners and a flat matte face on a plain grey background"


def vlm_status_route(down: dict[str, str | None]) -> Any:
    """A route handler for GET /api/vlm (the page polls it): the VLM does not answer while
    `down["note"]` is set, saying that."""

    async def vlm_status(route: Any) -> None:
        note = down["note"]
        body = {"configured": True, "reachable": note is None, "note": note, "detail": ""}
        await route.fulfill(json=body)

    return vlm_status


async def test_the_object_panel_on_a_phone_from_the_keyboard_and_while_an_answer_comes(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    png = square_png(tmp_path)
    describe = spotlight_answerer(LONG)
    answer_now, describe_now = threading.Event(), threading.Event()

    async def held_description(body: dict[str, Any]) -> str:
        while not describe_now.is_set():
            await asyncio.sleep(0.05)
        return describe(body)

    async def held_chat() -> str:
        while not answer_now.is_set():
            await asyncio.sleep(0.05)
        return "It is red."

    def answer(body: dict[str, Any]) -> Any:
        text = request_text(body)
        if "What colour" in text:
            return held_chat()
        if "Describe only the highlighted object" in text:
            return held_description(body)
        return describe(body)

    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    async with image_page(sam2_tiny_128, settings, answer, png) as (page, errors):
        await page.set_viewport_size({"width": 390, "height": 844})
        # While the click's answer is on its way (held here, as a slow step would), the
        # stage marks where it landed; the marker goes when the object is listed.
        release = asyncio.Event()

        async def held(route: Any) -> None:
            await release.wait()
            await route.continue_()

        await page.route("**/api/images/*/clicks", held)
        at = await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120])
        await page.mouse.click(*at)
        marker = page.get_by_test_id("pending-click")
        await expect(marker).to_be_visible()
        box = await marker.bounding_box()
        assert box is not None
        assert abs(box["x"] + box["width"] / 2 - at[0]) < 4
        release.set()
        item = page.get_by_test_id("object-item")
        await expect(item).to_have_count(1, timeout=60_000)
        await expect(marker).to_be_hidden()
        await page.unroute("**/api/images/*/clicks")
        # The description is asked for at once; before its first word the panel says so.
        await expect(page.get_by_test_id("verdict")).to_have_text("describing…")
        describe_now.set()
        await expect(page.get_by_test_id("verdict")).to_contain_text("verified", timeout=60_000)
        label = item.locator(".label")
        await expect(label).to_contain_text("red square", timeout=30_000)

        # The long label is cut short on the screen, not the page widened past it (a
        # phone would zoom the whole page out); the whole label is its tooltip.
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide on a 390 px screen"
        text = await label.inner_text()
        await expect(label).to_have_attribute("title", text)

        # The keyboard selects a row as a click does.
        await page.keyboard.press("Escape")
        await expect(item).not_to_have_class("selected")
        await item.focus()
        await expect(item).to_be_focused()
        await page.keyboard.press("Enter")
        await expect(item).to_have_class("selected")
        await expect(item).to_have_attribute("aria-current", "true")
        await expect(item).to_be_focused()
        await page.keyboard.press(" ")
        await expect(item).not_to_have_class("selected")
        await expect(item).not_to_have_attribute("aria-current", "true")

        # A question: until the answer's first words come, the panel says one is coming.
        await page.get_by_test_id("chat-input").fill("What colour is it?")
        await page.get_by_test_id("chat-submit").click()
        answer_box = page.get_by_test_id("answer")
        await expect(answer_box).to_contain_text("Q: What colour is it?")
        pending = page.get_by_test_id("answer-pending")
        await expect(pending).to_be_visible()
        await expect(pending).to_contain_text("thinking")
        answer_now.set()
        await expect(answer_box).to_contain_text("A: It is red.", timeout=30_000)
        await expect(pending).to_have_count(0)

        # Delete from the keyboard removes the row that has the focus, not another selected one,
        # also when the list is drawn anew in between (here: the new object's description
        # arrives while the focus is on the first row; the redraw used to drop the focus to the
        # page, and Delete then removed the selected object).
        describe_now.clear()
        await page.keyboard.press("Escape")
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [20, 100, 160, 120]))
        await expect(item).to_have_count(2, timeout=60_000)
        first, second = item.nth(0), item.nth(1)
        await expect(second).to_have_class("selected")  # a new object is the selected one
        await first.focus()
        describe_now.set()
        await expect(second.locator(".label")).to_contain_text("red square", timeout=60_000)
        await expect(first).to_be_focused()
        await page.keyboard.press("Delete")
        await expect(item).to_have_count(1, timeout=30_000)
        await expect(item).to_have_attribute("data-object-id", "2")
        assert not errors, errors


async def test_a_description_cut_mid_way_is_said_once_where_its_object_shows(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """The connection drops while a description streams (no verdict, no error comes): the page
    says it stopped and how to try again, instead of 'describing…' for good, and says it once: on
    the verdict line while the panel shows that object (not in the error box too), in the error
    box, naming the object, while the panel shows another."""
    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    cut_off = "description failed part-way: the connection was lost · press Describe to try again"
    gates: dict[int, asyncio.Event] = {}

    def gate(oid: int) -> asyncio.Event:
        return gates.setdefault(oid, asyncio.Event())

    async def cut_short(route: Any) -> None:
        # Each object's description waits for its gate, then starts and breaks off.
        oid = int(route.request.url.rsplit("/objects/", 1)[1].split("/")[0])
        await gate(oid).wait()
        body = (
            f'{{"type": "description_start", "object_id": {oid}, "frame_index": 0, '
            '"frames": null}\n'
            f'{{"type": "description_token", "object_id": {oid}, "text": "a red", "attempt": 1}}\n'
        )
        await route.fulfill(status=200, content_type="application/x-ndjson", body=body)

    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        verdict, error = page.get_by_test_id("verdict"), page.get_by_test_id("error")
        item = page.get_by_test_id("object-item")
        await page.route("**/objects/*/describe", cut_short)
        gate(1).set()
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        await expect(item).to_have_count(1, timeout=60_000)
        await expect(verdict).to_have_text(cut_off, timeout=30_000)
        await expect(verdict).to_have_attribute("data-verdict", "failed")
        await expect(error).to_be_hidden()

        # Object 1 described again, and a new object 2 selected before that description
        # comes: the panel does not show object 1, so the error box says that it stopped.
        gate(1).clear()
        await item.nth(0).get_by_test_id("object-describe").click()
        await expect(verdict).to_contain_text("waiting for the VLM")
        await page.keyboard.press("Escape")
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [20, 100, 160, 120]))
        await expect(item).to_have_count(2, timeout=60_000)
        await expect(item.nth(1)).to_have_class("selected")
        gate(1).set()
        await expect(error).to_contain_text(
            "the description of object 1 stopped before it finished (the connection was lost): "
            "press Describe to try again",
            timeout=30_000,
        )
        await expect(verdict).to_contain_text("waiting for the VLM")  # object 2's, on its way
        # Object 2's breaks off where the panel shows it: its verdict line says so, the error
        # box does not.
        gate(2).set()
        await expect(verdict).to_have_text(cut_off, timeout=30_000)
        await expect(error).not_to_contain_text("object 2")
        await item.nth(0).click()
        await expect(verdict).to_have_text(cut_off)

        # Describe again (the route now lets it through): the description comes whole.
        await page.unroute("**/objects/*/describe")
        await item.nth(0).get_by_test_id("object-describe").click()
        await expect(verdict).to_contain_text("verified", timeout=60_000)
        assert errors == []


async def test_a_box_the_vlm_going_down_disables_gets_the_focus_back_when_it_returns(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """The person is typing in Find when the VLM goes down (the banner; the box is disabled and
    the focus falls to the page): the keys they go on pressing are not the page's shortcuts
    (Backspace removed the selected object), and when the VLM answers again the focus is back in
    the box, its text kept, to type on (it stayed on the page: Tab started over)."""
    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    down: dict[str, str | None] = {"note": None}
    vlm_status = vlm_status_route(down)

    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        await page.route("**/api/vlm", vlm_status)
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        item = page.get_by_test_id("object-item")
        await expect(item).to_have_class("selected", timeout=60_000)
        await expect(page.get_by_test_id("verdict")).to_contain_text("IoU", timeout=60_000)
        # Every request the page makes, noted as it makes it (a remove is a DELETE).
        await page.evaluate(
            """() => { window.__asked = []; const f = window.fetch;
              window.fetch = (u, init) => {
                window.__asked.push(`${(init && init.method) || 'GET'} ${u}`);
                return f(u, init);
              }; }"""
        )
        box = page.get_by_test_id("find-input")
        await box.click()
        await page.keyboard.type("Find: the red")
        down["note"] = "the VLM at http://127.0.0.1:1/v1 does not answer"
        await expect(page.get_by_test_id("vlm-banner")).to_be_visible(timeout=30_000)
        await expect(box).to_be_disabled()
        assert await page.evaluate("() => document.activeElement === document.body")
        await page.keyboard.press("Backspace")  # meant for the box
        asked = await page.evaluate("() => window.__asked")
        assert not any(a.startswith("DELETE") for a in asked), asked
        await expect(item).to_have_count(1)

        down["note"] = None
        await expect(page.get_by_test_id("vlm-banner")).to_be_hidden(timeout=30_000)
        await expect(box).to_be_enabled()
        await expect(box).to_be_focused()
        await page.keyboard.type(" square")
        await expect(box).to_have_value("Find: the red square")

        # The keyboard on the row's Describe when the VLM goes down: the button is disabled in
        # the redrawn list and the focus stays on its row (it fell to the page).
        describe = item.get_by_test_id("object-describe")
        await describe.focus()
        down["note"] = "the VLM at http://127.0.0.1:1/v1 does not answer"
        await expect(describe).to_be_disabled(timeout=30_000)
        await expect(item).to_be_focused()
        down["note"] = None
        await expect(describe).to_be_enabled(timeout=30_000)
        assert not errors, errors
