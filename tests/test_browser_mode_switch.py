"""Answers that arrive after the person left their mode (headless Chromium, Clip and Image): the
object list and the stage are the shown mode's, and nothing late from the other mode touches them.

A Clip frame's results fetched as the person went to Image were drawn on Image's stage (marking
Image's object as not in the picture); a delete of the shown clip or image that answered after the
person went to the other mode emptied that mode's list. In Image, an open or an upload that
answers after the person moved on to another image leaves that image shown, and its line.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from streamer.app import create_app
from streamer.settings import Settings
from tests.browser import (
    BROWSER_TEST,
    HANDLED,
    IMAGE_TO_PAGE,
    click_clip,
    handled,
    held_route,
    reached,
    served_page,
    square_png,
    upload_clip,
)
from tests.test_clip_media import write_clip

pytestmark = BROWSER_TEST


def library(page: Any, mode: str) -> Any:
    return page.locator(f"[data-testid=library][data-for={mode}]").get_by_test_id("library-item")


def library_row(page: Any, mode: str, item_id: str) -> Any:
    return page.locator(
        f"[data-testid=library][data-for={mode}] [data-testid=library-item][data-id='{item_id}']"
    )


def refused_when_released(status: int, code: str, detail: str) -> tuple[Any, Any, Any]:
    """A route handler that holds a request, then answers it with the server's refusal shape
    (`status`, `code`, `detail`) once `release` is set: (handler, held, release)."""
    held, release = asyncio.Event(), asyncio.Event()

    async def handler(route: Any) -> None:
        held.set()
        await release.wait()
        await route.fulfill(status=status, json={"code": code, "detail": detail})

    return handler, held, release


async def an_object_in_each_mode(page: Any, tmp_path: Path) -> None:
    """Image: square.png uploaded and clicked; then Clip: a clip uploaded and clicked (shown
    now). One object each."""
    from playwright.async_api import expect

    rows = page.get_by_test_id("object-item")
    await page.get_by_test_id("image-input").set_input_files(str(square_png(tmp_path)))
    await expect(page.get_by_test_id("image-info")).to_contain_text("encoded in", timeout=60_000)
    await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
    await expect(rows).to_have_count(1, timeout=60_000)
    await upload_clip(page, write_clip(tmp_path / "a.mp4", frames=12), ready=2)
    await click_clip(page, 70, 60)
    await expect(rows).to_have_count(1, timeout=60_000)


@pytest.fixture
def app(sam2_tiny_128: Any, tmp_path: Path) -> Any:
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    return create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)


async def test_a_clip_frame_fetched_as_the_person_goes_to_image_is_not_drawn_there(
    app: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    async with served_page(app, "image") as (page, errors):
        await an_object_in_each_mode(page, tmp_path)
        # The clip's next results come back saying its object is not on the frame; they are
        # held until the person is on Image.
        held, release = asyncio.Event(), asyncio.Event()

        async def late_results(route: Any) -> None:
            answer = await route.fetch()
            body = await answer.json()
            for per in body["frames"].values():
                for result in per.values():
                    result["present"] = False
            held.set()
            await release.wait()
            await route.fulfill(response=answer, body=json.dumps(body))

        await page.route("**/api/clips/*/results*", late_results)
        await click_clip(page, 40, 30)  # a second object: tracking, and the frame fetched again
        await reached(held, page, "the frame's results request")
        await page.get_by_test_id("mode-image").click()
        rows = page.get_by_test_id("object-item")
        await expect(rows).to_have_count(1, timeout=30_000)  # Image's own object, back
        release.set()
        await page.wait_for_timeout(1500)  # the late answer has been read
        await expect(page.get_by_test_id("object-absent")).to_have_count(0)
        await expect(rows).to_have_count(1)
        await expect(page.get_by_test_id("error")).to_be_hidden()
        assert not errors, errors


@pytest.mark.parametrize(("deleted", "other"), [("clip", "image"), ("image", "clip")])
async def test_a_delete_that_answers_after_the_person_left_its_mode_leaves_the_other_modes_list(
    deleted: str, other: str, app: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    async with served_page(app, "image") as (page, errors):
        await an_object_in_each_mode(page, tmp_path)
        rows = page.get_by_test_id("object-item")
        if deleted == "image":
            await page.get_by_test_id("mode-image").click()
            await expect(rows).to_have_count(1, timeout=30_000)
        items = library(page, deleted)
        await expect(items).to_have_count(1, timeout=30_000)
        held, release = asyncio.Event(), asyncio.Event()

        async def held_delete(route: Any) -> None:
            if route.request.method == "DELETE":
                held.set()
                await release.wait()
            await route.continue_()

        await page.route(f"**/api/{deleted}s/*", held_delete)
        page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await items.nth(0).get_by_test_id("library-delete").click()
        await asyncio.wait_for(held.wait(), 30)
        await page.get_by_test_id(f"mode-{other}").click()
        await expect(rows).to_have_count(1, timeout=30_000)  # the other mode's own object
        async with page.expect_response(lambda r: r.request.method == "DELETE"):
            release.set()
        await page.wait_for_timeout(1000)  # the answer has been handled
        await expect(rows).to_have_count(1)
        await page.get_by_test_id(f"mode-{deleted}").click()  # and the deleted one is gone
        await expect(items).to_have_count(0, timeout=30_000)
        await expect(rows).to_have_count(0)
        assert not errors, errors


async def two_images(page: Any, tmp_path: Path) -> tuple[str, str]:
    """square.png uploaded twice, the second shown: their ids (first, second)."""
    from playwright.async_api import expect

    items = library(page, "image")
    for n in (1, 2):
        await page.get_by_test_id("image-input").set_input_files(str(square_png(tmp_path)))
        await expect(items).to_have_count(n, timeout=60_000)
    await expect(page.get_by_test_id("image-info")).to_contain_text("encoded in", timeout=60_000)
    second, first = [await items.nth(i).get_attribute("data-id") for i in (0, 1)]
    return str(first), str(second)


async def test_an_image_deleted_while_it_opens_is_not_shown(app: Any, tmp_path: Path) -> None:
    """Open (held on its way back), then Delete, on the same image: the image shown before stays,
    and nothing is said of the deleted one (its open went on and said "the image could not be
    shown ... open it again from the library")."""
    from playwright.async_api import expect

    async with served_page(app, "image") as (page, errors):
        first, second = await two_images(page, tmp_path)
        await page.evaluate(HANDLED)
        release, held = asyncio.Event(), asyncio.Event()
        await page.route(f"**/api/images/{first}", held_route(release, held))
        row = library_row(page, "image", first)
        await row.get_by_test_id("library-open").click()
        await asyncio.wait_for(held.wait(), 30)
        page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await row.get_by_test_id("library-delete").click()
        await expect(library(page, "image")).to_have_count(1, timeout=30_000)
        release.set()
        await page.wait_for_function(handled(f"/api/images/{first}"), timeout=30_000)
        await expect(page.locator("#image-canvas")).to_have_attribute("data-image-id", second)
        await expect(page.get_by_test_id("image-info")).to_contain_text("encoded in")
        await expect(page.get_by_test_id("error")).to_be_hidden()
        assert not errors, errors


async def test_an_upload_refused_after_another_image_was_opened_leaves_that_one_shown(
    app: Any, tmp_path: Path
) -> None:
    """An upload on its way, then another image opened from the library; the upload is then
    refused: the opened image stays, its line too (it said "upload refused" over it)."""
    from playwright.async_api import expect

    async with served_page(app, "image") as (page, errors):
        first, second = await two_images(page, tmp_path)
        refused, held, release = refused_when_released(422, "bad_image", "not an image")
        await page.route("**/api/images", refused)
        await page.get_by_test_id("image-input").set_input_files(str(square_png(tmp_path)))
        await asyncio.wait_for(held.wait(), 30)
        await library_row(page, "image", first).get_by_test_id("library-open").click()
        canvas = page.locator("#image-canvas")
        await expect(canvas).to_have_attribute("data-image-id", first, timeout=30_000)
        release.set()
        await expect(page.get_by_test_id("error")).to_contain_text("not an image", timeout=30_000)
        await expect(page.get_by_test_id("image-info")).to_contain_text("encoded in")
        await expect(page.get_by_test_id("status")).not_to_contain_text("uploading")
        await expect(canvas).to_have_attribute("data-image-id", first)
        assert not errors, errors


async def test_a_click_refused_after_another_image_was_opened_is_not_said_over_it(
    app: Any, tmp_path: Path
) -> None:
    """A click on one image, refused after the person opened another: the error box stays
    empty over the image shown now (it said the first image's refusal there)."""
    from playwright.async_api import expect

    async with served_page(app, "image") as (page, errors):
        first, second = await two_images(page, tmp_path)
        refused, held, release = refused_when_released(409, "too_many_objects", "16 objects")
        await page.route(f"**/api/images/{second}/clicks", refused)
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        await asyncio.wait_for(held.wait(), 30)
        await library_row(page, "image", first).get_by_test_id("library-open").click()
        canvas = page.locator("#image-canvas")
        await expect(canvas).to_have_attribute("data-image-id", first, timeout=30_000)
        async with page.expect_response(f"**/api/images/{second}/clicks"):
            release.set()
        await page.wait_for_timeout(500)  # the refusal has been read
        await expect(page.get_by_test_id("error")).to_be_hidden()
        assert not errors, errors


# Page JS: while window.__holdDecodes is set, an image decode waits until window.__letDecode().
HOLD_DECODES = """() => {
  const decode = HTMLImageElement.prototype.decode;
  let waiting = [];
  window.__letDecode = () => { window.__holdDecodes = false; waiting.forEach((go) => go()); waiting = []; };
  HTMLImageElement.prototype.decode = function () {
    if (!window.__holdDecodes) return decode.call(this);
    return new Promise((go) => waiting.push(go)).then(() => decode.call(this));
  };
}"""


async def an_image_with_an_object(page: Any, tmp_path: Path) -> Any:
    """Upload square.png in Image mode and click its square: the object rows, once it is listed."""
    from playwright.async_api import expect

    rows = page.get_by_test_id("object-item")
    await page.get_by_test_id("image-input").set_input_files(str(square_png(tmp_path)))
    await expect(page.get_by_test_id("image-info")).to_contain_text("encoded in", timeout=60_000)
    await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
    await expect(rows).to_have_count(1, timeout=60_000)
    return rows


async def test_a_click_while_coming_back_to_image_stays(app: Any, tmp_path: Path) -> None:
    """Back on Image, its objects are asked again from the server; a click made while the
    picture decodes stays listed (the answer, asked before it, took it off the list)."""
    from playwright.async_api import expect

    async with served_page(app, "image") as (page, errors):
        rows = await an_image_with_an_object(page, tmp_path)
        await page.evaluate(HOLD_DECODES)
        await page.get_by_test_id("mode-clip").click()
        await page.evaluate("window.__holdDecodes = true")
        async with page.expect_response(re.compile(r"/api/images/[0-9a-f]+$")):  # the reload
            await page.get_by_test_id("mode-image").click()
        await page.keyboard.press("Escape")  # none selected: the click makes a new object
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [10, 10, 160, 120]))
        # Listed at once, after the first (listed as it was left till the reload shows).
        await expect(rows.last).to_have_attribute("data-object-id", "2", timeout=60_000)
        await expect(rows).to_have_count(2)
        await page.evaluate("window.__letDecode()")
        await expect(rows).to_have_count(2, timeout=30_000)
        await page.wait_for_timeout(1000)  # and nothing takes the new one off afterwards
        await expect(rows).to_have_count(2)
        assert not errors, errors


