"""The page says what is happening, in headless Chromium (Image mode, a scripted VLM).

A description that stops part-way says it failed, why, and that Describe tries again, also
once the error box is gone; an answer cut off mid-way is marked so, with the reason; Ask waits
while an answer streams; a checked Find says it is finding, its button disabled until the answer;
a verdict whose check could not run says it was not checked, and why. The events that end a
stream early are written here (the page's reading of them is what is tested).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from streamer.settings import Settings
from tests.browser import BROWSER_TEST, IMAGE_TO_PAGE, image_page, square_png
from tests.conftest import spotlight_answerer

pytestmark = BROWSER_TEST

STALLED = "the VLM stopped answering (no word in 30 s): is the vLLM server overloaded?"


def ndjson(*events: dict[str, Any]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def answering_with(body: str) -> Any:
    """A route handler that answers an object request with these NDJSON lines."""

    async def fulfill(route: Any) -> None:
        await route.fulfill(status=200, content_type="application/x-ndjson", body=body)

    return fulfill


async def hold_finds(page: Any) -> list[asyncio.Event]:
    """Each checked Find's request waits for its own event, in the list in the order they came."""
    releases: list[asyncio.Event] = []

    async def held(route: Any) -> None:
        release = asyncio.Event()
        releases.append(release)
        await release.wait()
        await route.continue_()

    await page.route("**/api/images/*/find", held)
    return releases


async def arrived(releases: list[asyncio.Event], n: int) -> None:
    """Until n Find requests are held."""
    while len(releases) < n:
        await asyncio.sleep(0.05)


async def find_the_square(page: Any) -> tuple[Any, Any]:
    """Ask a checked Find of the red square: the Find button and the line that says it runs."""
    find, pending = page.get_by_test_id("find-submit"), page.get_by_test_id("find-pending")
    await page.get_by_test_id("find-input").fill("Find: the red square")
    await find.click()
    return find, pending


async def click_the_square(page: Any) -> None:
    from playwright.async_api import expect

    await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
    await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=60_000)


