"""Clip: a negative click never starts the object in either pass of a job (nor in a resumed one,
nor as describe's or auto-refine's default frame), and auto-refine of an empty mask is refused as in
every mode; export.mp4 of a clip deleted, or due for retention, while it renders; two export.mp4
renders of one clip at once."""

# ruff: noqa: F401, F811 - test_clip_api.py's client fixture is a parameter here

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from fastapi.testclient import TestClient

from streamer.app import create_app
from streamer.clip import exports
from streamer.clip.job import FramePrompt
from streamer.clip.restore import resume_point
from streamer.settings import Settings
from tests.conftest import Sent, request_text, sent_aside, until
from tests.test_clip_api import (
    FRAMES,
    H,
    W,
    client,
    direct_masks,
    upload,
    vlm_client,
    wait_job,
)
from tests.test_clip_media import square_center
from workers.masks import mask_iou, rle_decode

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize(
    ("positive", "negative", "untouched"),
    [
        (10, 30, range(0, 30)),  # the backward pass starts from frame 10, not 30
        (30, 10, range(11, FRAMES)),  # the forward pass starts from frame 30, not 10
    ],
)
def test_a_negative_click_on_another_frame_never_starts_a_pass(
    client: TestClient, clip_path: Path, model: Any, positive: int, negative: int, untouched: range
) -> None:
    cid = upload(client, clip_path)["id"]
    point = square_center(positive)
    with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
        ws.receive_json()
        x, y = point
        r = client.post(f"/api/clips/{cid}/clicks", json={"frame": positive, "x": x, "y": y})
        assert r.status_code == 200, r.text
        x, y = square_center(negative)
        r = client.post(
            f"/api/clips/{cid}/clicks",
            json={"frame": negative, "x": x, "y": y, "negative": True, "object_id": 1},
        )
        assert r.status_code == 200, r.text
        job = r.json()["job"]
        assert job["anchor_frame"] == positive
        while True:
            final, _ = wait_job(ws, 1)
            if final["job_id"] == job["job_id"]:
                break
    assert final["state"] == "done", final
    # Both passes start on the positive click's frame: every frame is tracked once.
    assert final["total"] == final["done"] == FRAMES
    frames = {
        f["frame"]: f
        for f in client.get(f"/api/clips/{cid}/export.json").json()["objects"][0]["frames"]
    }
    assert sorted(frames) == list(range(FRAMES))
    # Up to the negative click, the object is what the positive click alone gives.
    alone = direct_masks(model, clip_path, positive, point)
    ious = [mask_iou(rle_decode(frames[i]["rle"]), alone[i]) for i in untouched]
    assert min(ious) > 0.99, ious


def test_describe_and_auto_refine_default_to_a_frame_that_can_start_the_object(
    model: Any, clip_path: Path, tmp_path: Path
) -> None:
    """Positive click on frame 30, negative on frame 10, nothing tracked yet: an object is
    described and auto-refined on frame 30, never from frame 10's negative click alone."""
    from workers.reasoning.images import fitted_size

    sw, sh = fitted_size(W, H, 768)
    x, y = square_center(30)
    nudge = {"action": "positive", "point_2d": [round(x * sw / W), round(y * sh / H)]}
    clicks = [json.dumps(nudge), "Done."]

    def answer(body: dict[str, Any]) -> str:
        return clicks.pop(0) if "next click" in request_text(body) else "A red square."

    with vlm_client(model, tmp_path, answer) as http:
        http.app.state.clips.job_slots = asyncio.Semaphore(0)  # type: ignore[attr-defined]
        cid = upload(http, clip_path)["id"]
        r = http.post(f"/api/clips/{cid}/clicks", json={"frame": 30, "x": x, "y": y})
        assert r.status_code == 200, r.text
        nx, ny = square_center(10)
        cut = {"frame": 10, "x": nx, "y": ny, "negative": True, "object_id": 1}
        assert http.post(f"/api/clips/{cid}/clicks", json=cut).status_code == 200

        r = http.post(f"/api/clips/{cid}/objects/1/describe")
        assert r.status_code == 200, r.text
        start = json.loads(r.text.splitlines()[0])
        assert (start["frame_index"], start["frames"]) == (30, [30])

        r = http.post(f"/api/clips/{cid}/objects/1/auto_refine", json={"frame": 10})
        assert r.status_code == 422 and r.json()["code"] == "bad_prompt", r.text
        assert "frames: 30" in r.json()["detail"]
        r = http.post(f"/api/clips/{cid}/objects/1/auto_refine", json={})
        events = [json.loads(line) for line in r.text.splitlines()]
        assert [(e["type"], e.get("frame_index")) for e in events] == [
            ("refine_click", 30),
            ("refine_done", None),
        ]
        doc = http.get(f"/api/clips/{cid}/export.json").json()
        assert {p["frame"]: p["labels"] for p in doc["objects"][0]["prompts"]} == {
            10: [0],
            30: [1, 1],
        }


