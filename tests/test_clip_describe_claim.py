"""A second describe of an object sent while the first is still reading its frame is refused at once (409 busy) without reading or encoding the frame again; the slot frees however a request ends."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from streamer.clip.video_io import VideoReader
from tests.conftest import sent_aside
from tests.test_clip_api import CLICK_FRAME, upload, vlm_client
from tests.test_clip_media import square_center

pytestmark = pytest.mark.timeout(120)


class Counted:
    """Counts the frames the server reads and encodes (through the real code); the first read
    waits for `gate`, so the first describe is still reading when the second arrives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from workers.vision import ImageSegmenter

        self.reads = self.encodes = 0
        self.reading, self.gate = threading.Event(), threading.Event()
        real_frame, real_set_image = VideoReader.frame, ImageSegmenter.set_image

        def frame(reader: VideoReader, index: int) -> Any:
            self.reads += 1
            if self.reads == 1:
                self.reading.set()
                assert self.gate.wait(60)
            return real_frame(reader, index)

        def set_image(seg: Any, image: Any) -> Any:
            self.encodes += 1
            return real_set_image(seg, image)

        monkeypatch.setattr(VideoReader, "frame", frame)
        monkeypatch.setattr(ImageSegmenter, "set_image", set_image)


def new_object(client: TestClient, clip: Path) -> tuple[str, int]:
    """A clip with one clicked object whose tracking has not started (every job slot taken)."""
    client.app.state.clips.job_slots = asyncio.Semaphore(0)  # type: ignore[attr-defined]
    cid = upload(client, clip)["id"]
    x, y = square_center(CLICK_FRAME)
    r = client.post(f"/api/clips/{cid}/clicks", json={"frame": CLICK_FRAME, "x": x, "y": y})
    assert r.status_code == 200, r.text
    return cid, r.json()["object_id"]


def events(r: Any) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


def test_a_second_describe_while_the_first_reads_is_busy_without_reading(
    model: Any,
    clip_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with vlm_client(model, tmp_path, lambda request: "A red square.") as client:
        cid, oid = new_object(client, clip_path)
        counted = Counted(monkeypatch)
        describe = f"/api/clips/{cid}/objects/{oid}/describe"
        body = {"frame": CLICK_FRAME}
        with sent_aside(lambda: client.post(describe, json=body), counted.gate) as first:
            assert counted.reading.wait(60)
            second = client.post(describe, json=body)
            assert second.status_code == 409 and second.json()["code"] == "busy"
            assert (counted.reads, counted.encodes) == (1, 0)  # the second did no work
        got = events(first.answer)
        assert got[0]["type"] == "description_start"
        assert any(e["type"] == "verdict" for e in got)
        assert (counted.reads, counted.encodes) == (1, 1)
        # Once the first has ended, a new describe goes ahead.
        assert events(client.post(describe, json={"frame": CLICK_FRAME}))[0]["type"] == (
            "description_start"
        )
        assert counted.reads == 2


def test_a_describe_that_fails_before_streaming_frees_the_object(
    model: Any,
    clip_path: Path,
    tmp_path: Path,
) -> None:
    with vlm_client(model, tmp_path, lambda request: "A red square.") as client:
        cid, oid = new_object(client, clip_path)
        describe = f"/api/clips/{cid}/objects/{oid}/describe"
        # No click and no track on frame 3: refused before any stream starts...
        r = client.post(describe, json={"frame": 3})
        assert r.status_code == 409 and r.json()["code"] == "not_visible"
        # ...and the object is not left "already being described".
        assert events(client.post(describe, json={"frame": CLICK_FRAME}))[0]["type"] == (
            "description_start"
        )


async def test_a_claim_frees_when_the_client_is_gone_before_the_body_starts() -> None:
    from starlette.requests import ClientDisconnect

    from streamer.http.claim import Claim
    from streamer.objects import vlm
    from streamer.objects.table import ObjectRefused, ObjectTable

    table = ObjectTable(cap=4, where="clip")
    obj = table.add("click")

    async def never_asked() -> Any:  # the VLM stream: the body never starts, so never read
        raise AssertionError("the stream started")
        yield

    claim = Claim(obj, "describe")
    with pytest.raises(ObjectRefused, match="already being described"):
        Claim(obj, "describe")  # a second one is refused while the first holds the slot
    response = claim.respond(vlm.describe(table, obj.id, never_asked(), frame_index=0), "describe")
    assert obj.busy()

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise OSError("the client went away")

    with pytest.raises(ClientDisconnect):  # as Starlette reports a failed send
        await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert not obj.busy()
    Claim(obj, "describe").release()  # the slot is free again


def test_a_frame_tracking_has_not_reached_says_wait_not_click_again(
    tmp_path: Path,
    model: Any,
    clip_path: Path,
) -> None:
    with vlm_client(model, tmp_path, lambda request: "A red square.") as client:
        cid, oid = new_object(client, clip_path)  # its tracking job waits for a slot
        r = client.post(f"/api/clips/{cid}/objects/{oid}/describe", json={"frame": CLICK_FRAME + 2})
        assert r.status_code == 409 and r.json()["code"] == "not_visible", r.text
        assert r.json()["detail"] == (
            f"tracking has not reached frame {CLICK_FRAME + 2} for object {oid} yet; wait for "
            f"it, or describe it on a frame you clicked it on ({CLICK_FRAME})"
        )
        # On the frame it was clicked on, it is described now (SAM2's mask for the click).
        on_click = events(
            client.post(f"/api/clips/{cid}/objects/{oid}/describe", json={"frame": CLICK_FRAME})
        )
        assert "verdict" in [e["type"] for e in on_click]


async def test_a_remove_before_the_stream_took_its_first_step_ends_it_and_frees_the_share() -> None:
    """A remove in the very turn of the loop the stream's task was made in cancels the task before
    it ever runs: the answer still ends, and the object's VLM share is free again."""
    from streamer.http.claim import Claim
    from streamer.objects import vlm
    from streamer.objects.table import ObjectTable

    table = ObjectTable(cap=4, where="image", vlm_cap=1)
    obj = table.add("click")

    async def never_asked() -> Any:
        raise AssertionError("the stream started")
        yield

    claim = Claim(obj, "describe")
    lines = claim._handed_over(vlm.describe(table, obj.id, never_asked(), frame_index=0))
    first = asyncio.ensure_future(anext(lines, None))
    await asyncio.sleep(0)  # the answer has made its task, which has not run yet
    assert obj.streams and table.vlm_share.running == 1
    await table.remove(obj.id)
    assert await asyncio.wait_for(first, 10) is None  # the answer ended
    assert table.vlm_share.running == 0 and not obj.streams