async def test_a_description_or_an_answer_that_stops_part_way_says_so(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    start = {"type": "description_start", "object_id": 1, "frame_index": 0, "frames": None}
    first_words = {"type": "description_token", "object_id": 1, "text": "A red", "attempt": 1}
    stalled = {"type": "error", "code": "vlm_error", "message": STALLED, "object_id": 1}
    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        verdict, answer = page.get_by_test_id("verdict"), page.get_by_test_id("answer")
        # The VLM stalls after its first words: the panel says the description failed, and
        # why, not "checking…" over the half text.
        await page.route(
            "**/objects/*/describe",
            answering_with(ndjson(start, first_words, {**stalled, "request": "describe"})),
        )
        await click_the_square(page)
        await expect(verdict).to_contain_text(STALLED, timeout=30_000)
        await expect(verdict).to_contain_text("description failed part-way")
        await expect(verdict).to_contain_text("press Describe to try again")
        await expect(verdict).to_have_attribute("data-verdict", "failed")
        await expect(verdict).not_to_contain_text("checking")
        # Said once, where the object's answer is: not again in the error box.
        await expect(page.get_by_test_id("error")).to_be_hidden()
        await page.screenshot(path=str(tmp_path / "description-failed.png"))

        # A question: while its answer streams Ask waits (the server would refuse a second
        # one), with why as its tooltip; the answer stops part-way and is marked cut off.
        release = asyncio.Event()

        async def answer_then_stall(route: Any) -> None:
            await release.wait()
            words = {"type": "chat_token", "object_id": 1, "text": "It is"}
            await answering_with(ndjson(words, {**stalled, "request": "chat"}))(route)

        await page.route("**/objects/*/chat", answer_then_stall)
        ask = page.get_by_test_id("chat-submit")
        await page.get_by_test_id("chat-input").fill("What colour is it?")
        await ask.click()
        await expect(answer).to_contain_text("Q: What colour is it?")
        await expect(ask).to_be_disabled()
        # (the focus goes to the box, not to the page, where Backspace removes an object)
        await expect(page.get_by_test_id("chat-input")).to_be_focused()
        await expect(ask).to_have_attribute(
            "title", "still answering the last question about #1: ask again once its answer is in"
        )
        await page.get_by_test_id("chat-input").fill("And its shape?")
        await page.get_by_test_id("chat-input").press("Enter")  # Enter waits too
        await expect(page.get_by_test_id("chat-input")).to_have_value("And its shape?")
        await page.screenshot(path=str(tmp_path / "ask-waits.png"))
        release.set()
        await expect(answer).to_contain_text(f"A: It is… (cut off: {STALLED})", timeout=30_000)
        await expect(page.get_by_test_id("error")).to_be_hidden()  # said once, there
        await expect(ask).to_be_enabled()
        await page.screenshot(path=str(tmp_path / "answer-cut-off.png"))

        # An answer whose stream ends with neither its end nor an error (a connection closed
        # mid-way): marked cut off, and Ask is free again (it waited for good).
        words = {"type": "chat_token", "object_id": 1, "text": "It weighs"}
        await page.unroute("**/objects/*/chat")
        await page.route("**/objects/*/chat", answering_with(ndjson(words)))
        await page.get_by_test_id("chat-input").fill("Is it heavy?")
        await ask.click()
        await expect(answer).to_contain_text(
            "A: It weighs… (cut off: the answer stopped before it finished"
        )
        await expect(ask).to_be_enabled()

        # Describe again (the VLM answers whole now): the failure goes, the verdict comes.
        await page.unroute("**/objects/*/describe")
        await page.get_by_test_id("object-describe").click()
        await expect(verdict).to_contain_text("verified", timeout=120_000)
        await expect(verdict).not_to_contain_text("failed")
        assert errors == []


async def test_a_find_shows_it_is_running_and_an_unchecked_verdict_says_why(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        await click_the_square(page)
        verdict = page.get_by_test_id("verdict")
        await expect(verdict).to_contain_text("verified", timeout=120_000)
        # A checked Find waits for the VLM (held here): the page says it is finding, and Find
        # is disabled with why until the answer comes.
        releases = await hold_finds(page)
        find, pending = await find_the_square(page)
        await expect(pending).to_have_text(
            'finding "the red square"… (the VLM checks each candidate)'
        )
        await expect(find).to_be_disabled()
        await expect(page.get_by_test_id("find-input")).to_be_focused()
        await expect(find).to_have_attribute(
            "title", 'finding "the red square": wait for its answer'
        )
        await page.screenshot(path=str(tmp_path / "finding.png"))
        await asyncio.wait_for(arrived(releases, 1), 30)
        releases[0].set()
        await expect(pending).to_be_hidden(timeout=60_000)
        await expect(find).to_be_enabled()
        await page.unroute("**/api/images/*/find")

        # A verdict whose check could not run (no IoU): "not checked", and why.
        unchecked = {
            "type": "verdict",
            "object_id": 1,
            "description": "a red square",
            "verdict": "unverified",
            "iou": None,
            "attempts": 1,
        }
        start = {"type": "description_start", "object_id": 1, "frame_index": 0, "frames": None}
        note = "grounding it failed: the VLM answered 500"
        for sent, shown in [
            ({**unchecked, "note": note}, f"unverified · not checked: {note}"),
            (unchecked, "unverified · not checked"),
            ({**unchecked, "iou": 0.31, "attempts": 3}, "unverified · IoU 0.31 (3 attempts)"),
        ]:
            await page.route("**/objects/*/describe", answering_with(ndjson(start, sent)))
            await page.get_by_test_id("object-describe").first.click()
            await expect(verdict).to_have_text(shown)
            await page.unroute("**/objects/*/describe")
            if "note" in sent:
                await page.screenshot(path=str(tmp_path / "not-checked.png"))
        assert errors == []


async def test_clip_says_which_frame_was_clicked_and_drops_a_finished_render(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    from tests.test_browser_clip_states import clip_page, upload_and_click
    from tests.test_clip_media import square_center

    async with clip_page(sam2_tiny_128, tmp_path) as page:
        await upload_and_click(page, tmp_path, [square_center(0)])
        # The label says in words which frame the last click was on.
        label = page.get_by_test_id("frame-label")
        await expect(label).to_contain_text("last click on frame 0")
        progress = page.get_by_test_id("progress")
        await expect(progress).to_have_attribute("data-state", "done", timeout=120_000)
        # The overlay video rendered and downloaded: the bar says the clip's tracking again,
        # not "Rendering the overlay video: 100%" for good.
        async with page.expect_download(timeout=120_000):
            await page.get_by_test_id("export-video").click()
        await expect(progress).to_contain_text("Tracked 1 object through")
        await page.screenshot(path=str(tmp_path / "rendered.png"))
        await expect(progress).not_to_contain_text("Rendering")


async def test_a_live_find_shows_it_is_running_until_its_answer_or_the_connection_goes(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """Live's Find answers with an event on the websocket (not a request that settles): the page
    says it is finding until that event, and says so when the connection goes first."""
    from playwright.async_api import expect

    from tests.test_browser_live import held_answers_page

    async with held_answers_page(sam2_tiny_random, tmp_path) as (server, page, gate):
        find, pending = page.get_by_test_id("find-submit"), page.get_by_test_id("find-pending")
        await page.get_by_test_id("find-input").fill("Find: the red square")
        await find.click()
        await expect(pending).to_contain_text('finding "the red square"')
        await expect(find).to_be_disabled()
        gate.set()
        await expect(pending).to_be_hidden(timeout=60_000)
        await expect(find).to_be_enabled()

        # Again, and the server drops the page before the answer.
        gate.clear()
        await find.click()
        await expect(pending).to_contain_text('finding "the red square"')
        reg = server.app.state.live
        (old,) = server.call(lambda: list(reg.sessions))
        server.call(lambda: reg.sessions[old].close("websocket closed", ws_code=1012))
        await expect(page.get_by_test_id("error")).to_contain_text(
            'the Find of "the red square" stopped before its answer', timeout=60_000
        )
        await expect(pending).to_be_hidden()
        gate.set()
        await expect(page.get_by_test_id("status")).to_contain_text("fps", timeout=90_000)
        await expect(find).to_be_enabled()


async def test_an_earlier_find_answering_late_leaves_the_running_find_shown(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """A Find left running by a mode switch answers while a later Find runs: the later one is
    still shown as finding, its button still waits (the earlier answer ended it)."""
    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        releases = await hold_finds(page)
        find, pending = await find_the_square(page)
        await expect(pending).to_be_visible()
        await page.get_by_test_id("mode-clip").click()
        await page.get_by_test_id("mode-image").click()
        await expect(pending).to_be_hidden()  # the switch let that Find go
        await find_the_square(page)
        await expect(pending).to_be_visible()
        async with page.expect_event("requestfinished", lambda r: r.url.endswith("/find")):
            releases[0].set()  # the earlier Find answers now
        # Were the later Find ended by it, the line would go within milliseconds.
        with pytest.raises(AssertionError):
            await expect(pending).to_be_hidden(timeout=3_000)
        await expect(find).to_be_disabled()

        await asyncio.wait_for(arrived(releases, 2), 30)
        releases[1].set()
        await expect(pending).to_be_hidden(timeout=60_000)
        await expect(find).to_be_enabled()
        assert errors == []