def test_auto_refine_of_an_empty_mask_is_refused_not_visible_as_in_live_and_image(
    model: Any, clip_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SAM2 finds nothing for the object's clicks on its frame: Clip refused nothing and ended
    with refine_done "empty" after reading and segmenting, where Live and Image refuse at once
    (not_visible, 409); now the same, and the VLM is not asked."""
    from workers.vision import ImageSegmenter

    asked: list[str] = []

    def answer(body: dict[str, Any]) -> str:
        asked.append(request_text(body))
        return "Done."

    with vlm_client(model, tmp_path, answer) as http:
        cid = upload(http, clip_path)["id"]
        x, y = square_center(30)
        assert http.post(f"/api/clips/{cid}/clicks", json={"frame": 30, "x": x, "y": y}).is_success
        real = ImageSegmenter.segment

        def nothing(self: Any, **prompt: Any) -> Any:
            masks, *rest = real(self, **prompt)
            return (masks * False, *rest)

        monkeypatch.setattr(ImageSegmenter, "segment", nothing)
        r = http.post(f"/api/clips/{cid}/objects/1/auto_refine", json={})
        assert r.status_code == 409 and r.json()["code"] == "not_visible", r.text
        assert "frame 30 is empty" in r.json()["detail"] and asked == []


@pytest.mark.parametrize(
    ("phase", "position", "negative", "positive"),
    [("forward", 10, 8, 5), ("backward", 2, 3, 5)],
)
def test_an_interrupted_job_never_resumes_from_negative_clicks_alone(
    phase: str, position: int, negative: int, positive: int
) -> None:
    prompts = {
        positive: FramePrompt([(3.0, 4.0)], [1]),
        negative: FramePrompt([(6.0, 6.0)], [0]),
    }
    # never visible: it goes on from the positive click, past the negative one
    assert resume_point(phase, position, prompts, {}) == (phase, positive, None)


class HeldRender:
    """The real render, held on its first frame until `go` (patched into exports)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rendering, self.go = threading.Event(), threading.Event()
        self.drawn = 0  # frames drawn
        real = exports.draw_overlays

        def draw_overlays(*args: Any) -> Any:
            self.drawn += 1
            self.rendering.set()
            assert self.go.wait(60)
            return real(*args)

        monkeypatch.setattr(exports, "draw_overlays", draw_overlays)

    @contextlib.contextmanager
    def rendering_export(self, http: TestClient, cid: str) -> Iterator[Sent]:
        """GET export.mp4 sent aside, held while it renders, for the block."""
        with sent_aside(lambda: http.get(f"/api/clips/{cid}/export.mp4"), self.go) as export:
            assert self.rendering.wait(60)
            yield export


@pytest.fixture()
def held_render(monkeypatch: pytest.MonkeyPatch) -> HeldRender:
    return HeldRender(monkeypatch)


def data_dir(http: TestClient) -> Path:
    return http.app.state.settings.data_dir  # type: ignore[attr-defined,no-any-return]


def test_a_clip_deleted_while_its_export_renders_answers_404(
    client: TestClient, clip_path: Path, held_render: HeldRender
) -> None:
    cid = upload(client, clip_path)["id"]
    with held_render.rendering_export(client, cid) as export:
        assert client.delete(f"/api/clips/{cid}").status_code == 200
    r = export.answer
    assert r.status_code == 404 and r.json()["code"] == "unknown_clip", r.text
    assert list(data_dir(client).rglob("export-*")) == []  # no render left, whole or part
    # It stopped at the frame it was drawing, not after the clip's 40, holding a render slot.
    assert held_render.drawn == 1


@pytest.fixture()
def keep_a_day(model: Any, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "data", keep_days=1)
    app = create_app(settings, vision_model=model, reasoner=None, load_vision=False)
    with TestClient(app) as c:
        yield c


def test_retention_keeps_a_clip_while_its_export_renders(
    keep_a_day: TestClient, clip_path: Path, held_render: HeldRender
) -> None:
    http = keep_a_day
    cid = upload(http, clip_path)["id"]
    with held_render.rendering_export(http, cid) as export:
        http.app.state.clips.items[cid].used = 0.0  # type: ignore[attr-defined]  # long unopened
        upload(http, clip_path)  # each upload runs retention
    r = export.answer
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4", r.text
    assert http.get(f"/api/clips/{cid}").status_code == 200


def test_two_exports_of_one_clip_at_once_each_get_a_whole_video(
    client: TestClient, clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first answer is held just before it sends its file while a second export renders."""
    from streamer.http.errors import FileAnswer

    sending, go = threading.Event(), threading.Event()
    real = FileAnswer.__call__

    async def held(response: Any, scope: Any, receive: Any, send: Any) -> None:
        if not sending.is_set():
            sending.set()
            await asyncio.to_thread(go.wait, 60)
        await real(response, scope, receive, send)

    monkeypatch.setattr(FileAnswer, "__call__", held)
    cid = upload(client, clip_path)["id"]
    with sent_aside(lambda: client.get(f"/api/clips/{cid}/export.mp4"), go) as first:
        assert sending.wait(60)
        second = client.get(f"/api/clips/{cid}/export.mp4")
    for answer in (first.answer, second):
        assert answer.status_code == 200, answer.text
        with av.open(io.BytesIO(answer.content)) as video:
            assert sum(1 for _ in video.decode(video=0)) == FRAMES
    # the folder keeps the last render only
    assert len(list((data_dir(client) / "clips" / cid).glob("export-*"))) == 1


def test_an_export_that_waited_for_another_draws_the_objects_as_they_are_then(
    client: TestClient, clip_path: Path, held_render: HeldRender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two exports in a row: the second waits for the first's render; an object removed
    meanwhile is not in the second video (it drew the objects as they were when it was asked)."""
    cid = upload(client, clip_path)["id"]
    with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
        for oid, (x, y) in ((1, square_center(0)), (2, (10.0, 10.0))):
            r = client.post(f"/api/clips/{cid}/clicks", json={"frame": 0, "x": x, "y": y})
            assert r.status_code == 200, r.text
            assert wait_job(ws, oid)[0]["state"] == "done"
    drawn: list[list[int]] = []
    render = exports.render_overlay_video

    def recording(path: Any, info: Any, tracks: dict[int, Any], *args: Any, **kw: Any) -> Any:
        drawn.append(sorted(tracks))
        return render(path, info, tracks, *args, **kw)

    monkeypatch.setattr(exports, "render_overlay_video", recording)
    clip = client.app.state.clips.items[cid]  # type: ignore[attr-defined]
    waiting = threading.Event()
    with held_render.rendering_export(client, cid) as first:
        with sent_aside(lambda: client.get(f"/api/clips/{cid}/export.mp4"), waiting) as second:
            while not getattr(clip.export_lock, "_waiters", None):  # at the render's door
                time.sleep(0.05)
            assert client.delete(f"/api/clips/{cid}/objects/2").status_code == 200
            held_render.go.set()
    assert first.answer.status_code == 200 and second.answer.status_code == 200
    assert drawn == [[1, 2], [1]]


def test_two_renders_run_at_once_and_a_third_export_says_it_waits_its_turn(
    client: TestClient, clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exports of three clips at once: two render, the third waits (its clip's websocket says
    so, and the page's bar), then renders. All rendered at once before, on the thread pool every
    quick read needs: eight held a 2-core machine's whole pool, and an export.json waited 13 s."""

    ids = [upload(client, clip_path)["id"] for _ in range(3)]
    started: list[str] = []  # the clip of each render, as it starts
    go = threading.Event()
    render = exports.render_overlay_video

    def held(path: Any, info: Any, tracks: Any, dest: Path, **kw: Any) -> Any:
        started.append(dest.parent.name)
        assert go.wait(60)
        return render(path, info, tracks, dest, **kw)

    monkeypatch.setattr(exports, "render_overlay_video", held)

    def export(cid: str) -> Any:
        return lambda: client.get(f"/api/clips/{cid}/export.mp4")

    slots = client.app.state.clips.render_slots  # type: ignore[attr-defined]
    with client.websocket_connect(f"/api/clips/{ids[2]}/ws") as ws:
        assert ws.receive_json()["type"] == "hello"
        with sent_aside(export(ids[0]), go) as a, sent_aside(export(ids[1]), go) as b:
            until(lambda: len(started) == 2, "two renders to start")
            with sent_aside(export(ids[2]), go) as c:
                until(lambda: getattr(slots, "_waiters", None), "a third to wait")
                assert sorted(started) == sorted(ids[:2])
                waiting = ws.receive_json()
                assert waiting == {
                    "type": "export", "done": 0, "total": FRAMES, "percent": 0.0, "waiting": True
                }  # fmt: skip
    for sent in (a, b, c):
        assert sent.answer.status_code == 200, sent.answer.text
    assert started[2] == ids[2]  # once a slot was free
