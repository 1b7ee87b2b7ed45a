"""A Clip or Image description streaming when its clip or image is deleted (another tab, the
library): its answer ends with the reason as its last line, as docs/protocol.md says; when only
the object is removed (the page that removed it knows why), it ends with no error line. A click
on an image deleted while it segments is refused the same way."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_image_api import encoded, served

pytestmark = pytest.mark.timeout(180)
HeldUp = tuple[threading.Event, threading.Event]  # entered, release


async def _upload(c: Any, kind: str, clip: Path) -> str:
    if kind == "clip":
        files = {"file": ("m.mp4", clip.read_bytes(), "video/mp4")}
    else:
        files = {"file": ("p.png", encoded("PNG"), "image/png")}
    r = await c.post(f"/api/{kind}s", files=files)
    assert r.status_code == 201, r.text
    item = f"/api/{kind}s/{r.json()['id']}"
    frame = {"frame": 1} if kind == "clip" else {}
    r = await c.post(f"{item}/clicks", json={"x": 70, "y": 60, **frame})
    assert r.status_code == 200, r.text
    return item


@pytest.mark.parametrize("kind", ["clip", "image"])
@pytest.mark.parametrize("gone", ["item", "object"])
async def test_a_description_stopped_by_a_delete_says_why_last(
    kind: str,
    gone: str,
    model: Any,
    clip_path: Path,
    tmp_path: Path,
) -> None:
    with ScriptedVLMServer(answer="A red square " + "and more " * 30, token_delay_s=0.2) as vlm:
        reasoner, _ = build_reasoner(Settings(vlm_url=vlm.url))
        settings = Settings(data_dir=tmp_path / "data")
        app = create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
        async with served(app) as (_, c):
            item = await _upload(c, kind, clip_path)
            lines: list[dict[str, Any]] = []
            body = {"frame": 1} if kind == "clip" else None
            async with c.stream("POST", f"{item}/objects/1/describe", json=body) as r:
                assert r.status_code == 200
                async for text in r.aiter_lines():
                    if not text.strip():
                        continue
                    lines.append(json.loads(text))
                    if [e["type"] for e in lines[-3:]] == [
                        "description_start",
                        "description_token",
                        "description_token",
                    ]:  # two words in: delete it, once
                        target = item if gone == "item" else f"{item}/objects/1"
                        deleted = await c.delete(target)
                        assert deleted.status_code == 200, deleted.text
    assert "verdict" not in [e["type"] for e in lines]
    last = lines[-1]
    if gone == "object":  # the page that removed it knows why
        assert last["type"] == "description_token"
        return
    assert (last["type"], last["code"], last["request"]) == ("error", f"unknown_{kind}", "describe")
    assert last["message"].startswith(f"no {kind} ") and "it was deleted" in last["message"]


def held_up(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> HeldUp:
    """`owner.name` (run in a worker thread) made to wait, once entered, until released."""
    entered, release = threading.Event(), threading.Event()
    real = getattr(owner, name)

    def waiting(*args: Any) -> Any:
        entered.set()
        release.wait(30)
        return real(*args)

    monkeypatch.setattr(owner, name, waiting)
    return entered, release


async def deleted_while_held_up(c: Any, item: str, request: Awaitable[Any], held: HeldUp) -> Any:
    """The answer to `request` when `item` is deleted while the request is held up."""
    entered, release = held
    answer = asyncio.ensure_future(request)
    assert await asyncio.to_thread(entered.wait, 30)
    deleted = await c.delete(item)
    assert deleted.status_code == 200, deleted.text
    release.set()
    return await answer


async def uploaded(c: Any, kind: str, clip: Path, pixels: str | None) -> str:
    """_upload's item; with `pixels` "freed", newer images take the memory and its pixels are
    let go (read back from its file when next needed)."""
    from streamer.image import store as image_store

    item = await _upload(c, kind, clip)
    files = {"file": ("p.png", encoded("PNG"), "image/png")}
    for _ in range(image_store.MAX_IMAGES_KEPT if pixels == "freed" else 0):
        assert (await c.post("/api/images", files=files)).status_code == 201
    return item


@pytest.mark.parametrize(
    ("asked", "kind", "pixels"),
    [
        ("click", "image", "in memory"),
        ("click", "image", "freed"),
        ("thumbnail", "clip", None),
        ("thumbnail", "image", "in memory"),
        ("thumbnail", "image", "freed"),
    ],
)
async def test_a_click_or_thumbnail_of_an_item_deleted_meanwhile_is_refused_as_unknown(
    asked: str,
    kind: str,
    pixels: str | None,
    model: Any,
    clip_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deleted (another tab, the library) while SAM2 segments a click on the image, while its
    freed pixels are read back from its file, or while the library's thumbnail is made: the
    answer is a deleted item's 404, and the server answers on. The click said 200 with an
    object of no image, or 500 "a bug" on the removed file; the thumbnail 500, 422 "no
    thumbnail for this clip", or 200 for an image that is gone."""
    from streamer.clip import routes as clip_routes
    from streamer.image import routes
    from streamer.image import store as image_store

    held_where = {
        ("click", "in memory"): (routes, "segment_now"),
        ("click", "freed"): (image_store, "read_display"),
        ("thumbnail", "clip"): (clip_routes, "_thumbnail"),
        ("thumbnail", "image"): (image_store.ImageEntry, "thumbnail"),
    }[(asked, pixels if asked == "click" else kind)]
    app = create_app(Settings(data_dir=tmp_path / "data"), vision_model=model, load_vision=False)
    async with served(app) as (_, c):
        item = await uploaded(c, kind, clip_path, pixels)
        if asked == "click":
            request = c.post(f"{item}/clicks", json={"x": 20, "y": 20})
        else:
            request = c.get(f"{item}/thumbnail.jpg")
        held = held_up(monkeypatch, *held_where)
        r = await deleted_while_held_up(c, item, request, held)
        assert r.status_code == 404, r.text
        assert r.json()["code"] == f"unknown_{kind}" and "it was deleted" in r.json()["detail"]
        library = (await c.get(f"/api/{kind}s")).json()
        assert item.rsplit("/", 1)[1] not in json.dumps(library)


