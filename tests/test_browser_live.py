"""Live mode in headless Chromium: a fake camera (generated .y4m) over real WebRTC to the app.

Clicks on the page like a person and checks what a person would see: connected status, mask pixels
on the overlay canvas, a streamed description with a verdict, a chat answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.browser import (
    BROWSER_TEST,
    CHROMIUM,
    OVERLAY_PIXELS,
    SYNCED_PAINT,
    check_click_hint,
    check_esc_and_delete,
    count_with_find_all,
    fake_camera_args,
    open_with_camera,
    reached,
    recording_bar_codes,
    write_indexed_y4m,
)
from tests.conftest import (
    ServerThread,
    moving_shape_frame,
    request_text,
    sessions_closed,
    spotlight_answerer,
    wait_until,
)
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_find_all import PROPOSE_ANYTHING
from workers.masks import rle_encode

pytestmark = BROWSER_TEST


def write_y4m(
    path: Path, width: int = 320, height: int = 240, frames: int = 60, fps: int = 15
) -> Path:
    """A moving red square as a raw YUV 4:2:0 clip; Chromium's fake camera loops it."""
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            rgb = moving_shape_frame(i * 3, width, height)
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


@contextlib.asynccontextmanager
async def tracking_page(
    model: Any,
    tmp_path: Path,
    clip: Path,
    init_script: str | None = None,
    reasoner: Any = None,
    **settings: Any,
) -> AsyncIterator[tuple[Any, Any]]:
    """The app (no VLM unless `reasoner`; more `settings`) and a Chromium whose camera plays
    `clip`, its page open (after `init_script`, if any) and tracked frames coming back: (server,
    page). The page's browser keeps its localStorage on reloads."""
    from playwright.async_api import async_playwright, expect

    config = Settings(weights="random", sam2_image_size=256, device="cpu", **settings)
    app = create_app(config, vision_model=model, reasoner=reasoner)
    with ServerThread(app) as server:
        async with async_playwright() as pw:
            context, page = await open_with_camera(pw, tmp_path / "profile", clip)
            try:
                if init_script:
                    await page.add_init_script(init_script)
                await page.goto(server.base_url)
                await expect(page.get_by_test_id("status")).to_contain_text("fps", timeout=90_000)
                yield server, page
            finally:
                await context.close()
        await sessions_closed(server, app, "the session to close after the page went away")


def held_spotlight_answers(gate: threading.Event) -> Any:
    """A scripted VLM's answerer: Spotlight answers, each held until `gate` is set."""
    answer = spotlight_answerer()

    async def held(body: dict[str, Any]) -> str:
        while not gate.is_set():
            await asyncio.sleep(0.05)
        return answer(body)

    return held


@contextlib.asynccontextmanager
async def held_answers_page(
    model: Any, tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[Any, Any, threading.Event]]:
    """A tracking page (more `settings`) whose VLM (scripted: Spotlight answers) holds each
    answer until the gate is set, for a test to see the page while it waits: (server, page, gate)."""
    gate = threading.Event()
    with ScriptedVLMServer(answer=held_spotlight_answers(gate)) as vlm:
        reasoner, _ = build_reasoner(Settings(vlm_url=vlm.url))
        clip = write_y4m(tmp_path / "clip.y4m")
        try:
            page_of = tracking_page(model, tmp_path, clip, reasoner=reasoner, **settings)
            async with page_of as (server, page):
                yield server, page, gate
        finally:
            gate.set()  # the VLM server's held answers end before it stops


async def click_an_object(server: Any, page: Any) -> str:
    """Click the stage's centre and wait until the object is listed and shows on a tracked frame
    (what a resume re-adds it from): its id."""
    from playwright.async_api import expect

    box = await page.get_by_test_id("stage").bounding_box()
    assert box is not None
    await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    item = page.get_by_test_id("object-item")
    try:
        await expect(item).to_have_count(1, timeout=60_000)
    except AssertionError:
        raise AssertionError(
            f"error {await page.get_by_test_id('error').text_content()!r} "
            f"status {await page.get_by_test_id('status').text_content()!r}"
        ) from None
    reg = server.app.state.live
    # Shown on a tracked frame after the click (the box a click notes is the clicked frame's).
    await wait_until(
        lambda: server.call(
            lambda: any(
                s.snapshot is not None and s.snapshot.visible for s in reg.sessions.values()
            )
        ),
        60,
        "the object to show on a frame",
    )
    return str(await item.get_attribute("data-object-id"))


