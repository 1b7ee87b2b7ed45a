"""No mask coding on the event loop, in any mode: COCO RLE encode and decode (workers.masks) run on
worker threads, so a large mask never stalls every session's websocket and every request at once
(docs/architecture.md: the event loop does I/O only). Each is watched where the streamer imports
it; a call from a thread that runs an event loop is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamer.app import create_app
from streamer.clip import exports as clip_exports
from streamer.clip import reasoning as clip_reasoning
from streamer.image import store as image_store
from streamer.objects import results
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.conftest import ServerThread, live_clients, spotlight_answerer
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_api import CLICK_FRAME, upload, vlm_client, wait_job
from tests.test_clip_media import square_center
from tests.test_image_api import encoded, make_client, ndjson
from tests.test_image_api import upload as upload_image
from tests.test_live_resume import an_object_on_a_frame
from tests.test_live_webrtc import H, W, live_settings

pytestmark = pytest.mark.timeout(240)

WATCHED = [
    (results, "rle_encode"),  # every object result, in every mode
    (image_store, "rle_decode"),  # an image's masks, for a click that refines or a describe
    (clip_exports, "rle_decode"),  # export.mp4, each frame of it
    (clip_reasoning, "rle_decode"),  # a clip describe's masks over keyframes
]


class Calls:
    """Where each watched function ran: `on_loop` and `off_loop`, lists of `module.name`."""

    def __init__(self) -> None:
        self.on_loop: list[str] = []
        self.off_loop: list[str] = []

    def watch(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                self.on_loop.append(name)
            except RuntimeError:  # no loop runs on this thread
                self.off_loop.append(name)
            return fn(*args, **kwargs)

        return watched


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    seen = Calls()
    for module, name in WATCHED:
        label = f"{module.__name__.removeprefix('streamer.')}.{name}"
        monkeypatch.setattr(module, name, seen.watch(label, getattr(module, name)))
    return seen


def test_image_mode_codes_masks_off_the_loop(model: Any, tmp_path: Path, calls: Calls) -> None:
    with ScriptedVLMServer(answer=spotlight_answerer()) as vlm:
        reasoner, _ = build_reasoner(Settings(vlm_url=vlm.url))
        with make_client(model, tmp_path, reasoner) as client:
            url = f"/api/images/{upload_image(client, encoded('PNG')).json()['id']}"
            oid = client.post(f"{url}/clicks", json={"x": 70, "y": 60}).json()["object"]["id"]
            r = client.post(f"{url}/clicks", json={"x": 72, "y": 62, "object_id": oid})
            assert r.status_code == 200, r.text
            assert ndjson(client.post(f"{url}/objects/{oid}/describe"))[-1]["type"] == "objects"
        with make_client(model, tmp_path, reasoner) as again:  # a restart: masks read back
            assert [o["id"] for o in again.get(url).json()["objects"]] == [oid]
    assert calls.on_loop == []
    assert {"objects.results.rle_encode", "image.store.rle_decode"} <= set(calls.off_loop)


def test_clip_mode_codes_masks_off_the_loop(
    model: Any, tmp_path: Path, clip_path: Path, calls: Calls
) -> None:
    with vlm_client(model, tmp_path, spotlight_answerer()) as client:
        cid = upload(client, clip_path)["id"]
        with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
            x, y = square_center(CLICK_FRAME)
            r = client.post(f"/api/clips/{cid}/clicks", json={"frame": CLICK_FRAME, "x": x, "y": y})
            assert r.status_code == 200, r.text
            assert wait_job(ws, 1)[0]["state"] == "done"
        assert client.get(f"/api/clips/{cid}/export.mp4").status_code == 200
        described = client.post(f"/api/clips/{cid}/objects/1/describe", json={})
        assert ndjson(described)[-1]["type"] == "objects", described.text
    assert calls.on_loop == []
    assert {
        "objects.results.rle_encode",
        "clip.exports.rle_decode",
        "clip.reasoning.rle_decode",
    } <= set(calls.off_loop)


async def test_live_mode_codes_masks_off_the_loop(
    sam2_tiny_random: Any, moving_shape: Any, calls: Calls
) -> None:
    app = create_app(live_settings(), vision_model=sam2_tiny_random)
    with ServerThread(app) as server:
        async with live_clients(server, 1) as (client,):
            track = moving_shape(W, H, fps=10)
            await client.connect(track)
            await an_object_on_a_frame(client, track)
    assert calls.on_loop == []
    assert "objects.results.rle_encode" in calls.off_loop
