"""What a person saw in the panel during a user-level review, in headless Chromium (Image mode, a
scripted VLM; the events that stream an answer are written here, the page's reading of them is
what is tested).

A long answer streams into view (the box follows it, unless the person scrolled up to read);
an object waiting its turn for the VLM says so, Describe disabled, until its description starts or
is refused; a VLM that stopped answering is said once and truly; a long or junk label is readable.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamer.settings import Settings
from tests.browser import BROWSER_TEST, IMAGE_TO_PAGE, image_page, reached, square_png
from tests.conftest import spotlight_answerer
from tests.test_browser_answer_states import answering_with, ndjson
from tests.test_browser_panel import vlm_status_route

pytestmark = BROWSER_TEST

# Page JS: how the answer box is scrolled: {top, bottom} in px from its content's top and bottom
# edges to the visible part's (bottom 0: the newest text shows), and whether it overflows at all.
ANSWER_SCROLL = """() => {
  const a = document.querySelector('[data-testid=answer]');
  return {top: a.scrollTop, bottom: a.scrollHeight - a.scrollTop - a.clientHeight,
          overflows: a.scrollHeight > 2 * a.clientHeight};
}"""

# Page JS: scroll the answer box to `top` as a person would, and wait for its scroll event.
SCROLL_ANSWER_TO = """(top) => new Promise((done) => {
  const a = document.querySelector('[data-testid=answer]');
  a.addEventListener('scroll', done, {once: true});
  a.scrollTop = top === null ? a.scrollHeight : top;
})"""


def long_text(words: str, n: int) -> str:
    return " ".join(f"{words} {i}." for i in range(n))


def chat_events(object_id: int, answer: str) -> str:
    pieces = [answer[i : i + 40] for i in range(0, len(answer), 40)]
    tokens = [{"type": "chat_token", "object_id": object_id, "text": p} for p in pieces]
    return ndjson(*tokens, {"type": "chat_done", "object_id": object_id, "answer": answer})


async def ask(page: Any, question: str, answer: str) -> None:
    from playwright.async_api import expect

    await page.unroute("**/objects/*/chat")
    await page.route("**/objects/*/chat", answering_with(chat_events(1, answer)))
    await page.get_by_test_id("chat-input").fill(question)
    await page.get_by_test_id("chat-submit").click()
    await expect(page.get_by_test_id("answer")).to_contain_text(answer[-30:])


async def test_a_long_answer_streams_into_view_unless_the_person_scrolled_up_to_read(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    description = long_text("A red square with a long story to tell, line", 60)
    start = {"type": "description_start", "object_id": 1, "frame_index": 0, "frames": None}
    tokens = [
        {"type": "description_token", "object_id": 1, "text": description[i : i + 50], "attempt": 1}
        for i in range(0, len(description), 50)
    ]
    verdict = {
        "type": "verdict",
        "object_id": 1,
        "description": description,
        "verdict": "verified",
        "iou": 0.9,
        "attempts": 1,
    }
    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        await page.route("**/objects/*/describe", answering_with(ndjson(start, *tokens, verdict)))
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        await expect(page.get_by_test_id("verdict")).to_contain_text("verified", timeout=60_000)
        # Far more text than the box holds, and the box shows its end (the old page stayed at
        # the top: the answer went on below what could be seen).
        scroll = await page.evaluate(ANSWER_SCROLL)
        assert scroll["overflows"] and scroll["bottom"] <= 2, scroll

        # A question's answer below it streams into view too.
        first = long_text("It is made of red plastic, part", 12)
        await ask(page, "What is it made of?", first)
        scroll = await page.evaluate(ANSWER_SCROLL)
        assert scroll["bottom"] <= 2, scroll

        # The person scrolls up to read the description: the next answer leaves them there.
        await page.evaluate(SCROLL_ANSWER_TO, 0)
        await ask(page, "How big is it?", long_text("About a hand wide, part", 12))
        scroll = await page.evaluate(ANSWER_SCROLL)
        assert scroll["top"] == 0, scroll
        # Back at the bottom, the box follows again.
        await page.evaluate(SCROLL_ANSWER_TO, None)
        await ask(page, "Is it heavy?", long_text("Not very heavy, part", 12))
        scroll = await page.evaluate(ANSWER_SCROLL)
        assert scroll["bottom"] <= 2, scroll
        await page.screenshot(path=str(tmp_path / "answer-follows.png"))
        # On a tall screen the long answer takes the room below Ask (the old box kept to 40% of
        # the screen's height, some 250 px left empty on screen), and Ask stays on screen.
        await page.set_viewport_size({"width": 1920, "height": 1080})
        shown = await page.get_by_test_id("answer").bounding_box()
        ask_box = await page.get_by_test_id("chat-submit").bounding_box()
        assert shown is not None and ask_box is not None
        assert shown["height"] > 0.4 * 1080 + 100, shown
        assert ask_box["y"] + ask_box["height"] <= 1080, ask_box
        assert errors == []


async def test_a_description_waiting_its_turn_says_so_until_it_starts_or_is_refused(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """Past the page's share of the VLM a describe waits on the server before it answers (held
    here): from the moment it is asked the object says it waits, its Describe disabled (the
    server would refuse a second one), until its description starts or it is refused."""
    import asyncio

    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    start = {"type": "description_start", "object_id": 1, "frame_index": 0, "frames": None}
    words = {"type": "description_token", "object_id": 1, "text": "A red", "attempt": 1}
    releases: list[tuple[asyncio.Event, Any]] = []

    async def held(route: Any) -> None:
        release = asyncio.Event()
        releases.append((release, route))
        await release.wait()

    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        verdict = page.get_by_test_id("verdict")
        describe = page.get_by_test_id("object-describe")
        await page.route("**/objects/*/describe", held)
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        # Nothing else of the page's is at the VLM: no "others go first" (it said so always).
        await expect(verdict).to_have_text("waiting for the VLM…", timeout=60_000)
        await expect(verdict).to_have_attribute("data-verdict", "pending")
        await expect(describe).to_be_disabled()
        await expect(describe).to_have_attribute("title", "being described: wait for its verdict")
        await page.screenshot(path=str(tmp_path / "waiting.png"))
        # Its turn comes: the description starts (then as before), Describe waits for the verdict.
        release, route = releases[0]
        await route.fulfill(
            status=200, content_type="application/x-ndjson", body=ndjson(start, words)
        )
        release.set()
        await expect(page.get_by_test_id("answer")).to_contain_text("A red")
        await expect(verdict).not_to_contain_text("waiting for the VLM")
        # (the stream ended with no verdict: said, and Describe is free again)
        await expect(verdict).to_have_attribute("data-verdict", "failed")
        await expect(describe).to_be_enabled()

        # Asked again, it waits again; refused while it waits (its wait ran out): said as an
        # error, with the server's reason, and Describe is free again.
        await describe.click()
        await expect(verdict).to_contain_text("waiting for the VLM")
        await expect(describe).to_be_disabled()
        busy = "this image's 2 requests to the VLM (its share) were still running after 60 s of waiting; try again"
        release, route = releases[1]
        await route.fulfill(status=503, json={"code": "busy", "detail": busy})
        release.set()
        await expect(verdict).to_have_attribute("data-verdict", "failed")
        await expect(verdict).to_contain_text(busy)
        await expect(describe).to_be_enabled()
        assert errors == []


async def test_a_waiting_description_names_the_pages_other_work_at_the_vlm(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """An auto-refine and a Find hold the page's VLM share as descriptions do: a description
    waiting its turn names them (it said "waiting for the VLM…" alone, though they went first),
    and each goes from the line when it ends."""
    import asyncio

    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    held: dict[str, Any] = {}
    go = asyncio.Event()

    def holding(what: str) -> Any:
        async def hold(route: Any) -> None:
            held[what] = route
            await go.wait()
            await route.abort()

        return hold

    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        verdict = page.get_by_test_id("verdict")
        for what in ("describe", "auto_refine", "find"):
            await page.route(f"**/{what}", holding(what))
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        await expect(verdict).to_have_text("waiting for the VLM…", timeout=60_000)
        await page.get_by_test_id("auto-refine").click()
        await expect(verdict).to_have_text(
            "waiting for the VLM… (ahead of it: this page's auto-refine of #1)"
        )
        await page.get_by_test_id("find-input").fill("Find: the cup")
        await page.get_by_test_id("find-input").press("Enter")
        await expect(verdict).to_have_text(
            'waiting for the VLM… (ahead of it: this page\'s auto-refine of #1, Find of "the cup")'
        )
        await page.screenshot(path=str(tmp_path / "waiting-behind-others.png"))
        await page.get_by_test_id("stop-refine").click()
        await expect(verdict).to_have_text(
            'waiting for the VLM… (ahead of it: this page\'s Find of "the cup")'
        )
        assert sorted(held) == ["auto_refine", "describe", "find"]
        go.set()
        await expect(verdict).not_to_contain_text("waiting for the VLM")
        await expect(page.get_by_test_id("find-pending")).to_be_hidden()
        assert errors == []


# Page JS: what the object list says while it lists no object (style.css, #objects:empty).
EMPTY_LIST_SAYS = "() => getComputedStyle(document.querySelector('#objects'), '::before').content"

# How the person forgets object 1: its Remove (DELETE .../objects/1), or Clear objects (DELETE
# .../objects), which follows the same rule (shell.js forget).
FORGET = {"object-remove": "**/objects/1", "reset-objects": "**/objects"}


@contextlib.asynccontextmanager
async def one_object_selected(
    model: Any, tmp_path: Path
) -> AsyncIterator[tuple[Any, list[str], Any]]:
    """Image mode with object 1 clicked and selected: (the page, its script errors, the object
    rows)."""
    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    async with image_page(model, settings, spotlight_answerer(), png) as (page, errors):
        rows = page.get_by_test_id("object-item")
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        await expect(rows).to_have_attribute("aria-current", "true", timeout=60_000)
        yield page, errors, rows


@contextlib.asynccontextmanager
async def one_object_removed(
    model: Any, tmp_path: Path, route: Any, by: str
) -> AsyncIterator[tuple[Any, list[str], Any]]:
    """one_object_selected, then `by` (FORGET) pressed with `route` handling its request."""
    async with one_object_selected(model, tmp_path) as (page, errors, rows):
        await page.route(FORGET[by], route)
        await page.get_by_test_id(by).click()
        yield page, errors, rows


@pytest.mark.parametrize("by", list(FORGET))
async def test_a_removed_object_takes_no_more_clicks_while_its_remove_is_on_its_way(
    sam2_tiny_128: Any, tmp_path: Path, by: str
) -> None:
    """Remove (or Clear objects) pressed, the server's answer not in yet: the object is no longer
    selected, so a negative click then is the page's "select an object first", not a refinement
    the server refuses for an object it no longer has ("no object 1 ...: click the object to
    start it")."""
    import asyncio

    from playwright.async_api import expect

    release, held = asyncio.Event(), asyncio.Event()

    async def held_delete(route: Any) -> None:  # before the server has it
        if route.request.method == "DELETE":
            held.set()
            await release.wait()
        await route.continue_()

    async with one_object_removed(sam2_tiny_128, tmp_path, held_delete, by) as (
        page,
        errors,
        rows,
    ):
        await asyncio.wait_for(held.wait(), 30)
        await expect(rows).not_to_have_attribute("aria-current", "true")
        await page.keyboard.down("Shift")
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        await page.keyboard.up("Shift")
        await expect(page.get_by_test_id("error")).to_contain_text("select an object first")
        release.set()
        await expect(rows).to_have_count(0, timeout=30_000)
        assert errors == []


async def test_remove_pressed_again_while_its_answer_is_on_its_way_removes_once(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """A second press of Remove (a double-click, or a slow server) sends no second DELETE, which
    the server would answer "no object 1" once the first had gone through."""
    import asyncio

    from playwright.async_api import expect

    release, held = asyncio.Event(), asyncio.Event()
    deletes = []

    async def held_delete(route: Any) -> None:
        if route.request.method == "DELETE":
            deletes.append(route.request.url)
            held.set()
            await release.wait()
        await route.continue_()

    async with one_object_removed(sam2_tiny_128, tmp_path, held_delete, "object-remove") as (
        page,
        errors,
        rows,
    ):
        await asyncio.wait_for(held.wait(), 30)
        await rows.first.get_by_test_id("object-remove").click()
        release.set()
        await expect(rows).to_have_count(0, timeout=30_000)
        await page.wait_for_timeout(500)  # a second DELETE's refusal would be shown by now
        await expect(page.get_by_test_id("error")).to_be_hidden()
        assert len(deletes) == 1 and errors == []


@pytest.mark.parametrize("by", list(FORGET))
async def test_a_refused_remove_leaves_the_object_as_it_was(
    sam2_tiny_128: Any, tmp_path: Path, by: str
) -> None:
    """The server refuses the Remove (or Clear objects): the refusal is said, and the object is
    listed and selected again, as before the person pressed it."""
    from playwright.async_api import expect

    busy = "the server is busy: try again"

    async def refused(route: Any) -> None:
        if route.request.method == "DELETE":
            await route.fulfill(status=503, json={"code": "busy", "detail": busy})
        else:
            await route.continue_()

    async with one_object_removed(sam2_tiny_128, tmp_path, refused, by) as (page, errors, rows):
        await expect(page.get_by_test_id("error")).to_contain_text(busy)
        await expect(rows).to_have_count(1)
        await expect(rows).to_have_attribute("aria-current", "true")
        assert errors == []


@pytest.mark.parametrize(
    ("click", "server_first", "by"),
    [
        ("new", "click", "reset-objects"),
        ("new", "forget", "reset-objects"),
        ("refinement", "forget", "reset-objects"),
        ("refinement", "forget", "object-remove"),
    ],
)
async def test_a_click_overtaken_by_clear_objects_or_remove_leaves_nothing_behind(
    sam2_tiny_128: Any, tmp_path: Path, click: str, server_first: str, by: str
) -> None:
    """A click, then Clear objects (or the clicked object's Remove) before the click's answer is
    in; the page lists nothing and says nothing, and the server keeps nothing:
    - a click on a new place the server had first: it made the object and cleared it (the late
      answer listed the object again, and its description was refused: "no object 1 in this
      image");
    - one the server had after the clear: the object it made is removed too (it was kept, and a
      reload listed it);
    - a refinement of object 1 the server had after the clear, or after object 1's Remove: it is
      refused ("no object 1"), a refusal the person's own Clear or Remove made moot (it was said
      as an error; a monkey run hit the Remove case)."""
    import asyncio

    from playwright.async_api import expect

    release, click_posted = asyncio.Event(), asyncio.Event()

    async def late_answer(route: Any) -> None:
        if server_first == "click":  # the server has the click; its answer waits
            response = await route.fetch()
            click_posted.set()
            await release.wait()
            await route.fulfill(response=response)
        else:  # the click waits on its way; the clear (or remove) reaches the server first
            click_posted.set()
            await release.wait()
            await route.continue_()

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        rows = page.get_by_test_id("object-item")
        at = await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120])
        if click == "refinement":  # object 1, selected; the click is a negative one on it
            await page.mouse.click(*at)
            await expect(rows).to_have_attribute("aria-current", "true", timeout=60_000)
            await page.keyboard.down("Shift")
            at = await page.evaluate(IMAGE_TO_PAGE, [82, 72, 160, 120])
        await page.route("**/clicks", late_answer)
        await page.mouse.click(*at)
        await page.keyboard.up("Shift")
        await reached(click_posted, page, "the click's POST")
        async with page.expect_response(lambda r: r.request.method == "DELETE"):
            await page.get_by_test_id(by).click()
        async with page.expect_response("**/clicks", timeout=60_000) as answered:
            release.set()
        assert (await answered.value).status == (404 if click == "refinement" else 200)
        await page.wait_for_timeout(1500)  # a refusal said, or the object removed, by then
        await expect(rows).to_have_count(0)
        assert "click one in the picture" in await page.evaluate(EMPTY_LIST_SAYS)
        await expect(page.get_by_test_id("error")).to_be_hidden()
        iid = await page.locator("#image-canvas").get_attribute("data-image-id")
        kept = await page.evaluate("(id) => fetch('/api/images/' + id).then((r) => r.json())", iid)
        assert kept["objects"] == []
        assert errors == []


