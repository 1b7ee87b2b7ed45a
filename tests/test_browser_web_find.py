"""A Find on the page ends on its own answer, in headless Chromium (fake camera, scripted VLM).

In Live a checked Find's answer is an event on the session's websocket (find_result, naming the
phrase it answers, or an error), not a request settling: the page's "finding ..." line and its
disabled Find wait for the answer that is the running Find's, and another Find's leaves them be.
A Find that the person's own Clear objects stopped says so on that line, in Live and in Image
(whose answer is its request settling), not as an error.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from streamer.objects.events import FindResultMessage
from streamer.settings import Settings
from tests.browser import BROWSER_TEST, image_page, served_page, square_png
from tests.test_browser_live import held_answers_page, held_spotlight_answers

pytestmark = BROWSER_TEST


async def test_another_finds_answer_leaves_a_live_find_waiting_for_its_own(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """While a Live Find of "the red square" waits for the VLM, a find_result for "the blue cup"
    (another Find's answer, arriving late) comes over the websocket: the page shows it, and the
    running Find is still shown as finding with its button disabled. Its own answer then ends
    it, and tracks the square. The phrase is typed with a trailing NEL (U+0085), which the
    server trims and JS's trim() does not: its answer names "the red square" all the same."""
    from playwright.async_api import expect

    async with held_answers_page(sam2_tiny_random, tmp_path) as (server, page, gate):
        find = page.get_by_test_id("find-submit")
        pending = page.get_by_test_id("find-pending")
        await page.get_by_test_id("find-input").fill("Find: the red square\u0085")
        await find.click()
        await expect(pending).to_contain_text('finding "the red square')
        await expect(find).to_be_disabled()

        reg = server.app.state.live
        (sid,) = server.call(lambda: list(reg.sessions))
        other = FindResultMessage(phrase="the blue cup", objects=[])
        server.call(lambda: reg.sessions[sid].send(other))
        # The page has read it once it shows it (the store tells the Find box first).
        await expect(page.get_by_test_id("error")).to_contain_text(
            'nothing matching "the blue cup" was found', timeout=30_000
        )
        await expect(pending).to_contain_text('finding "the red square', timeout=1_000)
        await expect(find).to_be_disabled(timeout=1_000)

        gate.set()
        await expect(pending).to_be_hidden(timeout=60_000)
        await expect(find).to_be_enabled()
        await expect(page.get_by_test_id("object-item")).to_have_count(1)


async def _find_then_clear(page: Any, release: Any) -> None:
    """Find "the red square" while the VLM holds its answers, click Clear objects, then let the
    VLM answer: the page says the Find stopped on the Find box's line, not as an error."""
    from playwright.async_api import expect

    pending = page.get_by_test_id("find-pending")
    await page.get_by_test_id("find-input").fill("Find: the red square")
    await page.get_by_test_id("find-submit").click()
    await expect(pending).to_contain_text('finding "the red square"')
    await page.get_by_test_id("reset-objects").click()
    release()
    await expect(pending).to_have_text(
        'the Find of "the red square" stopped: the objects were cleared while it ran (find again)',
        timeout=60_000,
    )
    await expect(page.get_by_test_id("find-submit")).to_be_enabled()
    await expect(page.get_by_test_id("error")).to_be_hidden()
    await expect(page.get_by_test_id("object-item")).to_have_count(0)
    # The next Find's own line takes its place, and goes with its answer.
    await page.get_by_test_id("find-submit").click()
    await expect(pending).to_be_hidden(timeout=60_000)


async def test_a_live_find_stopped_by_clear_objects_is_said_as_such_not_as_an_error(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """Live: the Find's answer is an event. It was shown as a red error for the person's own
    Clear objects."""
    async with held_answers_page(sam2_tiny_random, tmp_path) as (_, page, gate):
        await _find_then_clear(page, gate.set)


async def test_an_image_find_stopped_by_clear_objects_is_said_as_such_not_as_an_error(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """Image: the Find's answer is its request settling, the same line as in Live."""
    gate = threading.Event()
    held = held_spotlight_answers(gate)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    try:
        async with image_page(sam2_tiny_128, settings, held, square_png(tmp_path)) as (
            page,
            errors,
        ):
            await _find_then_clear(page, gate.set)
            assert not errors, errors
    finally:
        gate.set()  # the VLM server's held answers end before it stops


async def test_a_clip_find_selects_what_it_found_and_an_empty_one_names_no_frame(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """Clip: a Find that finds nothing says so on the Find box's line, as an answer, not in the
    red error box (it was), and leaves the frame label alone (it said "last Find on frame 0" of a
    Find that started nothing); one that finds the square names its frame and selects the
    object, as Live's Find does (it left nothing selected), and the line goes."""
    from playwright.async_api import expect

    from streamer.app import create_app
    from streamer.services import build_reasoner
    from tests.conftest import CheckedFindScript
    from tests.fakes.openai_server import ScriptedVLMServer
    from tests.test_clip_media import square_at, write_clip

    x0, y0, side = square_at(0)
    script = CheckedFindScript([], [], (160, 120))
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    with ScriptedVLMServer(answer=script) as vlm:
        reasoner = build_reasoner(Settings(vlm_url=vlm.url))[0]
        app = create_app(settings, vision_model=sam2_tiny_128, reasoner=reasoner, load_vision=False)
        async with served_page(app, "clip") as (page, errors):
            await page.get_by_test_id("upload-input").set_input_files(
                str(write_clip(tmp_path / "desk.mp4", frames=10))
            )
            label = page.get_by_test_id("frame-label")
            await expect(label).to_contain_text("frame 0 / 9", timeout=60_000)
            await page.get_by_test_id("find-input").fill("Find: the red square")
            await page.get_by_test_id("find-submit").click()
            pending = page.get_by_test_id("find-pending")
            await expect(pending).to_have_text(
                'nothing matching "the red square" in the frame', timeout=60_000
            )
            await expect(page.get_by_test_id("error")).to_be_hidden()
            await expect(label).not_to_contain_text("last Find")

            script.boxes = [(x0, y0, x0 + side, y0 + side)]
            await page.get_by_test_id("find-submit").click()
            item = page.get_by_test_id("object-item")
            await expect(item).to_have_count(1, timeout=60_000)
            await expect(item).to_have_attribute("aria-current", "true")
            await expect(label).to_contain_text("last Find on frame 0")
            await expect(pending).to_be_hidden()
            assert not errors, errors


async def test_a_find_that_left_candidates_out_says_so_on_its_line_not_as_an_error(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """Image: a Find whose VLM accepted one of two candidates tracks it and says what it left
    out on the Find box's line, with what it found (it was a red error over a Find that had
    worked), in the words of the page's switch that keeps them; the next Find's own line takes
    its place, and goes with its answer."""
    from playwright.async_api import expect

    from tests.conftest import CheckedFindScript

    find = CheckedFindScript([(50, 40, 90, 80), (0, 0, 40, 30)], ["yes", "no"], (160, 120))
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    async with image_page(sam2_tiny_128, settings, find, square_png(tmp_path)) as (page, errors):
        pending = page.get_by_test_id("find-pending")
        await page.get_by_test_id("find-input").fill("Find: the red square")
        await page.get_by_test_id("find-submit").click()
        await expect(pending).to_have_text(
            'found 1 object; 1 candidate the VLM did not accept as "the red square" '
            "(ask for all candidates to keep them)",
            timeout=60_000,
        )
        await expect(page.get_by_test_id("object-item")).to_have_count(1)
        await expect(page.get_by_test_id("error")).to_be_hidden()
        # The switch the note asks for is named as the note names it.
        switch = page.locator("label.find-option", has=page.get_by_test_id("find-all-candidates"))
        await expect(switch).to_contain_text("keep all candidates")
        # The next Find (both candidates accepted now: no note) takes the line, and it goes.
        await page.get_by_test_id("find-submit").click()
        await expect(pending).to_be_hidden(timeout=60_000)
        await expect(page.get_by_test_id("object-item")).to_have_count(3)
        assert not errors, errors
