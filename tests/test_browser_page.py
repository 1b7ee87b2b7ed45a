"""The page as a person meets it, in headless Chromium: what it can do is shown before it is tried.

With no VLM configured every mode shows the same notice (why, and what to pass), and Find,
Describe and Ask are disabled with that reason as their tooltip. Random weights get a banner. An
error clears itself on the next action that works and can be dismissed. Esc deselects, Delete
removes the selected object.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from streamer.app import create_app
from streamer.clip.job import TrackJob
from streamer.settings import Settings
from tests.browser import (
    BROWSER_TEST,
    MEDIA_TO_PAGE,
    OVERLAY_PIXELS,
    browser_page,
    check_click_hint,
    check_esc_and_delete,
    square_png,
)
from tests.conftest import ServerThread
from tests.test_clip_media import square_center, write_clip
from workers.masks import rle_decode
from workers.reasoning.families import DEFAULT_VLM_MODEL

pytestmark = BROWSER_TEST
W, H = 160, 120


async def test_descriptions_off_and_random_weights_are_shown_before_anything_is_tried(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    png = square_png(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(png.read_bytes()[:60])

    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    with ServerThread(app) as server:
        async with browser_page() as page:
            errors: list[str] = []
            missing: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
            await page.goto(server.base_url)

            banner = page.get_by_test_id("weights-banner")
            await expect(banner).to_be_visible()
            await expect(banner).to_contain_text("random weights")
            await expect(banner).to_contain_text("meaningless")

            notice = page.get_by_test_id("vlm-notice")
            for mode in ("live", "clip", "image"):
                await page.get_by_test_id(f"mode-{mode}").click()
                await expect(notice).to_be_visible()
                await expect(notice).to_contain_text("--vlm-url")
                # Every control that needs the VLM, Find all and Auto-refine too.
                for testid in (
                    "find-submit",
                    "find-input",
                    "chat-submit",
                    "chat-input",
                    "find-all",
                    "find-all-candidates",
                    "auto-refine",
                ):
                    control = page.get_by_test_id(testid)
                    await expect(control).to_be_disabled()
                    await expect(control).to_have_attribute(
                        "title", re.compile("^descriptions are off")
                    )

            # Image mode (open now). While the image uploads (held here, as a slow network or
            # a big image to encode would), the status and a click say so; not "upload an
            # image first" to someone who just did.
            release = asyncio.Event()

            async def held(route: Any) -> None:
                if route.request.method == "POST":
                    await release.wait()
                await route.continue_()

            await page.route("**/api/images", held)
            await page.get_by_test_id("image-input").set_input_files(str(png))
            status = page.get_by_test_id("status")
            await expect(status).to_contain_text("uploading square.png")
            stage = await page.get_by_test_id("stage").bounding_box()
            assert stage is not None
            await page.mouse.click(
                stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2
            )
            error = page.get_by_test_id("error")
            await expect(error).to_contain_text("square.png is still uploading")
            release.set()
            await expect(status).to_contain_text("image: square.png", timeout=120_000)
            await page.unroute("**/api/images")
            await expect(page.get_by_test_id("image-info")).to_contain_text(
                "160x120", timeout=120_000
            )
            # It shows: "click again once it shows" no longer holds, and goes (it stayed).
            await expect(error).to_be_hidden()
            # A bad file is an error; the next action that works (a click that makes an
            # object) clears it.
            await page.get_by_test_id("image-input").set_input_files(str(broken))
            await expect(error).to_be_visible()
            first = await page.locator("#image-canvas").get_attribute("data-image-id")
            await page.get_by_test_id("image-input").set_input_files(str(png))
            await expect(error).to_be_hidden(timeout=120_000)
            # (clicks wait until the new upload is shown: before that a click says it is
            # still uploading)
            await expect(page.locator("#image-canvas")).not_to_have_attribute(
                "data-image-id", first or "", timeout=120_000
            )
            # A negative click with nothing selected is refused; the error can be dismissed.
            canvas = await page.locator("#image-canvas").bounding_box()
            assert canvas is not None
            await page.get_by_test_id("negative-toggle").check()
            cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
            await page.mouse.click(cx, cy)
            await expect(error).to_contain_text("select an object first")
            await page.get_by_test_id("error-dismiss").click()
            await expect(error).to_be_hidden()
            await page.mouse.click(cx, cy)
            await expect(error).to_be_visible()
            await page.get_by_test_id("negative-toggle").uncheck()
            await page.mouse.click(cx, cy)
            item = page.get_by_test_id("object-item")
            await expect(item).to_have_count(1, timeout=60_000)
            await expect(error).to_be_hidden()
            info = page.get_by_test_id("image-info")
            await expect(info).to_contain_text("mask in")  # the click's time

            # Describe is disabled with the reason; no description was attempted.
            describe = page.get_by_test_id("object-describe")
            await expect(describe).to_be_disabled()
            await expect(describe).to_have_attribute("title", re.compile("^descriptions are off"))
            await expect(page.get_by_test_id("answer")).not_to_contain_text("Q:")

            # The hint says what a click will do: refine over the selected object's mask,
            # a new object elsewhere.
            image_id = await page.locator("#image-canvas").get_attribute("data-image-id")
            # The image is the page's browser's: ask with its owner cookie.
            cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
            obj = httpx.get(f"{server.base_url}/api/images/{image_id}", cookies=cookies).json()[
                "objects"
            ][0]
            mask = rle_decode(obj["rle"])
            inside = np.argwhere(mask)
            outside = np.argwhere(~mask)
            assert len(inside) and len(outside)
            hint = page.get_by_test_id("click-hint")
            for (py, px), text in (
                (inside[len(inside) // 2], f"refine #{obj['id']}"),
                (outside[0], "new object"),
            ):
                x, y = await page.evaluate(
                    MEDIA_TO_PAGE, ["#image-canvas", float(px) + 0.5, float(py) + 0.5]
                )
                await page.mouse.move(x, y)
                await expect(hint).to_be_visible()
                await expect(hint).to_have_text(text)

            # Esc deselects; Delete removes the selected object.
            await check_esc_and_delete(page)
            # With no object left the line says the image again, not a mask's time (it stayed).
            await expect(info).to_have_text(re.compile(r"^160x120 · encoded in \d+ ms$"))

            assert not errors, errors
            assert not missing, f"404s while loading the page: {missing}"


async def test_clip_masks_show_while_tracking_runs_and_the_strip_shows_where(
    sam2_tiny_128: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clicked frame's mask is drawn before the job ends; the presence strip fills in. Then the
    click hint, Esc and Delete."""
    from playwright.async_api import expect

    # The job tracks the clicked frame, then waits before the next one until the test has seen
    # its mask with the job still running (a fast machine could finish first).
    go_on = threading.Event()
    step = TrackJob._step

    def held_step(job: TrackJob, tracker: Any, frame: Any, index: int, prompt: Any) -> Any:
        if prompt is None:
            go_on.wait(240)
        return step(job, tracker, frame, index, prompt)

    monkeypatch.setattr(TrackJob, "_step", held_step)
    clip_path = write_clip(tmp_path / "long.mp4", frames=100, width=W, height=H)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    with ServerThread(app) as server, contextlib.ExitStack() as let_go:
        let_go.callback(go_on.set)  # never leave the vision thread waiting
        async with browser_page() as page:
            await page.goto(server.base_url)
            await page.get_by_test_id("mode-clip").click()
            await page.get_by_test_id("upload-input").set_input_files(str(clip_path))
            await page.wait_for_function(
                "() => document.querySelector('#clip-video').readyState >= 2", timeout=60_000
            )
            toolbar = await page.locator("#clip-tools").bounding_box()
            # The whole clip is in the window (1200x800) under the toolbar and the library.
            stage = await page.get_by_test_id("stage").bounding_box()
            assert stage is not None and stage["y"] + stage["height"] <= 800, stage
            cx, cy = await page.evaluate(MEDIA_TO_PAGE, ["#clip-video", *square_center(0)])
            await page.mouse.click(cx, cy)
            # A mask on the stage while the progress bar still says running.
            await page.wait_for_function(
                f"""() => document.querySelector('[data-testid=progress]').dataset.state
                    === 'running' && ({OVERLAY_PIXELS})() > 0""",
                timeout=120_000,
            )
            go_on.set()
            progress = page.get_by_test_id("progress")
            await expect(progress).to_have_attribute("data-state", "done", timeout=240_000)
            # The strip: one row for the object, painted where it was tracked.
            painted = await page.evaluate(
                """() => { const c = document.querySelector('[data-testid=presence-strip]');
                  if (!c.width || !c.height) return 0;
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                  return n; }"""
            )
            assert painted > 0
            # The longer frame label did not push the stage down (no reflow).
            after = await page.locator("#clip-tools").bounding_box()
            assert toolbar is not None and after is not None
            assert after["height"] <= toolbar["height"] + 4 * 1 + 1  # + the strip's one row
            # Clip as in Image: the hint over the mask, Esc, Delete.
            await check_click_hint(page)
            await check_esc_and_delete(page)