async def test_a_refinement_answered_while_its_remove_is_under_way_stands_if_it_is_refused(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """Object 1's refinement is answered while its Remove is on its way, and the server then
    refuses the Remove: the object stays, drawn with the refined mask the server has (the page
    dropped the answer as moot, and drew the mask from before the click until a reload)."""
    import asyncio

    from playwright.async_api import expect

    from tests.browser import OVERLAY_PIXELS
    from workers.masks import rle_decode

    busy = "the server is busy: try again"
    answer_held, go = asyncio.Event(), asyncio.Event()

    async def answer_later(route: Any) -> None:  # the server has the click; its answer waits
        response = await route.fetch()
        answer_held.set()
        await go.wait()
        await route.fulfill(response=response)

    async def refused_later(route: Any) -> None:
        if route.request.method != "DELETE":
            await route.continue_()
            return
        await go.wait()
        await asyncio.sleep(0.5)  # after the click's answer is in
        await route.fulfill(status=503, json={"code": "busy", "detail": busy})

    async with one_object_selected(sam2_tiny_128, tmp_path) as (page, errors, rows):
        iid = await page.locator("#image-canvas").get_attribute("data-image-id")
        get = "(id) => fetch('/api/images/' + id).then((r) => r.json())"
        (before,) = (await page.evaluate(get, iid))["objects"]
        await page.route("**/clicks", answer_later)
        await page.route("**/objects/1", refused_later)
        await page.keyboard.down("Shift")  # a negative click on object 1, off its last spot
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [82, 72, 160, 120]))
        await page.keyboard.up("Shift")
        await reached(answer_held, page, "the refinement's answer")
        await page.get_by_test_id("object-remove").click()
        async with page.expect_response(lambda r: r.request.method == "DELETE", timeout=60_000):
            go.set()
        await expect(page.get_by_test_id("error")).to_contain_text(busy)
        await expect(rows).to_have_count(1)
        (after,) = (await page.evaluate(get, iid))["objects"]
        area = {
            k: int(rle_decode(o["rle"]).sum()) for k, o in (("before", before), ("after", after))
        }
        assert abs(area["after"] - area["before"]) > 50, area  # the refinement changed the mask
        await page.keyboard.press("Escape")  # drawn unselected, as after the reload
        await expect(rows).not_to_have_attribute("aria-current", "true")
        shown = await settled(page, OVERLAY_PIXELS)
        await page.reload()
        await expect(rows).to_have_count(1, timeout=60_000)
        await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
        assert shown == await settled(page, OVERLAY_PIXELS), "the page drew another mask"
        assert errors == []


