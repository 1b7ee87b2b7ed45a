"""What a person saw in Live mode during a user-level review, in headless Chromium (a fake camera
over real WebRTC to the app).

A new object waiting its turn for the VLM says so; a tab refused for want of room retries by
itself and connects once a slot frees; a reload gets the session's objects back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser import BROWSER_TEST
from tests.test_browser_live import click_an_object, held_answers_page, tracking_page, write_y4m

pytestmark = BROWSER_TEST


async def test_a_new_object_waiting_its_turn_for_the_vlm_says_so(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """A page's share of the VLM is one request here, held at the VLM by the first object's
    description: a second object clicked meanwhile waits its turn on the server, and its row and
    the panel say so (not an empty answer and a Describe that the server would refuse)."""
    from playwright.async_api import expect

    async with held_answers_page(sam2_tiny_random, tmp_path, vlm_max_in_flight_per_session=1) as (
        server,
        page,
        gate,
    ):
        verdict = page.get_by_test_id("verdict")
        await click_an_object(server, page)
        await expect(verdict).to_contain_text("describing", timeout=60_000)
        await page.keyboard.press("Escape")
        box = await page.get_by_test_id("stage").bounding_box()
        await page.mouse.click(box["x"] + box["width"] * 0.15, box["y"] + box["height"] * 0.8)
        second = page.locator("[data-testid=object-item][data-object-id='2']")
        await expect(second).to_have_class("selected", timeout=60_000)
        # The page's first object is at the VLM: it says that one goes first.
        await expect(verdict).to_have_text(
            "waiting for the VLM… (ahead of it: this page's other descriptions and answers)"
        )
        describe = second.get_by_test_id("object-describe")
        await expect(describe).to_be_disabled()
        await page.screenshot(path=str(tmp_path / "live-waiting.png"))
        gate.set()
        await expect(verdict).to_contain_text("verified", timeout=120_000)
        await expect(describe).to_be_enabled()


async def test_a_tab_refused_for_want_of_room_tries_again_and_connects_once_a_slot_frees(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """One live session allowed, and it runs: a second tab says busy and why, its camera off,
    tries again by itself (saying so, with Try now), and connects once the first tab closes."""
    from playwright.async_api import expect

    clip = write_y4m(tmp_path / "cam.y4m")
    async with tracking_page(sam2_tiny_random, tmp_path, clip, max_sessions=1) as (server, page):
        second = await page.context.new_page()
        try:
            await second.goto(server.base_url)
            status = second.get_by_test_id("status")
            await expect(status).to_contain_text("busy", timeout=60_000)
            await expect(status).to_contain_text("trying again every")
            await expect(second.get_by_test_id("error")).to_contain_text(
                "live sessions are running"
            )
            # No session, so no camera: the preview is off while it waits.
            assert await second.evaluate(
                "() => document.querySelector('#live-video').srcObject === null"
            )
            # Try now asks again at once (still no room: still busy, the next try).
            retry = second.get_by_test_id("live-retry")
            await expect(retry).to_have_text("Try now")
            async with second.expect_response("**/api/live/offer") as asked:
                await retry.click()
            assert (await asked.value).status == 503
            await expect(status).to_contain_text("(try 2 of")
            # The first tab goes: the second connects by itself, and the refusal goes with it.
            await page.close()
            await expect(status).to_contain_text("fps", timeout=90_000)
            await expect(retry).to_be_hidden()
            await expect(second.get_by_test_id("error")).to_be_hidden()
        finally:
            await second.close()


async def test_a_reload_gets_the_live_objects_back(sam2_tiny_random: Any, tmp_path: Path) -> None:
    """A reload leaves the session as a dropped connection does: the reloaded page takes its
    objects back (a mode switch, which ends the session on purpose, does not)."""
    from playwright.async_api import expect

    clip = write_y4m(tmp_path / "cam.y4m")
    async with tracking_page(sam2_tiny_random, tmp_path, clip) as (server, page):
        oid = await click_an_object(server, page)
        items = page.get_by_test_id("object-item")
        await page.reload()
        await expect(page.get_by_test_id("status")).to_contain_text("fps", timeout=90_000)
        await expect(items).to_have_count(1, timeout=30_000)
        await expect(items).to_have_attribute("data-object-id", oid)
        assert await page.get_by_test_id("error").is_hidden()
        # Away and back: that session ended on purpose, nothing comes back.
        await page.get_by_test_id("mode-image").click()
        await page.get_by_test_id("mode-live").click()
        await expect(page.get_by_test_id("status")).to_contain_text("fps", timeout=90_000)
        await expect(items).to_have_count(0)
        # ... nor after a reload now (it has no objects to leave).
        await page.reload()
        await expect(page.get_by_test_id("status")).to_contain_text("fps", timeout=90_000)
        await expect(items).to_have_count(0)
        assert await page.get_by_test_id("error").is_hidden()