async def test_a_question_that_gets_no_answer_shows_why(sam2_tiny_128: Any, tmp_path: Path) -> None:
    """The VLM answers its health check but no request in time: the question's answer line says
    why, not a bare 'Q:'. (A VLM that does not answer at all, or fails every chat with an error,
    disables Ask: test_vlm_banner.py, test_vlm_failures.py.)"""
    from playwright.async_api import expect

    from streamer.services import build_reasoner
    from tests.fakes.openai_server import ScriptedVLMServer

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    with (
        ScriptedVLMServer(model=DEFAULT_VLM_MODEL, first_token_delay_s=30) as failing,
        ServerThread(
            create_app(
                settings,
                vision_model=sam2_tiny_128,
                reasoner=build_reasoner(
                    Settings(
                        vlm_url=failing.url, vlm_family="qwen2.5-vl", vlm_first_token_timeout_s=1
                    )
                )[0],
                load_vision=False,
            )
        ) as server,
    ):
        async with browser_page() as page:
            await page.goto(server.base_url)
            await page.get_by_test_id("mode-image").click()
            await expect(page.get_by_test_id("vlm-notice")).to_be_hidden()
            await page.get_by_test_id("image-input").set_input_files(str(png))
            await expect(page.get_by_test_id("image-info")).to_contain_text(
                "160x120", timeout=120_000
            )
            x, y = await page.evaluate(MEDIA_TO_PAGE, ["#image-canvas", 70, 60])
            await page.mouse.click(x, y)
            await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=60_000)
            await page.get_by_test_id("chat-input").fill("What colour is it?")
            await page.get_by_test_id("chat-submit").click()
            answer = page.get_by_test_id("answer")
            await expect(answer).to_contain_text("Q: What colour is it?")
            await expect(answer).to_contain_text("A: no answer:", timeout=60_000)
            # Said once, as the question's answer: not in the error box too.
            await expect(page.get_by_test_id("error")).to_be_hidden()