async def test_a_description_under_way_when_the_connection_drops_is_said_to_have_stopped(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """The server drops the page while a description streams (slowly): the page reconnects and
    says the description stopped, instead of 'describing…' for good, once: on the verdict line
    of the object the panel shows, not in the error box too."""
    from playwright.async_api import expect

    clip = write_y4m(tmp_path / "clip.y4m")
    with ScriptedVLMServer(answer=spotlight_answerer(), token_delay_s=2.0) as vlm:
        reasoner, _ = build_reasoner(Settings(vlm_url=vlm.url))
        async with tracking_page(sam2_tiny_random, tmp_path, clip, reasoner=reasoner) as (
            server,
            page,
        ):
            await click_an_object(server, page)
            verdict = page.get_by_test_id("verdict")
            await expect(verdict).to_contain_text("describing", timeout=60_000)
            reg = server.app.state.live
            (old,) = server.call(lambda: list(reg.sessions))
            server.call(lambda: reg.sessions[old].close("websocket closed", ws_code=1012))
            await expect(verdict).to_contain_text(
                ": the connection was lost · press Describe to try again", timeout=60_000
            )
            await expect(verdict).to_contain_text("description failed")
            await expect(page.get_by_test_id("error")).to_be_hidden()
            await expect(page.get_by_test_id("status")).to_contain_text("fps", timeout=90_000)


async def test_a_question_waiting_for_its_answer_when_the_connection_drops_says_so(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """The server drops the page while a question's answer is on its way (held here): the answer
    says it was cut off and how to ask again, instead of 'A: thinking…' for good."""
    from playwright.async_api import expect

    describe = spotlight_answerer()
    answer_now = threading.Event()

    async def held_answer() -> str:
        while not answer_now.is_set():
            await asyncio.sleep(0.05)
        return "It is red."

    def answer(body: dict[str, Any]) -> Any:
        return held_answer() if "What colour" in request_text(body) else describe(body)

    clip = write_y4m(tmp_path / "clip.y4m")
    with ScriptedVLMServer(answer=answer) as vlm:
        reasoner, _ = build_reasoner(Settings(vlm_url=vlm.url))
        async with tracking_page(sam2_tiny_random, tmp_path, clip, reasoner=reasoner) as (
            server,
            page,
        ):
            try:
                await click_an_object(server, page)
                await expect(page.get_by_test_id("verdict")).to_contain_text("IoU", timeout=60_000)
                await page.get_by_test_id("chat-input").fill("What colour is it?")
                await page.get_by_test_id("chat-submit").click()
                answer_box = page.get_by_test_id("answer")
                await expect(answer_box.get_by_test_id("answer-pending")).to_be_visible()
                reg = server.app.state.live
                (old,) = server.call(lambda: list(reg.sessions))
                server.call(lambda: reg.sessions[old].close("websocket closed", ws_code=1012))
                await expect(answer_box).to_contain_text(
                    "A: no answer: the connection was lost: ask again once the status says "
                    "connected",
                    timeout=60_000,
                )
                await expect(page.get_by_test_id("error")).to_be_hidden()  # said once: there
                await expect(answer_box.get_by_test_id("answer-pending")).to_have_count(0)
                await expect(page.get_by_test_id("status")).to_contain_text("fps", timeout=90_000)
            finally:
                answer_now.set()


async def test_a_question_remove_or_clear_made_while_the_page_reconnects_loses_nothing(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """The server drops the page; while it reconnects (its new offer held here) a question cannot
    go: the page says so and the question stays in the box (it used to be emptied), to ask again
    once connected. A Remove or Clear objects cannot go either: said so, and the object stays
    listed and selected (the page took the remove as sent: it showed the error and deselected
    the object)."""
    from playwright.async_api import expect

    clip = write_y4m(tmp_path / "clip.y4m")
    with ScriptedVLMServer(answer=spotlight_answerer()) as vlm:
        reasoner, _ = build_reasoner(Settings(vlm_url=vlm.url))
        async with tracking_page(sam2_tiny_random, tmp_path, clip, reasoner=reasoner) as (
            server,
            page,
        ):
            await click_an_object(server, page)
            release = asyncio.Event()

            async def held(route: Any) -> None:
                await release.wait()
                await route.continue_()

            await page.route("**/api/live/offer", held)
            reg = server.app.state.live
            (old,) = server.call(lambda: list(reg.sessions))
            server.call(lambda: reg.sessions[old].close("websocket closed", ws_code=1012))
            status = page.get_by_test_id("status")
            await expect(status).to_have_attribute("data-state", "connecting", timeout=30_000)
            box = page.get_by_test_id("chat-input")
            await box.fill("What colour is it?")
            await page.get_by_test_id("chat-submit").click()
            await expect(page.get_by_test_id("error")).to_contain_text("not connected")
            await expect(box).to_have_value("What colour is it?")
            items = page.get_by_test_id("object-item")
            await items.first.get_by_test_id("object-remove").click()
            await expect(page.get_by_test_id("error")).to_contain_text(
                "not connected to the server yet: remove it again once the status says connected"
            )
            await expect(items).to_have_count(1)
            await expect(items.first).to_have_attribute("aria-current", "true")
            await page.get_by_test_id("reset-objects").click()  # Clear objects: the same
            await expect(page.get_by_test_id("error")).to_contain_text(
                "not connected to the server yet: clear them again once the status says connected"
            )
            await expect(items).to_have_count(1)
            await expect(items.first).to_have_attribute("aria-current", "true")

            release.set()
            await expect(status).to_contain_text("fps", timeout=90_000)
            await page.get_by_test_id("chat-submit").click()
            await expect(box).to_have_value("")
            # (Asked now; its answer depends on the object being in the resumed session's
            # newest frame, which is not this test's business.)
            await expect(page.get_by_test_id("answer")).to_contain_text("Q: What colour is it?")
            await expect(items).to_have_count(1)  # the server kept it too (resume)


async def test_page_tracks_and_describes_a_clicked_object(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    clip = write_y4m(tmp_path / "clip.y4m")
    with ScriptedVLMServer(answer=spotlight_answerer()) as vlm:
        settings = Settings(weights="random", sam2_image_size=256, device="cpu", vlm_url=vlm.url)
        reasoner, _ = build_reasoner(settings)
        app = create_app(settings, vision_model=sam2_tiny_random, reasoner=reasoner)
        with ServerThread(app) as server:
            async with async_playwright() as pw:
                context, page = await open_with_camera(pw, tmp_path / "profile", clip)
                try:
                    logs: list[str] = []
                    page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
                    await page.goto(server.base_url)
                    status = page.get_by_test_id("status")
                    try:
                        await expect(status).to_have_attribute(
                            "data-state", "connected", timeout=60_000
                        )
                    except AssertionError:
                        raise AssertionError(
                            f"status {await status.text_content()!r}; console: {logs[-10:]}"
                        ) from None
                    # An overlay has arrived once the server has processed frames.
                    await expect(status).to_contain_text("fps", timeout=30_000)

                    stage = page.get_by_test_id("stage")
                    box = await stage.bounding_box()
                    assert box is not None
                    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                    await page.mouse.click(cx, cy)

                    item = page.get_by_test_id("object-item")
                    await expect(item).to_have_count(1, timeout=60_000)
                    assert await item.get_attribute("data-object-id")

                    await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=60_000)

                    answer = page.get_by_test_id("answer")
                    await expect(answer).to_contain_text("red square", timeout=60_000)
                    verdict = page.get_by_test_id("verdict")
                    await expect(verdict).not_to_have_attribute(
                        "data-verdict", "pending", timeout=60_000
                    )
                    assert await verdict.get_attribute("data-verdict") == "verified"
                    await expect(verdict).to_contain_text("IoU")

                    await page.get_by_test_id("chat-input").fill("What colour is it?")
                    await page.get_by_test_id("chat-submit").click()
                    await expect(answer).to_contain_text("It is red.", timeout=60_000)

                    await page.screenshot(path=str(tmp_path / "live.png"))
                    assert await page.get_by_test_id("error").is_hidden()

                    # The page's RLE decoder reads what workers/masks.py writes.
                    mask = np.zeros((7, 9), bool)
                    mask[1:4, 2:6] = True
                    mask[6, 8] = True
                    decoded = await page.evaluate(
                        "async (rle) => Array.from((await import('/overlay.js')).decodeRLE(rle))",
                        rle_encode(mask),
                    )
                    assert decoded == mask.astype(np.uint8).ravel().tolist()

                    # A reload takes the object back with its description, verdict and chat,
                    # as the server kept them (the panel was empty: the page read the list only).
                    await page.reload()
                    await expect(status).to_contain_text("fps", timeout=90_000)
                    await expect(item).to_have_count(1, timeout=60_000)
                    await item.locator(".label").click()
                    await expect(answer).to_contain_text("red square", timeout=60_000)
                    await expect(answer).to_contain_text("It is red.")
                    await expect(verdict).to_have_attribute("data-verdict", "verified")
                    await expect(verdict).to_contain_text("IoU")
                    assert await page.get_by_test_id("error").is_hidden()

                    # Leaving the Live tab ends the session; coming back starts a new one.
                    reg = app.state.live
                    await page.get_by_test_id("mode-clip").click()
                    await wait_until(
                        lambda: server.call(lambda: len(reg.sessions)) == 0,
                        20,
                        "the live session to close when the tab changes",
                    )
                    assert await page.locator("#live-video").is_hidden()
                    await page.get_by_test_id("mode-live").click()
                    await expect(status).to_have_attribute(
                        "data-state", "connected", timeout=60_000
                    )
                    await expect(page.get_by_test_id("object-item")).to_have_count(0)
                finally:
                    await context.close()
            await sessions_closed(server, app, "the session to close after the page went away")


async def test_page_reconnects_after_the_server_drops_it_and_gets_its_objects_back(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    clip = write_y4m(tmp_path / "clip.y4m")
    # Every status text the page shows, so a short "reconnecting" is not missed.
    statuses = """window.__statuses = [];
        document.addEventListener('DOMContentLoaded', () => {
          const s = document.querySelector('[data-testid=status]');
          new MutationObserver(() => window.__statuses.push(s.textContent))
            .observe(s, {childList: true, characterData: true, subtree: true});
        });"""
    async with tracking_page(sam2_tiny_random, tmp_path, clip, statuses) as (server, page):
        status = page.get_by_test_id("status")
        # The figures are explained: dropped frames were skipped to stay live.
        await expect(status).to_have_attribute("title", re.compile("skipped to stay live"))
        reg = server.app.state.live
        # A drop with no objects: the page connects again and has nothing to say (it asked to
        # resume a session the server keeps nothing of, and said "no longer had its objects").
        (first,) = server.call(lambda: list(reg.sessions))
        server.call(lambda: reg.sessions[first].close("websocket closed", ws_code=1012), timeout=30)
        await wait_until(
            lambda: server.call(lambda: list(reg.sessions) not in ([], [first])),
            60,
            "the page to connect again",
        )
        await expect(status).to_contain_text("fps", timeout=90_000)
        assert await page.get_by_test_id("error").is_hidden()

        oid = await click_an_object(server, page)
        item = page.get_by_test_id("object-item")
        (old,) = server.call(lambda: list(reg.sessions))

        # The server drops the connection (as a restart or a network cut would).
        server.call(lambda: reg.sessions[old].close("websocket closed", ws_code=1012), timeout=30)
        # The page says it reconnects, then tracks again (until it notices the drop, its status
        # still shows the old session's figures).
        await page.wait_for_function(
            "() => window.__statuses.some((s) => s.includes('reconnecting'))", timeout=30_000
        )
        await expect(status).to_contain_text("fps", timeout=90_000)
        (new,) = server.call(lambda: list(reg.sessions))
        assert new != old
        # The same object, same id, tracked by the new session and in the page's list.
        await wait_until(
            lambda: server.call(lambda: int(oid) in reg.sessions[new].objects),
            60,
            "the new session to take the object back",
        )
        assert server.call(lambda: int(oid) in reg.sessions[new].tracker.tracker.objects)
        await expect(item).to_have_count(1, timeout=60_000)
        assert await item.get_attribute("data-object-id") == oid
        assert await page.get_by_test_id("error").is_hidden()


async def test_live_auto_refine_draws_clicks_and_stops(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """A VLM that never says done: each proposed click is drawn as it comes; Stop ends it, the
    clicks applied stay, and the session goes on."""
    import json

    from playwright.async_api import async_playwright, expect

    from tests.conftest import request_text

    # A still picture: the object's (random-weight) mask stays the same from frame to frame.
    clip = tmp_path / "still.y4m"
    with clip.open("wb") as f:
        f.write(b"YUV4MPEG2 W320 H240 F15:1 Ip A1:1 C420jpeg\n")
        still = cv2.cvtColor(moving_shape_frame(60, 320, 240), cv2.COLOR_RGB2YUV_I420).tobytes()
        for _ in range(30):
            f.write(b"FRAME\n" + still)
    clicks: list[int] = []

    def answer(body: dict[str, Any]) -> str:
        if "next click" not in request_text(body):
            return "a red square"
        clicks.append(1)
        # Qwen2.5-VL's pixels of the image it was sent; the point stays on the picture.
        return json.dumps({"action": "positive", "point_2d": [100 + len(clicks), 80]})

    with ScriptedVLMServer(answer=answer, token_delay_s=0.2) as vlm:
        settings = Settings(weights="random", sam2_image_size=256, device="cpu", vlm_url=vlm.url)
        reasoner, _ = build_reasoner(settings)
        app = create_app(settings, vision_model=sam2_tiny_random, reasoner=reasoner)
        with ServerThread(app) as server:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=fake_camera_args(clip)
                )
                try:
                    page = await browser.new_page(viewport={"width": 1200, "height": 800})
                    await page.goto(server.base_url)
                    status = page.get_by_test_id("status")
                    await expect(status).to_have_attribute(
                        "data-state", "connected", timeout=60_000
                    )
                    await expect(status).to_contain_text("fps", timeout=30_000)
                    box = await page.get_by_test_id("stage").bounding_box()
                    assert box is not None
                    await page.mouse.click(
                        box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                    )
                    await expect(page.get_by_test_id("object-item")).to_have_count(
                        1, timeout=60_000
                    )

                    await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=60_000)
                    await page.get_by_test_id("auto-refine").click()
                    dots = page.get_by_test_id("refine-click")
                    await expect(dots.first).to_be_visible(timeout=90_000)
                    await page.get_by_test_id("stop-refine").click()
                    refine_status = page.get_by_test_id("refine-status")
                    await expect(refine_status).to_contain_text("stopped", timeout=30_000)
                    await expect(page.get_by_test_id("stop-refine")).to_be_hidden()
                    await expect(page.get_by_test_id("auto-refine")).to_be_visible()
                    drawn = await dots.count()
                    assert 1 <= drawn < 4  # the bound (4) was not reached: Stop ended it
                    kept = (
                        "the 1 click applied stays"
                        if drawn == 1
                        else f"the {drawn} clicks applied stay"
                    )
                    assert kept in (await refine_status.inner_text())
                    await page.screenshot(path=str(tmp_path / "live-refine.png"))
                    # The object is still tracked; the session is still connected.
                    await expect(page.get_by_test_id("object-item")).to_have_count(1)
                    await expect(status).to_have_attribute("data-state", "connected")

                    # Again, and the connection drops under it: the page says it stopped and
                    # offers Auto-refine again (Stop stayed up for good, and said "object 1 is
                    # not being refined").
                    await page.get_by_test_id("auto-refine").click()
                    await expect(dots.first).to_be_visible(timeout=90_000)
                    reg = app.state.live
                    (sid,) = server.call(lambda: list(reg.sessions))
                    server.call(
                        lambda: reg.sessions[sid].close("websocket closed", ws_code=1012),
                        timeout=30,
                    )
                    # (said as a status: a screen reader hears it)
                    await expect(
                        page.get_by_role("status").filter(has_text="connection was lost")
                    ).to_have_text("stopped: the connection was lost", timeout=30_000)
                    await expect(page.get_by_test_id("auto-refine")).to_be_visible()
                    await expect(page.get_by_test_id("stop-refine")).to_be_hidden()
                    await expect(status).to_contain_text("fps", timeout=90_000)
                    await expect(page.get_by_test_id("object-item")).to_have_count(1)
                finally:
                    await browser.close()
    print("screenshot:", tmp_path / "live-refine.png")


async def test_synced_overlay_paints_each_mask_on_the_frame_it_was_computed_on(
    sam2_tiny_random: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames carry their index as a bar code; the server records which frame each overlay was
    computed on, and the synced picture under that overlay's masks must be that very frame. The
    toggle keeps the session, its object and the tracker's memory of it, both ways, and is
    remembered across a reload."""
    from playwright.async_api import expect

    from streamer.live import tracking

    computed_on: dict[int, int] = {}  # overlay frame_index -> bar code of the frame tracked

    monkeypatch.setattr(
        tracking.LiveTracker, "step", recording_bar_codes(tracking.LiveTracker.step, computed_on)
    )
    clip = write_indexed_y4m(tmp_path / "indexed.y4m")
    async with tracking_page(sam2_tiny_random, tmp_path, clip) as (server, page):
        status = page.get_by_test_id("status")
        toggle = page.get_by_test_id("synced-toggle")
        assert not await toggle.is_checked()
        assert await page.get_by_test_id("synced-frame").is_hidden()
        oid = await click_an_object(server, page)
        item = page.get_by_test_id("object-item")
        reg = server.app.state.live

        def session() -> tuple[str, int]:
            """(the one session's id, frames its tracker has stepped)"""
            (s,) = server.call(lambda: list(reg.sessions.values()))
            return s.id, s.tracker.tracker.frame_index

        first, frames_before = session()
        await toggle.check()
        await expect(page.get_by_test_id("synced-frame")).to_be_visible(timeout=90_000)
        await expect(status).to_contain_text("synced", timeout=30_000)
        # The same session goes on: its tracker counts on from before the switch.
        now, frames_after = session()
        assert now == first and frames_after > frames_before
        await expect(item).to_have_count(1, timeout=60_000)
        assert await item.get_attribute("data-object-id") == oid
        await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=60_000)

        painted: dict[int, int] = {}
        for _ in range(200):
            got = await page.evaluate(SYNCED_PAINT)
            if got is not None:
                painted[got["frameIndex"]] = got["code"]
            if len(painted) >= 4:
                break
            await page.wait_for_timeout(100)
        assert len(painted) >= 4, painted
        for frame_index, code in painted.items():
            assert computed_on[frame_index] == code, (frame_index, painted, computed_on)
        # Different frames were painted, not one frozen picture.
        assert len(set(painted.values())) >= 2, painted
        assert await page.get_by_test_id("error").is_hidden()

        await page.reload()
        await expect(status).to_contain_text("synced", timeout=90_000)
        assert await page.get_by_test_id("synced-toggle").is_checked()

        # And back: the live camera with the newest masks, the same session still (the reloaded
        # page's own, its object taken back from the page before the reload).
        await wait_until(
            lambda: len(server.call(lambda: list(reg.sessions))) == 1, 30, "the old page to go"
        )
        await expect(item).to_have_count(1, timeout=60_000)
        first = session()[0]
        await toggle.uncheck()
        await expect(page.get_by_test_id("synced-frame")).to_be_hidden(timeout=30_000)
        await expect(status).not_to_contain_text("synced", timeout=30_000)
        frames_before = session()[1]
        await wait_until(
            lambda: session() != (first, frames_before), 60, "the session to track on, unsynced"
        )
        assert session()[0] == first
        await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=60_000)
        await expect(item).to_have_count(1)
        assert await page.get_by_test_id("error").is_hidden()


async def test_live_click_hint_esc_and_delete(
    sam2_tiny_random: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live as Image: the hint says "refine #id" over the selected object's mask and "new object"
    elsewhere; Esc deselects, Delete removes. Random weights give masks over nearly the whole
    frame, so each overlay's mask is replaced by the left half of the frame: what is checked is
    the page reading Live's overlays (server frame pixels to its own video), not SAM2."""
    import json

    from playwright.async_api import expect

    from streamer.live import tracking

    step = tracking.LiveTracker.step

    def left_half_step(self: Any, frame: Any) -> Any:
        snapshot, overlay = step(self, frame)
        msg = json.loads(overlay)
        h, w = snapshot.rgb.shape[:2]
        mask = np.zeros((h, w), bool)
        mask[:, : w // 2] = True
        for o in msg["objects"]:
            o.update(rle=rle_encode(mask), box=[0, 0, w // 2, h], present=True)
        return snapshot, json.dumps(msg)

    monkeypatch.setattr(tracking.LiveTracker, "step", left_half_step)
    clip = write_y4m(tmp_path / "clip.y4m")
    async with tracking_page(sam2_tiny_random, tmp_path, clip) as (_, page):
        box = await page.get_by_test_id("stage").bounding_box()
        assert box is not None
        await page.mouse.click(box["x"] + box["width"] / 4, box["y"] + box["height"] / 2)
        await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=60_000)
        await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=60_000)
        await check_click_hint(page)
        await check_esc_and_delete(page)


async def test_live_find_all_counts_and_tracks_on_the_page(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """Find all / count in Live: regions proposed on the newest frame, the VLM (scripted: yes to
    every region) picks them, the count shows and each one is listed and tracked."""
    from playwright.async_api import expect

    clip = write_y4m(tmp_path / "clip.y4m")
    with ScriptedVLMServer(answer='{"answers": ["yes", "yes", "yes", "yes"]}') as vlm:
        reasoner = build_reasoner(Settings(vlm_url=vlm.url))[0]
        async with tracking_page(
            sam2_tiny_random, tmp_path, clip, reasoner=reasoner, **PROPOSE_ANYTHING
        ) as (server, page):
            count = await count_with_find_all(page, "how many squares?", "squares")
            await expect(page.get_by_test_id("object-item")).to_have_count(count, timeout=30_000)
            reg = server.app.state.live
            await wait_until(
                lambda: server.call(
                    lambda: any(len(s.objects) == count for s in reg.sessions.values())
                ),
                30,
                "the session to track every counted object",
            )
            await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=60_000)
            await expect(page.get_by_test_id("find-all")).to_be_visible()
            await expect(page.get_by_test_id("stop-find")).to_be_hidden()
            assert await page.get_by_test_id("error").is_hidden()


async def test_a_page_past_max_sessions_says_the_server_is_busy_and_why(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """A second tab while the one live session allowed runs: the status says busy and the error
    is the server's own reason (its 503 body), not a bare HTTP status."""
    from playwright.async_api import expect

    clip = write_y4m(tmp_path / "cam.y4m")
    async with tracking_page(sam2_tiny_random, tmp_path, clip, max_sessions=1) as (server, page):
        second = await page.context.new_page()
        try:
            await second.goto(server.base_url)
            await expect(second.get_by_test_id("status")).to_contain_text("busy", timeout=60_000)
            await expect(second.get_by_test_id("error")).to_contain_text(
                "live sessions are running", timeout=30_000
            )
        finally:
            await second.close()


# Page JS, before the page's own: every camera stream the page opens is kept in window.__streams;
# while window.__slowCamera is set, the browser takes a second to answer (a permission prompt, a
# camera waking up).
RECORD_CAMERA = """
(() => {
  const md = navigator.mediaDevices;
  const open = md.getUserMedia.bind(md);
  window.__streams = [];
  md.getUserMedia = async (constraints) => {
    const slow = !!window.__slowCamera;
    const stream = await open(constraints);
    window.__streams.push(stream);
    if (slow) await new Promise((r) => setTimeout(r, 1000));
    return stream;
  };
})();
"""


async def test_leaving_live_turns_the_camera_off_after_a_quick_live_clip_live(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """Live, Clip, Live again while the browser still answers the first camera request: the
    page connects with the second camera, and leaving Live stops every camera it opened (the
    late first answer took the second's place, and the camera stayed on after Live was left)."""
    from playwright.async_api import expect

    clip = write_y4m(tmp_path / "clip.y4m")
    async with tracking_page(sam2_tiny_random, tmp_path, clip, RECORD_CAMERA) as (_, page):
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.get_by_test_id("mode-clip").click()
        await page.evaluate("window.__slowCamera = true")
        await page.get_by_test_id("mode-live").click()  # its camera answers in a second
        await page.get_by_test_id("mode-clip").click()
        await page.evaluate("window.__slowCamera = false")
        await page.get_by_test_id("mode-live").click()
        await page.wait_for_function("window.__streams.length === 3")
        await page.wait_for_timeout(1500)  # the first answer has come, late
        await expect(page.get_by_test_id("status")).to_contain_text("fps", timeout=60_000)
        await page.get_by_test_id("mode-clip").click()
        live = await page.evaluate(
            "window.__streams.flatMap((s) => s.getTracks()).filter((t) => t.readyState === 'live').length"
        )
        assert live == 0, "a camera stayed on after Live was left"
        assert not errors, errors


async def test_a_reconnect_that_fails_after_live_was_left_leaves_the_camera_off(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """The server drops Live's session and the page reconnects; the person goes to Clip while
    the reconnect's offer is on its way, and that offer then fails: Clip is left alone (it said
    "reconnecting…", and the retry turned the camera back on under Clip)."""
    from playwright.async_api import expect

    clip = write_y4m(tmp_path / "clip.y4m")
    async with tracking_page(sam2_tiny_random, tmp_path, clip, RECORD_CAMERA) as (server, page):
        await click_an_object(server, page)
        held, release = asyncio.Event(), asyncio.Event()

        async def failing_offer(route: Any) -> None:
            held.set()
            await release.wait()
            await route.abort()  # the network failed under the request

        await page.route("**/api/live/offer", failing_offer)
        reg = server.app.state.live
        (old,) = server.call(lambda: list(reg.sessions))
        server.call(lambda: reg.sessions[old].close("websocket closed", ws_code=1012), timeout=30)
        await reached(held, page, "the reconnect's offer")
        await page.get_by_test_id("mode-clip").click()
        release.set()
        await page.wait_for_timeout(3000)  # a retry comes within a second of a failure
        live = await page.evaluate(
            "window.__streams.flatMap((s) => s.getTracks()).filter((t) => t.readyState === 'live').length"
        )
        assert live == 0, "the camera came back on under Clip"
        assert "reconnecting" not in (await page.get_by_test_id("status").inner_text())
        await expect(page.get_by_test_id("error")).to_be_hidden()


async def test_a_session_the_server_ends_for_good_turns_the_camera_off_and_says_why(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """The server ends the session with a fatal error (here an internal one): the page says why
    and stays so, with the camera off, instead of "connecting (disconnected)" with the camera
    still on and nothing reconnecting. The person's object is not lost to the server's bug: the
    next start of Live takes it back (it was gone)."""
    from playwright.async_api import expect

    clip = write_y4m(tmp_path / "clip.y4m")
    async with tracking_page(sam2_tiny_random, tmp_path, clip, RECORD_CAMERA) as (server, page):
        await click_an_object(server, page)
        item = page.get_by_test_id("object-item")
        oid = await item.get_attribute("data-object-id")
        reg = server.app.state.live
        (sid,) = server.call(lambda: list(reg.sessions))

        async def broken() -> None:
            raise RuntimeError("a bug in a session task")

        server.call(lambda: reg.sessions[sid].spawn(broken(), "broken"))
        status = page.get_by_test_id("status")
        await expect(status).to_contain_text("closed: internal error: a bug", timeout=30_000)
        await page.wait_for_timeout(3000)  # the peer connection notices the close meanwhile
        await expect(status).to_contain_text("closed: internal error: a bug")
        await expect(status).to_contain_text("back to Live to take your objects back")
        live = await page.evaluate(
            "window.__streams.flatMap((s) => s.getTracks()).filter((t) => t.readyState === 'live').length"
        )
        assert live == 0, "the camera stayed on after the session ended"
        await page.get_by_test_id("mode-clip").click()  # and back, as the status says
        await page.get_by_test_id("mode-live").click()
        await expect(status).to_contain_text("fps", timeout=60_000)
        await expect(item).to_have_count(1, timeout=60_000)
        await expect(item).to_have_attribute("data-object-id", oid or "")
        await expect(page.get_by_test_id("error")).to_be_hidden()