async def settled(page: Any, js: str) -> Any:
    """`js`'s value once two readings a few frames apart agree (the page has drawn)."""
    last = await page.evaluate(js)
    while True:
        await page.wait_for_timeout(300)
        now = await page.evaluate(js)
        if now == last:
            return now
        last = now


async def test_removing_an_object_whose_description_waits_its_turn_says_nothing_of_it(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """With a VLM share of 1, object 2's description waits for object 1's; the person removes
    object 2: the server refuses the waiting description ("no object 2 in this image"), and the
    page does not show that refusal as an error (the person removed it), nor anything else."""
    import threading

    from playwright.async_api import expect

    from tests.test_browser_redraws import held_until

    png = square_png(tmp_path)
    settings = Settings(
        data_dir=tmp_path / "data", weights="random", device="cpu", vlm_max_in_flight_per_session=1
    )
    describe, first_done = spotlight_answerer(), threading.Event()

    def answer(body: dict[str, Any]) -> Any:
        return held_until(first_done, describe(body))

    async with image_page(sam2_tiny_128, settings, answer, png) as (page, errors):
        verdict = page.get_by_test_id("verdict")
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        await expect(verdict).to_contain_text("describing", timeout=60_000)
        await page.keyboard.press("Escape")
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [10, 110, 160, 120]))
        second = page.locator("[data-testid=object-item][data-object-id='2']")
        await expect(second).to_have_attribute("aria-current", "true", timeout=60_000)
        await expect(verdict).to_contain_text("waiting for the VLM")
        async with page.expect_response(lambda r: r.request.method == "DELETE"):
            await second.get_by_test_id("object-remove").click()
        await expect(second).to_have_count(0)
        await page.wait_for_timeout(1500)  # the waiting description's refusal has come
        await expect(page.get_by_test_id("error")).to_be_hidden()
        first_done.set()
        await page.get_by_test_id("object-item").click()
        await expect(verdict).to_contain_text("verified", timeout=60_000)
        await expect(page.get_by_test_id("error")).to_be_hidden()
        assert errors == []