@pytest.mark.parametrize("kind", ["clip", "image"])
async def test_a_description_waiting_its_turn_when_its_item_is_deleted_says_the_item_went(
    kind: str,
    model: Any,
    clip_path: Path,
    tmp_path: Path,
) -> None:
    """With a VLM share of 1, a second object's Describe waits for the first's; the clip or
    image is deleted meanwhile: the waiting one is told the clip or image was deleted (it was
    told "no object 2 ...: click the object to start it")."""
    from tests.conftest import wait_until

    with ScriptedVLMServer(answer="A red square " + "and more " * 30, token_delay_s=0.2) as vlm:
        reasoner, _ = build_reasoner(Settings(vlm_url=vlm.url))
        settings = Settings(data_dir=tmp_path / "data", vlm_max_in_flight_per_session=1)
        app = create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
        async with served(app) as (server, c):
            item = await _upload(c, kind, clip_path)
            frame = {"frame": 1} if kind == "clip" else {}
            r = await c.post(f"{item}/clicks", json={"x": 20, "y": 20, **frame})
            assert r.status_code == 200, r.text  # object 2
            body = frame or None
            kept = server.call(lambda: getattr(app.state, f"{kind}s").items[item.split("/")[-1]])
            async with c.stream("POST", f"{item}/objects/1/describe", json=body) as first:
                assert first.status_code == 200
                waiting = asyncio.ensure_future(c.post(f"{item}/objects/2/describe", json=body))
                await wait_until(
                    lambda: server.call(lambda: kept.objects.vlm_share.waiting) == 1,
                    30,
                    "the second describe to wait its turn",
                )
                assert (await c.delete(item)).status_code == 200
            r = await waiting
    assert r.status_code == 404, r.text
    assert r.json()["code"] == f"unknown_{kind}" and "it was deleted" in r.json()["detail"]
