"""The clip library in Chromium after a restart: listed newest first with thumbnail, name, length and
state; opening one restores its objects, masks, description and chat; delete removes it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.browser import OVERLAY_PIXELS, browser_page, needs_chromium
from tests.conftest import ServerThread, spotlight_answerer
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_api import square_center
from tests.test_clip_media import write_clip

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300), needs_chromium]


@pytest.fixture(scope="module")
def model() -> Any:
    from workers.vision import load_sam2

    return load_sam2("tiny", weights="random", device="cpu", image_size=128, seed=0)


def ndjson(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


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
            async with browser_page() as page:
                await page.context.add_cookies(
                    [{"name": OWNER_COOKIE, "value": OWNER, "url": server.base_url}]
                )
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(server.base_url)
                await page.get_by_test_id("mode-clip").click()
                library = page.get_by_test_id("library")
                await expect(library).to_be_visible()
                items = page.get_by_test_id("library-item")
                await expect(items).to_have_count(2)
                assert [await i.get_attribute("data-id") for i in await items.all()] == [
                    new,
                    old,
                ]
                await expect(items.nth(0)).to_contain_text("second.mp4")
                await expect(items.nth(0)).to_contain_text("1.2 s")  # 30 frames at 25 fps
                await expect(items.nth(0)).to_contain_text("done")
                await expect(items.nth(1)).to_contain_text("first.mp4")
                await expect(items.nth(1)).to_contain_text("new")
                await page.wait_for_function(
                    "() => [...document.querySelectorAll('[data-testid=library-item] img')]"
                    ".every((i) => i.complete && i.naturalWidth > 0)",
                    timeout=30_000,
                )

                # open: the object, its description and verdict, its chat and its masks
                await items.nth(0).get_by_test_id("library-open").click()
                await expect(page.get_by_test_id("object-item")).to_have_count(1)
                # (the scripted VLM answers a track's describe as it answers chat)
                await expect(page.get_by_test_id("object-item")).to_contain_text(
                    "A red square sliding right"
                )
                await page.get_by_test_id("object-item").click()
                answer = page.get_by_test_id("answer")
                await expect(answer.locator(".description")).to_have_text(
                    "A red square sliding right."
                )
                await expect(answer.locator(".chat.user")).to_have_text("Q: where to?")
                await expect(answer.locator(".chat.assistant")).to_have_text(
                    "A: A red square sliding right."
                )
                await expect(page.get_by_test_id("verdict")).to_contain_text("verified")
                await expect(page.get_by_test_id("progress")).to_have_attribute(
                    "data-state", "done"
                )
                await page.get_by_test_id("scrubber").fill("5")
                await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
                await page.screenshot(path=str(tmp_path / "library.png"))

                # delete: gone from the page, the API and the disk
                await items.nth(1).get_by_test_id("library-delete").click()
                await expect(items).to_have_count(1)
                assert await items.nth(0).get_attribute("data-id") == new
                r = httpx.get(f"{server.base_url}/api/clips/{old}", cookies={OWNER_COOKIE: OWNER})
                assert r.status_code == 404
                assert not (tmp_path / "data" / "clips" / old).exists()
                assert errors == []