async def test_a_description_cut_by_the_vlm_dying_is_said_once_and_truly(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """The VLM dies mid-description: the failure is said once, on the verdict line (not in the
    error box too), and while the banner says the VLM does not answer (Describe disabled) the
    line says Describe is back once it answers, not "press Describe"; it says so once it is."""
    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    died = (
        "could not describe object 1: the VLM at http://127.0.0.1:8774/v1 reported an error "
        "mid-stream: 'Connection error.'. The object and its mask stay."
    )
    start = {"type": "description_start", "object_id": 1, "frame_index": 0, "frames": None}
    words = {"type": "description_token", "object_id": 1, "text": "A red", "attempt": 1}
    error = {"type": "error", "code": "vlm_error", "message": died, "object_id": 1}
    down: dict[str, str | None] = {"note": None}
    vlm_status = vlm_status_route(down)

    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        verdict, describe = page.get_by_test_id("verdict"), page.get_by_test_id("object-describe")
        await page.route("**/api/vlm", vlm_status)
        await page.route(
            "**/objects/*/describe",
            answering_with(ndjson(start, words, {**error, "request": "describe"})),
        )
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        await expect(verdict).to_contain_text(
            f"description failed part-way: {died}", timeout=60_000
        )
        await expect(page.get_by_test_id("error")).to_be_hidden()
        await expect(verdict).to_contain_text("press Describe to try again")

        # The page's poll finds the VLM down: Describe is disabled, and the line says so.
        down["note"] = "The VLM at http://127.0.0.1:8774/v1 does not answer (still starting?)"
        await expect(page.get_by_test_id("vlm-banner")).to_be_visible(timeout=30_000)
        await expect(describe).to_be_disabled()
        await expect(verdict).to_contain_text("Describe is back once the VLM answers again")
        await expect(verdict).not_to_contain_text("press Describe")
        await expect(page.get_by_test_id("error")).to_be_hidden()
        await page.screenshot(path=str(tmp_path / "vlm-down.png"))
        # It answers again: Describe is back, and the line says to press it.
        down["note"] = None
        await expect(page.get_by_test_id("vlm-banner")).to_be_hidden(timeout=30_000)
        await expect(describe).to_be_enabled()
        await expect(verdict).to_contain_text("press Describe to try again")

        assert errors == []


# Page JS: the first object row's label: its text, and whether all of it shows (not cut short).
LABEL_SHOWN = """() => {
  const l = document.querySelector('[data-testid=object-item] .label');
  return {text: l.textContent, whole: l.scrollWidth <= l.clientWidth && l.scrollHeight <= l.clientHeight + 1};
}"""


async def test_a_label_is_readable_beside_its_buttons_and_shows_no_control_characters(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """At 1200 px wide a label of a few words shows whole beside Describe and Remove (the old
    row cut it to "#1 objec…"), and a junk model's control characters are not shown raw."""
    from playwright.async_api import expect

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    label = "a red coffee\x1a mug\x00 on a\u202e kitchen table"
    named = {
        "type": "objects",
        "objects": [{"id": 1, "label": label, "source": "click"}],
        "added": None,
    }
    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        await page.route("**/objects/*/describe", answering_with(ndjson(named)))
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        item = page.get_by_test_id("object-item")
        await expect(item).to_contain_text("coffee", timeout=60_000)
        shown = await page.evaluate(LABEL_SHOWN)
        assert shown == {"text": "#1 a red coffee  mug  on a  kitchen table", "whole": True}, shown
        await expect(item.get_by_test_id("object-describe")).to_be_visible()
        await expect(item.get_by_test_id("object-remove")).to_be_visible()
        await page.screenshot(path=str(tmp_path / "label.png"))
        assert errors == []


async def test_a_remove_refused_after_the_person_left_the_mode_touches_no_other_list(
    sam2_tiny_128: Any, tmp_path: Path, clip_path: Path
) -> None:
    """Image's object 1 is removed and the person goes to Clip, where the clip has an object 1
    too, unselected; the remove is refused then. Clip's object 1 stays unselected (the refusal
    took it for Image's, and selected it again)."""
    import asyncio

    from playwright.async_api import expect

    from tests.browser import click_clip, upload_clip

    png = square_png(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    go, held = asyncio.Event(), asyncio.Event()

    async def refused_later(route: Any) -> None:
        if route.request.method != "DELETE":
            await route.continue_()
            return
        held.set()
        await go.wait()
        await route.fulfill(status=503, json={"code": "busy", "detail": "busy: try again"})

    async with image_page(sam2_tiny_128, settings, spotlight_answerer(), png) as (page, errors):
        rows = page.get_by_test_id("object-item")
        await upload_clip(page, clip_path, ready=2)
        await click_clip(page, 80, 60)
        await expect(rows).to_have_attribute("aria-current", "true", timeout=60_000)
        await page.evaluate("() => document.activeElement && document.activeElement.blur()")
        await page.keyboard.press("Escape")  # (not typed into the file input it focused)
        await expect(rows).not_to_have_attribute("aria-current", "true")
        await page.get_by_test_id("mode-image").click()
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [70, 60, 160, 120]))
        await expect(rows).to_have_attribute("aria-current", "true", timeout=60_000)
        await page.route("**/api/images/*/objects/1", refused_later)
        await rows.get_by_test_id("object-remove").click()
        await asyncio.wait_for(held.wait(), 30)
        await page.get_by_test_id("mode-clip").click()
        await expect(rows).to_have_attribute("data-object-id", "1", timeout=30_000)
        go.set()
        await page.wait_for_timeout(1500)  # the refusal has come
        await expect(rows).not_to_have_attribute("aria-current", "true")
        assert errors == []