async def test_the_selected_object_is_still_selected_on_coming_back(
    app: Any, tmp_path: Path
) -> None:
    """Image's selected object is selected again when the person comes back from Clip (the
    list came back with nothing selected, and the panel showed no description), and listed at
    once, as it was left, not only once the server's copy of the image answers (its mask was
    drawn, the list empty, until then)."""
    import asyncio

    from playwright.async_api import expect

    async with served_page(app, "image") as (page, errors):
        rows = await an_image_with_an_object(page, tmp_path)
        await expect(rows).to_have_attribute("aria-current", "true")
        await page.get_by_test_id("mode-clip").click()
        await expect(rows).to_have_count(0)
        go, held = asyncio.Event(), asyncio.Event()

        async def reload(route: Any) -> None:
            held.set()
            await go.wait()
            await route.continue_()

        await page.route(re.compile(r"/api/images/[0-9a-f]+$"), reload)
        await page.get_by_test_id("mode-image").click()
        await asyncio.wait_for(held.wait(), 30)
        await expect(rows).to_have_count(1)
        await expect(rows).to_have_attribute("aria-current", "true")
        async with page.expect_response(re.compile(r"/api/images/[0-9a-f]+$")):
            go.set()
        await expect(rows).to_have_count(1)
        await expect(rows).to_have_attribute("aria-current", "true")
        assert not errors, errors
