"""The library of Clip and Image modes in Chromium after a restart: listed newest first with
thumbnail, name, length or size and state; opening one restores its objects, masks, description
and chat; delete removes it; what retention removed is said, with why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from streamer.storage.db import DB_NAME
from tests.browser import BROWSER_TEST, OVERLAY_PIXELS, browser_page
from tests.conftest import ServerThread, spotlight_answerer, wait_until
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_media import square_center, write_clip

pytestmark = BROWSER_TEST


def ndjson(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


@contextlib.asynccontextmanager
async def library_page(
    base_url: str, owner: str, mode: str
) -> AsyncIterator[tuple[Any, Any, list[str]]]:
    """Chromium with the browser's owner cookie, on the page in `mode`, its library shown: the
    page, the library and the page's errors."""
    from playwright.async_api import expect

    from streamer.http.access import OWNER_COOKIE

    async with browser_page() as page:
        await page.context.add_cookies([{"name": OWNER_COOKIE, "value": owner, "url": base_url}])
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(base_url)
        await page.get_by_test_id(f"mode-{mode}").click()
        library = page.locator(f"[data-testid=library][data-for={mode}]")
        await expect(library).to_be_visible()
        yield page, library, errors


async def expect_listed(page: Any, mode: str, listed: list[tuple[str, list[str]]]) -> Any:
    """The mode's library lists exactly these ids in this order, each item with these words,
    and every thumbnail has loaded; answers the items."""
    from playwright.async_api import expect

    items = page.locator(f"[data-testid=library][data-for={mode}]").get_by_test_id("library-item")
    await expect(items).to_have_count(len(listed))
    for n, (id_, words) in enumerate(listed):
        await expect(items.nth(n)).to_have_attribute("data-id", id_)
        for word in words:
            await expect(items.nth(n)).to_contain_text(word)
    await page.wait_for_function(
        f"() => [...document.querySelectorAll('[data-for={mode}] [data-testid=library-item] img')]"
        ".every((i) => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    return items


async def expect_restored(page: Any, description: str, chat: tuple[str, str], verdict: str) -> None:
    """The one object opened from the library shows its description, verdict and chat."""
    from playwright.async_api import expect

    await expect(page.get_by_test_id("object-item")).to_have_count(1)
    # Selected from its label: the row's middle is its Describe button, which describes anew.
    await page.get_by_test_id("object-item").locator(".label").click()
    answer = page.get_by_test_id("answer")
    await expect(answer.locator(".description")).to_have_text(description)
    await expect(answer.locator(".chat.user")).to_have_text(f"Q: {chat[0]}")
    await expect(answer.locator(".chat.assistant")).to_have_text(f"A: {chat[1]}")
    await expect(page.get_by_test_id("verdict")).to_contain_text(verdict)


async def test_library_lists_opens_and_deletes_clips_kept_across_a_restart(
    model: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    from streamer.http.access import OWNER_COOKIE

    OWNER = "0123456789abcdef0123456789abcdef"  # the browser's, as the page's cookie would be

    first = write_clip(tmp_path / "first.mp4", frames=20)
    second = write_clip(tmp_path / "second.mp4", frames=30)
    vlm = ScriptedVLMServer(answer=spotlight_answerer(chat_answer="A red square sliding right."))
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")

    def app() -> Any:
        reasoner = build_reasoner(Settings(vlm_url=vlm.url))[0]
        return create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)

    with vlm:
        # Before the restart: two clips; the second has a tracked, described object and a chat.
        with ServerThread(app()) as server:
            # The library lists one browser's own clips: the uploads carry that browser's cookie.
            http = httpx.Client(base_url=server.base_url, timeout=60, cookies={OWNER_COOKIE: OWNER})
            ids = []
            for path in (first, second):
                with open(path, "rb") as f:
                    r = http.post("/api/clips", files={"file": (path.name, f, "video/mp4")})
                ids.append(r.json()["id"])
                time.sleep(0.01)  # distinct upload times: the library is newest first
            old, new = ids
            x, y = square_center(5)
            http.post(f"/api/clips/{new}/clicks", json={"frame": 5, "x": x, "y": y})
            deadline = time.monotonic() + 240
            while http.get(f"/api/clips/{new}").json()["objects"][0]["job"]["state"] != "done":
                assert time.monotonic() < deadline, "the track did not finish"
                time.sleep(0.3)
            events = ndjson(http.post(f"/api/clips/{new}/objects/1/describe"))
            assert any(e["type"] == "verdict" for e in events), events
            events = ndjson(
                http.post(f"/api/clips/{new}/objects/1/chat", json={"question": "where to?"})
            )
            assert events[-1]["type"] == "chat_done", events
            http.close()

        with ServerThread(app()) as server:
            async with library_page(server.base_url, OWNER, "clip") as (page, library, errors):
                items = await expect_listed(
                    page,
                    "clip",
                    [(new, ["second.mp4", "1.2 s", "done"]), (old, ["first.mp4", "new"])],
                )  # (1.2 s: 30 frames at 25 fps)

                # open: the object, its description and verdict, its chat and its masks
                await items.nth(0).get_by_test_id("library-open").click()
                # (the scripted VLM answers a track's describe as it answers chat)
                said = "A red square sliding right."
                await expect(page.get_by_test_id("object-item")).to_contain_text(said[:-1])
                await expect_restored(page, said, ("where to?", said), "verified")
                await expect(page.get_by_test_id("progress")).to_have_attribute(
                    "data-state", "done"
                )
                await page.get_by_test_id("scrubber").fill("5")
                await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
                await page.screenshot(path=str(tmp_path / "library.png"))

                # delete, once confirmed: gone from the page, the API and the disk
                page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
                await items.nth(1).get_by_test_id("library-delete").click()
                await expect(items).to_have_count(1)
                await expect(items).to_have_attribute("data-id", new)
                r = httpx.get(f"{server.base_url}/api/clips/{old}", cookies={OWNER_COOKIE: OWNER})
                assert r.status_code == 404
                assert not (tmp_path / "data" / "clips" / old).exists()
                assert errors == []


async def test_image_library_lists_opens_and_deletes_images_kept_across_a_restart(
    model: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    from streamer.http.access import OWNER_COOKIE
    from tests.test_image_api import encoded

    OWNER = "fedcba9876543210fedcba9876543210"
    vlm = ScriptedVLMServer(answer=spotlight_answerer(chat_answer="A red square on a gradient."))
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")

    def app(**overrides: Any) -> Any:
        reasoner = build_reasoner(Settings(vlm_url=vlm.url))[0]
        s = settings.model_copy(update=overrides)
        return create_app(s, vision_model=model, reasoner=reasoner, load_vision=False)

    def upload(http: httpx.Client, name: str, data: bytes) -> str:
        r = http.post("/api/images", files={"file": (name, data, "image/png")})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    with vlm:
        # Before the restart: two images; the second has a described object and a chat.
        with ServerThread(app()) as server:
            http = httpx.Client(base_url=server.base_url, timeout=60, cookies={OWNER_COOKIE: OWNER})
            old = upload(http, "first.png", encoded("PNG"))
            time.sleep(0.01)  # distinct upload times: the library is newest first
            new = upload(http, "second.png", encoded("PNG"))
            r = http.post(f"/api/images/{new}/clicks", json={"x": 70, "y": 60})
            assert r.status_code == 200, r.text
            events = ndjson(http.post(f"/api/images/{new}/objects/1/describe"))
            (verdict,) = [e for e in events if e["type"] == "verdict"]
            events = ndjson(
                http.post(f"/api/images/{new}/objects/1/chat", json={"question": "what is it?"})
            )
            assert events[-1]["type"] == "chat_done", events
            http.close()

        # After it, with a 1 MB budget that two noise images will overrun.
        with ServerThread(app(disk_budget_mb=1)) as server:
            async with library_page(server.base_url, OWNER, "image") as (page, library, errors):
                items = await expect_listed(
                    page,
                    "image",
                    [
                        (new, ["second.png", "160x120", "KB", "described"]),
                        (old, ["first.png", "new"]),
                    ],
                )

                # open: the object, its description and verdict, its chat and its mask
                await items.nth(0).get_by_test_id("library-open").click()
                await expect_restored(
                    page,
                    verdict["description"],
                    ("what is it?", "A red square on a gradient."),
                    verdict["verdict"],
                )
                await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
                await page.screenshot(path=str(tmp_path / "image-library.png"))

                # Delete asks first, naming the image: "Cancel" (a slip beside Open) keeps it.
                cookies = {OWNER_COOKIE: OWNER}
                asked: list[str] = []

                def answer_dialog(accept: bool) -> Any:
                    async def on_dialog(d: Any) -> None:
                        asked.append(d.message)
                        await (d.accept() if accept else d.dismiss())

                    return on_dialog

                page.once("dialog", answer_dialog(False))
                await items.nth(1).get_by_test_id("library-delete").click()
                await wait_until(lambda: bool(asked), 30, "Delete to ask")
                name = await items.nth(1).locator(".name").inner_text()
                assert name in asked[0] and "for good" in asked[0]
                await expect(items).to_have_count(2)
                r = httpx.get(f"{server.base_url}/api/images/{old}", cookies=cookies)
                assert r.status_code == 200
                # Confirmed: gone from the page, the API and the disk.
                page.once("dialog", answer_dialog(True))
                await items.nth(1).get_by_test_id("library-delete").click()
                await expect(items).to_have_count(1)
                await expect(items).to_have_attribute("data-id", new)
                r = httpx.get(f"{server.base_url}/api/images/{old}", cookies=cookies)
                assert r.status_code == 404
                assert not (tmp_path / "data" / "images" / f"{old}.jpg").exists()

                # over the budget: the least recently used images go, and the page says why
                noise = np.random.default_rng(0).integers(0, 255, (700, 900, 3), np.uint8)
                with httpx.Client(base_url=server.base_url, timeout=120, cookies=cookies) as http:
                    upload(http, "noise-a.png", encoded("PNG", noise))
                    last = upload(http, "noise-b.png", encoded("PNG", noise))
                await page.get_by_test_id("mode-clip").click()
                await page.get_by_test_id("mode-image").click()
                # (The list still shows one item, the deleted image's neighbour, until the
                # refresh that coming back asks for arrives: wait for the item, not the count.)
                await expect(items).to_have_attribute("data-id", last)
                await expect(items).to_have_count(1)
                removed = library.get_by_test_id("library-removed")
                await expect(removed).to_contain_text("Removed noise-a.png")
                await expect(removed).to_contain_text("over the 1 MB budget")
                assert errors == []


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_after_sigkill_mid_job_and_mid_upload_the_page_has_everything_committed(
    tmp_path: Path,
) -> None:
    """The real server (main.py) killed with SIGKILL while a clip job runs and an upload is half
    sent, started again on the same data dir: both libraries list what was committed, the image
    opens with its mask, the clip says interrupted and its Resume goes on from where it stopped,
    and the half upload is gone."""
    from playwright.async_api import expect

    from streamer.http.access import OWNER_COOKIE
    from tests.test_image_api import encoded
    from tests.test_persistence import Server, committed, start_half_upload, wait_for

    OWNER = "00112233445566778899aabbccddeeff"
    cookies = {OWNER_COOKIE: OWNER}
    frames, click = 160, 40
    path = write_clip(tmp_path / "long.mp4", frames=frames)
    data = tmp_path / "data"
    server = Server(data, tmp_path / "first.log")
    try:
        http = httpx.Client(base_url=server.url, timeout=60, cookies=cookies)
        r = http.post("/api/images", files={"file": ("desk.png", encoded("PNG"), "image/png")})
        assert r.status_code == 201, r.text
        iid = r.json()["id"]
        r = http.post(f"/api/images/{iid}/clicks", json={"x": 70, "y": 60})
        assert r.status_code == 200, r.text
        with open(path, "rb") as f:
            r = http.post("/api/clips", files={"file": ("long.mp4", f, "video/mp4")})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        x, y = square_center(click)
        r = http.post(f"/api/clips/{cid}/clicks", json={"frame": click, "x": x, "y": y})
        assert r.status_code == 200, r.text
        full_total = r.json()["job"]["total"]

        def tracked_some() -> bool:
            (o,) = http.get(f"/api/clips/{cid}").json()["objects"]
            assert o["job"]["state"] in ("queued", "running"), o["job"]
            return bool(o["frames"] >= 15)

        wait_for(tracked_some, 600, "the job to track 15 frames", server)
        sock = start_half_upload(server.url, path)
        wait_for(lambda: list((data / "clips").glob("*/*.upload")), 60, "the half upload on disk")
        server.kill()
        sock.close()
        http.close()
    finally:
        server.stop()

    n_committed, state = committed(data / DB_NAME, cid)
    assert n_committed > 0 and state == "running"

    server = Server(data, tmp_path / "second.log")
    try:
        # the half upload is gone, and the log says what was reconciled
        assert list((data / "clips").iterdir()) == [data / "clips" / cid]
        assert "no clip in the database owns it" in server.log.read_text()

        async with library_page(server.url, OWNER, "image") as (page, _, errors):
            items = await expect_listed(page, "image", [(iid, ["desk.png", "segmented"])])
            await items.nth(0).get_by_test_id("library-open").click()
            await expect(page.get_by_test_id("object-item")).to_have_count(1)
            await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)

            await page.get_by_test_id("mode-clip").click()
            # the clip, not the half upload
            items = await expect_listed(page, "clip", [(cid, ["long.mp4", "interrupted"])])
            await items.nth(0).get_by_test_id("library-open").click()
            await expect(page.get_by_test_id("object-item")).to_have_count(1)
            progress = page.get_by_test_id("progress")
            await expect(progress).to_have_attribute("data-state", "interrupted")
            # every committed frame is back: the mask shows on one of them
            got = server.get(
                f"/api/clips/{cid}/results", params={"start": 0, "count": frames}, cookies=cookies
            )
            assert sum(len(per) for per in got["frames"].values()) == n_committed
            shown = min(int(i) for i in got["frames"])
            await page.get_by_test_id("scrubber").fill(str(shown))
            await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)

            # Resume in the page: the job goes on from where it stopped, not from the click
            await page.get_by_test_id("resume-job").click()
            await expect(progress).not_to_have_attribute("data-state", "interrupted")
            (o,) = server.get(f"/api/clips/{cid}", cookies=cookies)["objects"]
            assert o["job"]["state"] in ("queued", "running", "done"), o["job"]
            assert o["job"]["total"] < full_total
            await page.screenshot(path=str(tmp_path / "after-sigkill.png"))
            assert errors == []
    finally:
        server.stop()
