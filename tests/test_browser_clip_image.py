"""Clip and image modes in headless Chromium: upload, click on the stage like a person, see overlay pixels and the description start, download exports.

The clip half seeks to a middle frame before clicking, so the track has to run both ways; the
downloaded JSON must have a mask on every frame. In both halves a click on a new object starts its
description (a scripted VLM answers), as in Live. The image half also drops a corrupt file and
expects the error panel to say so.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.browser import (
    BROWSER_TEST,
    HANDLED,
    MEDIA_TO_PAGE,
    OVERLAY_PIXELS,
    browser_page,
    upload_clip,
)
from tests.conftest import ServerThread, spotlight_answerer
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_media import square_center, write_clip

pytestmark = BROWSER_TEST
FRAMES, W, H = 40, 160, 120


async def test_clip_and_image_modes_in_chromium(model: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    clip_path = write_clip(tmp_path / "moving.mp4", frames=FRAMES, width=W, height=H)
    png = tmp_path / "square.png"
    img = np.full((H, W, 3), 90, np.uint8)  # not black: the Spotlight dims the background
    img[40:80, 50:90] = (230, 20, 20)
    Image.fromarray(img).save(png)
    broken = tmp_path / "broken.png"
    broken.write_bytes(png.read_bytes()[:60])

    vlm = ScriptedVLMServer(answer=spotlight_answerer(chat_answer="A red square sliding right."))
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    with (
        vlm,
        ServerThread(
            create_app(
                settings,
                vision_model=model,
                reasoner=build_reasoner(Settings(vlm_url=vlm.url))[0],
                load_vision=False,
            )
        ) as server,
    ):
        async with browser_page(profile=tmp_path / "profile", accept_downloads=True) as page:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(server.base_url)

            # -- clip mode -------------------------------------------------------------
            await upload_clip(page, clip_path, ready=2, timeout=30_000)
            # Seek to frame 15 with the scrubber, then click the square there.
            scrub = page.get_by_role("slider", name="Frame")  # named for a screen reader too
            await scrub.fill("15")
            await page.wait_for_function(
                "() => { const v = document.querySelector('#clip-video');"
                " return !v.seeking && Math.abs(v.currentTime - 0.61) < 0.02; }",
                timeout=30_000,
            )
            await expect(page.get_by_test_id("frame-label")).to_contain_text("frame 15 /")
            cx, cy = await page.evaluate(MEDIA_TO_PAGE, ["#clip-video", *square_center(15)])
            await page.mouse.click(cx, cy)
            await expect(page.get_by_test_id("frame-label")).to_contain_text(
                "last click on frame 15"
            )
            progress = page.get_by_test_id("progress")
            await expect(progress).to_have_attribute("data-state", "done", timeout=180_000)
            await expect(progress).to_contain_text("100%")
            await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
            # The new object was described without another click, on its clicked frame (the
            # scripted VLM gives a one-frame describe `description`, a track's `chat_answer`),
            # and the spotlit object is verified.
            answer, verdict = page.get_by_test_id("answer"), page.get_by_test_id("verdict")
            await expect(answer).to_contain_text("a red square block", timeout=60_000)
            await expect(verdict).to_have_attribute("data-verdict", "verified", timeout=60_000)
            await expect(page.get_by_test_id("object-item")).to_contain_text("a red square")
            # The library's line follows: the clip has its object, described.
            listed = page.locator("[data-testid=library][data-for=clip] [data-testid=library-item]")
            await expect(listed).to_contain_text("1 object ·")
            # Frames before the click have overlays too (the backward pass).
            await scrub.fill("2")
            await expect(page.get_by_test_id("frame-label")).to_contain_text("frame 2 /")
            await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)

            async with page.expect_download() as dl_info:
                await page.get_by_test_id("export-json").click()
            doc = json.loads(Path(await (await dl_info.value).path()).read_text())
            frames = doc["objects"][0]["frames"]
            assert [f["frame"] for f in frames] == list(range(FRAMES))

            async with page.expect_download(timeout=120_000) as dl_info:
                await page.get_by_test_id("export-video").click()
            data = Path(await (await dl_info.value).path()).read_bytes()
            with av.open(io.BytesIO(data)) as c:
                assert sum(1 for _ in c.decode(video=0)) == FRAMES
            # Once its objects are cleared the clip has nothing to export, and the links say so
            # (they stayed enabled: the page read the objects the clip was opened with).
            await page.get_by_test_id("reset-objects").click()
            await expect(page.get_by_test_id("object-item")).to_have_count(0)
            for export in ("export-json", "export-video"):
                await expect(page.get_by_test_id(export)).to_have_attribute(
                    "title", re.compile("nothing to export yet")
                )

            # -- image mode ------------------------------------------------------------
            await page.get_by_test_id("mode-image").click()
            await page.get_by_test_id("image-input").set_input_files(str(broken))
            await expect(page.get_by_test_id("error")).to_contain_text("not an image we can read")
            await page.get_by_test_id("image-input").set_input_files(str(png))
            # (the encode shares the vision thread and two cores with everything else here)
            await expect(page.get_by_test_id("image-info")).to_contain_text(
                "encoded in", timeout=60_000
            )
            await expect(page.get_by_test_id("error")).to_be_hidden()
            assert await page.evaluate(OVERLAY_PIXELS) == 0
            cx, cy = await page.evaluate(MEDIA_TO_PAGE, ["#image-canvas", 70, 60])
            await page.mouse.click(cx, cy)
            await expect(page.get_by_test_id("image-info")).to_contain_text("decoder only")
            await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
            await expect(page.get_by_test_id("objects").locator("li")).to_have_count(1)
            # The click started the description at once, and the spotlit object is verified.
            await expect(answer).to_contain_text("a red square block", timeout=60_000)
            await expect(verdict).to_have_attribute("data-verdict", "verified", timeout=60_000)
            await page.get_by_test_id("chat-input").fill("What is it?")
            await page.get_by_test_id("chat-submit").click()
            await expect(answer).to_contain_text("A red square sliding right.")
            listed = page.locator(
                "[data-testid=library][data-for=image] [data-testid=library-item]"
            )
            await expect(listed).to_contain_text("1 object · described")
            # A screen reader hears which object or file a button acts on (every row's and
            # every library item's were "Describe", "Remove", "Open", "Delete" alike).
            for name in ("Describe #1", "Remove #1", "Open square.png", "Delete square.png"):
                await expect(page.get_by_role("button", name=name, exact=True)).to_be_visible()
            await page.screenshot(path=str(tmp_path / "image.png"))
            # Back from another mode, the image's objects are the server's, described as kept.
            await page.get_by_test_id("mode-clip").click()
            await page.get_by_test_id("mode-image").click()
            await expect(page.get_by_test_id("objects").locator("li")).to_have_count(1)
            await expect(page.get_by_test_id("objects")).to_contain_text("red square")
            await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
            # Clear objects means the same in every mode: the list and the overlay empty.
            await page.get_by_test_id("reset-objects").click()
            await expect(page.get_by_test_id("objects").locator("li")).to_have_count(0)
            await page.wait_for_function(f"({OVERLAY_PIXELS})() == 0", timeout=30_000)
            # A question now has no object to go to (it went to the cleared one, and came back
            # "no object 1 in this image").
            await page.get_by_test_id("chat-input").fill("And now?")
            await page.get_by_test_id("chat-submit").click()
            await expect(page.get_by_test_id("error")).to_contain_text(
                "select an object in the list (or click one) before asking about it"
            )
            await expect(answer).not_to_contain_text("And now?")
            assert errors == []


async def test_a_clip_description_still_streaming_stays_with_its_clip(
    model: Any, tmp_path: Path
) -> None:
    """A click on the clip starts its description; the person goes to Image before it ends. The
    description finishes on the clip (the server keeps it); Image's list stays empty, and the
    clip shows it when the person comes back."""

    with describing_slowly(model, tmp_path, more=20) as (app, clip_path):
        await _go_to_image_while_describing(app, clip_path, tmp_path)


@contextlib.contextmanager
def describing_slowly(model: Any, tmp_path: Path, more: int) -> Iterator[tuple[Any, Path]]:
    """An app whose VLM describes a clip's object as "a red square" and `more` times "and more",
    a word each 0.2 s, and the clip: (app, clip path)."""
    clip_path = write_clip(tmp_path / "moving.mp4", frames=FRAMES, width=W, height=H)
    answer = spotlight_answerer(description="a red square " + "and more " * more)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    with ScriptedVLMServer(answer=answer, token_delay_s=0.2) as vlm:
        reasoner = build_reasoner(Settings(vlm_url=vlm.url))[0]
        yield (
            create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False),
            clip_path,
        )


async def _go_to_image_while_describing(app: Any, clip_path: Path, tmp_path: Path) -> None:
    from playwright.async_api import expect

    with ServerThread(app) as server:
        async with browser_page(profile=tmp_path / "profile") as page:
            await page.goto(server.base_url)
            await page.evaluate(HANDLED)
            await upload_clip(page, clip_path, ready=2, timeout=30_000)
            cx, cy = await page.evaluate(MEDIA_TO_PAGE, ["#clip-video", *square_center(0)])
            await page.mouse.click(cx, cy)
            items = page.get_by_test_id("object-item")
            await expect(items).to_have_count(1, timeout=60_000)
            await expect(page.get_by_test_id("answer")).to_contain_text("a red", timeout=60_000)
            await page.get_by_test_id("mode-image").click()
            # The description's stream (the page's only one) read to its end on Image: the page
            # has had its last events, verdict and all, and the server has kept the verdict.
            await page.wait_for_function("() => window.__handled.streams >= 1", timeout=120_000)

            def verdicts() -> list[Any]:
                return [o.verdict for c in app.state.clips.items.values() for o in c.objects]

            assert server.call(verdicts) == ["verified"]
            await expect(items).to_have_count(0)
            await page.get_by_test_id("mode-clip").click()
            await expect(items).to_have_count(1, timeout=30_000)
            await expect(items).to_contain_text("a red square")
            # Still selected, as when the person left: its description and verdict, as the
            # server kept them.
            await expect(items).to_have_attribute("aria-current", "true")
            answer, verdict = page.get_by_test_id("answer"), page.get_by_test_id("verdict")
            await expect(answer).to_contain_text("a red square and more")
            await expect(verdict).to_have_attribute("data-verdict", "verified")
            await page.screenshot(path=str(tmp_path / "clip-back.png"))
    print("screenshot:", tmp_path / "clip-back.png")


async def test_coming_back_to_a_clip_mid_description_shows_the_rest_as_such(
    model: Any, tmp_path: Path
) -> None:
    """The person goes to Image and back while the clip's new object is still being described:
    the words still to come show as the rest of a description ("…" first; they showed as if it
    began there), its Describe waits for it (it was offered, and refused as busy), and the
    verdict brings the whole text."""
    from playwright.async_api import expect

    with describing_slowly(model, tmp_path, more=60) as (app, clip_path):
        with ServerThread(app) as server:
            async with browser_page(profile=tmp_path / "profile") as page:
                await page.goto(server.base_url)
                await upload_clip(page, clip_path, ready=2, timeout=30_000)
                cx, cy = await page.evaluate(MEDIA_TO_PAGE, ["#clip-video", *square_center(0)])
                await page.mouse.click(cx, cy)
                items = page.get_by_test_id("object-item")
                answer = page.get_by_test_id("answer")
                await expect(answer).to_contain_text("a red", timeout=60_000)
                await page.get_by_test_id("mode-image").click()
                await page.get_by_test_id("mode-clip").click()
                await expect(items).to_have_count(1, timeout=30_000)
                # Still selected (it came back unselected, the panel empty mid-description).
                await expect(items).to_have_attribute("aria-current", "true")
                await expect(answer).to_have_text(re.compile(r"^… "), timeout=30_000)
                await expect(page.get_by_test_id("object-describe")).to_be_disabled()
                verdict = page.get_by_test_id("verdict")
                await expect(verdict).to_have_attribute("data-verdict", "verified", timeout=90_000)
                await expect(answer).to_contain_text("a red square and more")
                await expect(answer).not_to_contain_text("…")
                await expect(page.get_by_test_id("object-describe")).to_be_enabled()
