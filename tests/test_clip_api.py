"""Clip mode end to end through the API: upload, click-to-track both ways with websocket progress, refine, cancel, exports.

The exported masks are checked against a StreamTracker run directly on the same decoded frames
(forward from the clicked frame, and reverse=True back to frame 0), so the job's decoding, frame
mapping, RLE and export are all covered by one equality.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from streamer.app import create_app
from streamer.clip.video_io import VideoReader, probe
from streamer.settings import Settings
from tests.conftest import request_text, until
from tests.test_clip_media import LIMITS, square_at, square_center, write_clip
from workers.masks import mask_iou, mask_to_box, rle_decode

FRAMES, W, H = 40, 160, 120  # the clip_path fixture's (tests/conftest.py)
CLICK_FRAME = 15


def _square_box() -> tuple[float, float, float, float]:
    """The square's box on CLICK_FRAME."""
    x0, y0, side = square_at(CLICK_FRAME, W, H)
    return (x0, y0, x0 + side, y0 + side)


@pytest.fixture()
def client(model: Any, tmp_path: Path) -> Any:
    settings = Settings(data_dir=tmp_path / "data", max_clip_jobs=2)
    app = create_app(settings, vision_model=model, reasoner=None, load_vision=False)
    with TestClient(app) as c:
        yield c


def upload(client: TestClient, path: Path, name: str | None = None) -> dict[str, Any]:
    with open(path, "rb") as f:
        r = client.post("/api/clips", files={"file": (name or path.name, f, "video/mp4")})
    assert r.status_code == 201, r.text
    return r.json()


@contextlib.contextmanager
def vlm_client(model: Any, tmp_path: Path, answer: Any, **overrides: Any) -> Iterator[TestClient]:
    """A clip app whose VLM is a scripted server giving `answer`'s replies (`overrides`: its
    settings)."""
    from streamer.services import build_reasoner
    from tests.fakes.openai_server import ScriptedVLMServer

    with ScriptedVLMServer(answer=answer) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        settings = Settings(data_dir=tmp_path / "data", **overrides)
        app = create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
        with TestClient(app) as client:
            yield client


def find_the_square(client: TestClient, cid: str) -> Any:
    """POST a find for the red square on the click frame; the answer, checked to be a 200."""
    r = client.post(
        f"/api/clips/{cid}/find", json={"frame": CLICK_FRAME, "phrase": "the red square"}
    )
    assert r.status_code == 200, r.text
    return r


def wait_job(ws: Any, object_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read pushes until this object's job ends; returns the final message and the progress seen."""
    progress = []
    while True:
        msg = ws.receive_json()
        if msg.get("object_id") != object_id:
            continue
        if msg["type"] == "progress":
            progress.append(msg)
        if msg["type"] == "job" and msg["state"] in ("done", "failed", "cancelled"):
            return msg, progress


def direct_masks(
    model: Any, path: Path, anchor: int, point: tuple[float, float]
) -> dict[int, np.ndarray]:
    """What a StreamTracker gives on the same frames: forward from the anchor and backward from it."""
    from workers.vision import StreamTracker

    info = probe(path, LIMITS)
    out: dict[int, np.ndarray] = {}
    with VideoReader(path, info) as reader:
        fwd = StreamTracker(model)
        for i, frame in reader.frames(anchor):
            res = fwd.step(frame)
            if i == anchor:
                fwd.add_object(points=[point], labels=[1], obj_id=1)
                out[i] = fwd.objects[1].mask
            else:
                out[i] = res.objects[1].mask
        bwd = StreamTracker(model, reverse=True)
        for i, frame in reader.frames_reverse(anchor):
            res = bwd.step(frame)
            if i == anchor:
                bwd.add_object(points=[point], labels=[1], obj_id=1)
            else:
                out[i] = res.objects[1].mask
    return out


@pytest.mark.timeout(240)
def test_track_both_ways_and_export(client: TestClient, clip_path: Path, model: Any) -> None:
    clip = upload(client, clip_path, name="../../etc/passwd.mp4")
    assert clip["frame_count"] == FRAMES and (clip["width"], clip["height"]) == (W, H)
    assert clip["filename"] == "passwd.mp4" and clip["playable"]
    cid = clip["id"]
    t = clip["frame_times"][CLICK_FRAME] + 0.3 / 25  # mid-frame, as a paused <video> reports
    assert client.get(f"/api/clips/{cid}/frame", params={"t": t}).json()["frame"] == CLICK_FRAME

    # The page can seek: the video is served with byte ranges.
    r = client.get(f"/api/clips/{cid}/video", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and len(r.content) == 100

    point = square_center(CLICK_FRAME)
    with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
        assert ws.receive_json()["type"] == "hello"
        r = client.post(f"/api/clips/{cid}/clicks", json={"t": t, "x": point[0], "y": point[1]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["frame"] == CLICK_FRAME and body["object_id"] == 1
        # the page's row shows the label the server's object list has, from the answer at once
        (listed,) = client.get(f"/api/clips/{cid}").json()["objects"]
        assert body["label"] == listed["label"] == "object 1"
        final, progress = wait_job(ws, 1)
    assert final["state"] == "done", final
    assert final["done"] == final["total"] == FRAMES and final["percent"] == 100.0
    assert any(p["fps"] > 0 for p in progress)

    doc = client.get(f"/api/clips/{cid}/export.json")
    assert doc.status_code == 200
    assert "attachment" in doc.headers["content-disposition"]
    data = doc.json()
    assert data["schema"] == "fmu-live/clip-export" and len(data["clip"]["frame_times"]) == FRAMES
    (obj,) = data["objects"]
    frames = {f["frame"]: f for f in obj["frames"]}
    assert sorted(frames) == list(range(FRAMES))  # frames before the click were tracked too
    expected = direct_masks(model, clip_path, CLICK_FRAME, point)
    ious = [mask_iou(rle_decode(frames[i]["rle"]), expected[i]) for i in range(FRAMES)]
    assert min(ious) > 0.99, ious
    exact = sum(np.array_equal(rle_decode(frames[i]["rle"]), expected[i]) for i in range(FRAMES))
    assert exact >= FRAMES - 2, f"only {exact}/{FRAMES} masks identical"

    window = client.get(f"/api/clips/{cid}/results", params={"start": 10, "count": 5}).json()
    assert sorted(int(k) for k in window["frames"]) == [10, 11, 12, 13, 14]

    video = client.get(f"/api/clips/{cid}/export.mp4")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(video.content)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == FRAMES and decoded[0].shape == (H, W, 3)


@pytest.mark.timeout(240)
def direct_two_prompts(
    model: Any, path: Path, prompts: dict[int, tuple[float, float]]
) -> dict[int, np.ndarray]:
    """StreamTracker forward from the first prompt and backward from the last, each refining at
    every prompted frame it reaches; before the last prompt the backward masks stand."""
    from workers.vision import StreamTracker

    first, last = min(prompts), max(prompts)
    out: dict[int, np.ndarray] = {}
    with VideoReader(path, probe(path, LIMITS)) as reader:
        for reverse, frames in (
            (False, reader.frames(first)),
            (True, reader.frames_reverse(last)),
        ):
            tracker = StreamTracker(model, reverse=reverse)
            for i, frame in frames:
                tracker.step(frame)
                if i in prompts and 1 in tracker.objects:
                    tracker.refine(1, points=[prompts[i]], labels=[1])
                elif i in prompts:
                    tracker.add_object(points=[prompts[i]], labels=[1], obj_id=1)
                if not (reverse and i == last):
                    out[i] = tracker.objects[1].mask
    return out


@pytest.mark.timeout(240)
def test_a_later_click_steers_the_backward_pass_too(
    client: TestClient, clip_path: Path, model: Any
) -> None:
    cid = upload(client, clip_path)["id"]
    prompts = {10: square_center(10), 30: square_center(30)}
    with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
        ws.receive_json()
        for frame, (x, y) in prompts.items():
            r = client.post(
                f"/api/clips/{cid}/clicks",
                json={"frame": frame, "x": x, "y": y, "object_id": 1 if frame == 30 else None},
            )
            assert r.status_code == 200, r.text
        job_id = r.json()["job"]["job_id"]
        while True:
            final, _ = wait_job(ws, 1)
            if final["job_id"] == job_id:
                break
    assert final["state"] == "done", final
    # forward 10..39 and backward 29..0: every frame once, the 19 in between twice
    assert final["total"] == (FRAMES - 10) + 30 and final["done"] == final["total"]
    frames = {
        f["frame"]: f
        for f in client.get(f"/api/clips/{cid}/export.json").json()["objects"][0]["frames"]
    }
    assert sorted(frames) == list(range(FRAMES))
    expected = direct_two_prompts(model, clip_path, prompts)
    ious = [mask_iou(rle_decode(frames[i]["rle"]), expected[i]) for i in range(FRAMES)]
    assert min(ious) > 0.99, ious


def test_refine_cancel_and_remove(client: TestClient, clip_path: Path) -> None:
    cid = upload(client, clip_path)["id"]
    point = square_center(5)
    with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
        ws.receive_json()
        client.post(f"/api/clips/{cid}/clicks", json={"frame": 5, "x": point[0], "y": point[1]})
        # A second click on the same object re-runs it (the first run is cancelled or replaced).
        r = client.post(
            f"/api/clips/{cid}/clicks",
            json={"frame": 5, "x": 5.0, "y": 5.0, "negative": True, "object_id": 1},
        )
        assert r.status_code == 200 and r.json()["object_id"] == 1
        job_id = r.json()["job"]["job_id"]
        while True:
            final, _ = wait_job(ws, 1)
            if final["job_id"] == job_id:
                break
        assert final["state"] == "done"
        # A second object, cancelled over the websocket while it waits for a job slot (every
        # slot held here), so the cancel lands before the job could finish on its own.
        slots = client.app.state.clips.job_slots  # type: ignore[attr-defined]
        for _ in range(2):  # max_clip_jobs
            client.portal.call(slots.acquire)  # type: ignore[union-attr]
        r = client.post(f"/api/clips/{cid}/clicks", json={"frame": 30, "x": 100.0, "y": 20.0})
        oid = r.json()["object_id"]
        assert oid == 2 and r.json()["job"]["state"] == "queued"
        ws.send_json({"type": "cancel", "object_id": oid})
        final, _ = wait_job(ws, oid)
        assert final["state"] == "cancelled" and final["done"] == 0
        for _ in range(2):
            slots.release()
    info = client.get(f"/api/clips/{cid}").json()
    states = {o["id"]: o["job"]["state"] for o in info["objects"]}
    assert states == {1: "done", 2: "cancelled"}
    prompts = client.get(f"/api/clips/{cid}/export.json").json()["objects"][0]["prompts"]
    assert prompts == [
        {"frame": 5, "points": [list(point), [5.0, 5.0]], "labels": [1, 0], "box": None}
    ]
    assert client.delete(f"/api/clips/{cid}/objects/2").status_code == 200
    r = client.delete(f"/api/clips/{cid}/objects")  # reset: every object goes, the clip stays
    assert (r.json()["type"], r.json()["objects"], r.json()["added"]) == ("objects", [], None)
    assert client.get(f"/api/clips/{cid}").json()["objects"] == []
    assert client.delete(f"/api/clips/{cid}").status_code == 200
    assert client.get(f"/api/clips/{cid}").status_code == 404


def test_a_reset_skips_an_object_removed_meanwhile(
    client: TestClient, clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reset goes on past an object a remove took while it worked (it stopped with 404 "no object
    2", leaving object 3 and its job)."""
    from tests.test_image_api import reset_meeting_a_remove

    cid = upload(client, clip_path)["id"]
    for x in (10, 60, 120):
        r = client.post(f"/api/clips/{cid}/clicks", json={"frame": CLICK_FRAME, "x": x, "y": 10})
        assert r.status_code == 200, r.text
    reset, removed = reset_meeting_a_remove(client, f"/api/clips/{cid}", 2, monkeypatch)
    assert removed.status_code == 200, removed.text
    assert reset.status_code == 200, reset.text
    assert reset.json()["objects"] == [] and client.get(f"/api/clips/{cid}").json()["objects"] == []
    assert client.get(f"/api/clips/{cid}/presence").json()["objects"] == {}


@pytest.mark.timeout(120)
def test_a_resumed_job_stopped_before_its_first_frame_keeps_what_was_tracked(
    client: TestClient, clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job cancelled at frame 12, resumed, and cancelled again while it waits for a job slot:
    a third resume still goes on from where the first stopped, keeping frames 5..12, instead of
    starting over from the click with every result thrown away."""
    from streamer.clip.job import TrackJob

    at_13, go_on = threading.Event(), threading.Event()
    step = TrackJob._step

    def held_at_13(job: Any, tracker: Any, frame: Any, index: int, prompt: Any) -> Any:
        if index == 13 and not go_on.is_set():
            at_13.set()
            go_on.wait(60)
        return step(job, tracker, frame, index, prompt)

    monkeypatch.setattr(TrackJob, "_step", held_at_13)
    cid = upload(client, clip_path)["id"]

    def tracked() -> int:
        return sum(
            c != "." for c in client.get(f"/api/clips/{cid}/presence").json()["objects"]["1"]
        )

    r = client.post(f"/api/clips/{cid}/clicks", json={"frame": 5, "x": 20.0, "y": 20.0})
    assert r.status_code == 200, r.text
    assert at_13.wait(60)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the cancel waits for the job
        cancel = pool.submit(client.post, f"/api/clips/{cid}/objects/1/cancel")
        task = client.app.state.clips.items[cid].tracks[1].task  # type: ignore[attr-defined]
        until(lambda: task.cancelling() or task.done(), "the cancel reaches the job")
        go_on.set()  # frame 13, finished after the cancel, is not kept
        assert cancel.result(60).json()["job"]["state"] == "cancelled"
    assert tracked() == 8  # frames 5..12

    slots = client.app.state.clips.job_slots  # type: ignore[attr-defined]
    for _ in range(2):  # max_clip_jobs: every slot held, so the resumed job waits
        client.portal.call(slots.acquire)  # type: ignore[union-attr]
    r = client.post(f"/api/clips/{cid}/objects/1/resume")
    resumed = r.json()["job"]
    assert (resumed["state"], resumed["phase"]) == ("queued", "forward"), resumed
    assert 5 <= resumed["position"] <= 12
    assert client.post(f"/api/clips/{cid}/objects/1/cancel").json()["job"]["state"] == "cancelled"
    again = client.post(f"/api/clips/{cid}/objects/1/resume").json()["job"]
    assert (again["phase"], again["position"]) == ("forward", resumed["position"])
    assert tracked() == 8
    for _ in range(2):
        slots.release()
    with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
        ws.receive_json()
        if client.get(f"/api/clips/{cid}").json()["objects"][0]["job"]["state"] != "done":
            final, _ = wait_job(ws, 1)
            assert final["state"] == "done", final
    assert tracked() == 40


def test_two_first_requests_for_a_thumbnail_at_once_both_get_it(
    client: TestClient, clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tabs open the library on a new clip: both write its thumbnail at the same moment."""
    from PIL import Image

    both_written = threading.Barrier(2, timeout=30)
    save = Image.Image.save

    def save_then_wait(img: Any, *args: Any, **kwargs: Any) -> None:
        save(img, *args, **kwargs)
        both_written.wait()

    monkeypatch.setattr(Image.Image, "save", save_then_wait)
    cid = upload(client, clip_path)["id"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: client.get(f"/api/clips/{cid}/thumbnail.jpg"), range(2)))
    for r in answers:
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (160, 120)
    clip_dir = client.app.state.clips.items[cid].dir  # type: ignore[attr-defined]
    assert sorted(p.name for p in clip_dir.glob("thumb*")) == ["thumb.jpg"]


@pytest.mark.timeout(120)
def test_a_job_whose_clip_file_cannot_be_opened_fails_saying_why(
    client: TestClient, clip_path: Path
) -> None:
    """The uploaded file is gone (or damaged since): the job ends failed, naming why, instead of
    "running" for ever, and it can be resumed."""
    cid = upload(client, clip_path)["id"]
    client.app.state.clips.items[cid].path.unlink()  # type: ignore[attr-defined]
    with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
        ws.receive_json()
        r = client.post(f"/api/clips/{cid}/clicks", json={"frame": 5, "x": 20.0, "y": 20.0})
        assert r.status_code == 200, r.text
        final, progress = wait_job(ws, 1)
    assert final["state"] == "failed" and "No such file" in final["error"], final
    assert progress[-1]["state"] == "failed"  # the last progress every ended job sends
    assert client.get(f"/api/clips/{cid}").json()["objects"][0]["job"]["state"] == "failed"
    r = client.post(f"/api/clips/{cid}/objects/1/resume")
    assert r.status_code == 200 and r.json()["job"]["job_id"] != final["job_id"], r.text


def test_click_errors_are_clear(client: TestClient, clip_path: Path) -> None:
    cid = upload(client, clip_path)["id"]
    r = client.post(f"/api/clips/{cid}/clicks", json={"frame": 3, "x": 500, "y": 5})
    assert r.status_code == 422 and "outside the frame" in r.json()["detail"]
    r = client.post(f"/api/clips/{cid}/clicks", json={"x": 5, "y": 5})
    assert r.status_code == 422 and "currentTime" in r.json()["detail"]
    r = client.post(f"/api/clips/{cid}/clicks", json={"frame": 99, "x": 5, "y": 5})
    assert r.status_code == 422 and "0..39" in r.json()["detail"]
    # two frames named: the frame was taken without a word about the time
    r = client.post(f"/api/clips/{cid}/clicks", json={"t": 0.5, "frame": 3, "x": 5, "y": 5})
    assert r.status_code == 422 and "send t or frame, not both" in r.json()["detail"]
    # the rules of every mode: a negative click never starts an object, no unknown objects
    r = client.post(f"/api/clips/{cid}/clicks", json={"frame": 3, "x": 5, "y": 5, "negative": True})
    assert r.status_code == 422 and r.json()["code"] == "bad_prompt"
    assert "select the object first" in r.json()["detail"]
    r = client.post(f"/api/clips/{cid}/clicks", json={"frame": 3, "x": 5, "y": 5, "object_id": 7})
    assert r.status_code == 404 and r.json()["code"] == "unknown_object"
    assert client.get(f"/api/clips/{cid}").json()["objects"] == []
    r = client.post(f"/api/clips/{cid}/objects/1/describe")
    assert r.status_code == 503 and "descriptions are off" in r.json()["detail"]


@pytest.mark.timeout(240)
def test_find_then_describe_and_chat_over_the_track(
    model: Any, clip_path: Path, tmp_path: Path
) -> None:
    from workers.reasoning.grounding import from_frame_box
    from workers.reasoning.images import fitted_size

    square = _square_box()
    checked_at: dict[str, Any] = {}  # where the description grounds back (set below)

    def as_qwen(box: Any) -> str:
        sent = from_frame_box(
            tuple(box), convention="absolute", image_size=fitted_size(W, H, 768), frame_size=(W, H)
        )
        return json.dumps([{"bbox_2d": list(sent), "label": "red square"}])

    def answer(request: dict[str, Any]) -> str:
        text = request_text(request)
        if "Locate" in text and "sliding" in text:  # the check of the description
            return as_qwen(checked_at["box"])
        if "Locate" in text:  # find: the square where it is on the click frame
            return as_qwen(square)
        if "keyframes" in text:
            return "A red square sliding to the right."
        return "It moves right."

    with vlm_client(model, tmp_path, answer) as client:
        cid = upload(client, clip_path)["id"]
        with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
            ws.receive_json()
            r = find_the_square(client, cid)
            assert r.json()["type"] == "find_result" and r.json()["frame_index"] == CLICK_FRAME
            (found,) = r.json()["objects"]
            assert found["label"] == "red square"
            final, _ = wait_job(ws, found["object_id"])
        assert final["state"] == "done"
        oid = found["object_id"]
        # The check grounds the description on the last keyframe, the last frame where the
        # object is visible: back onto its mask's box there, so it is verified at once.
        frames = client.get(f"/api/clips/{cid}/results", params={"count": FRAMES}).json()
        present = [int(i) for i, per in frames["frames"].items() if per[str(oid)]["present"]]
        checked_at["box"] = frames["frames"][str(max(present))][str(oid)]["box"]
        r = client.post(f"/api/clips/{cid}/objects/{oid}/describe")
        events = [json.loads(line) for line in r.text.splitlines()]
        start = events[0]
        assert start["type"] == "description_start" and 1 <= len(start["frames"]) <= 6
        assert start["frame_index"] == start["frames"][-1] == max(present)
        verdict = next(e for e in events if e["type"] == "verdict")
        assert verdict["description"] == "A red square sliding to the right."
        assert verdict["verdict"] == "verified" and verdict["attempts"] == 1
        r = client.post(
            f"/api/clips/{cid}/objects/{oid}/chat",
            json={"question": "Where does it go?", "frame": 3},
        )
        events = [json.loads(line) for line in r.text.splitlines()]
        assert "".join(e.get("text", "") for e in events).strip() == "It moves right."
        assert events[-1]["type"] == "chat_done" and events[-1]["answer"] == "It moves right."
        doc = client.get(f"/api/clips/{cid}/export.json").json()
        (obj,) = doc["objects"]
        assert obj["description"] == "A red square sliding to the right."
        assert obj["verdict"] == "verified" and obj["prompts"][0]["box"] is not None
        assert obj["label"] == "A red square sliding to the…"  # the one label policy


@pytest.mark.timeout(240)
def test_a_click_on_a_new_place_is_described_at_once_from_its_clicked_frame(
    model: Any, clip_path: Path, tmp_path: Path
) -> None:
    """As in Live: the click's answer says to describe, and the description needs no tracked
    frame: it comes from SAM2's mask for the click on the clicked frame."""
    from workers.reasoning.grounding import from_frame_box
    from workers.reasoning.images import fitted_size
    from workers.vision import ImageSegmenter

    x, y = square_center(CLICK_FRAME)
    with VideoReader(clip_path, probe(clip_path, LIMITS)) as reader:
        frame = reader.frame(CLICK_FRAME)
    seg = ImageSegmenter(model)
    seg.set_image(frame)
    clicked_mask = seg.segment(points=[(x, y)], labels=[1])[0]
    mask_box = mask_to_box(clicked_mask)
    assert mask_box is not None

    def answer(request: dict[str, Any]) -> str:
        if "Locate" in request_text(request):  # the check grounds onto the clicked mask's box
            sent = from_frame_box(
                mask_box,
                convention="absolute",
                image_size=fitted_size(W, H, 768),
                frame_size=(W, H),
            )
            return json.dumps([{"bbox_2d": list(sent), "label": "square"}])
        return "A red square."

    with vlm_client(model, tmp_path, answer) as client:
        # Every tracking slot is taken (other clips' jobs): the new object's job waits.
        client.app.state.clips.job_slots = asyncio.Semaphore(0)  # type: ignore[attr-defined]
        cid = upload(client, clip_path)["id"]
        r = client.post(f"/api/clips/{cid}/clicks", json={"frame": CLICK_FRAME, "x": x, "y": y})
        assert r.status_code == 200 and r.json()["describe"] is True
        assert r.json()["job"]["state"] == "queued"
        oid = r.json()["object_id"]
        describe = f"/api/clips/{cid}/objects/{oid}/describe"
        r = client.post(describe, json={"frame": CLICK_FRAME})  # what the page sends
        assert r.status_code == 200, r.text
        events = [json.loads(line) for line in r.text.splitlines()]
        assert events[0] == {
            "type": "description_start",
            "object_id": oid,
            "frame_index": CLICK_FRAME,
            "frames": [CLICK_FRAME],
        }
        verdict = next(e for e in events if e["type"] == "verdict")
        assert verdict["description"] == "A red square."
        assert verdict["verdict"] == "verified" and verdict["attempts"] == 1
        info = client.get(f"/api/clips/{cid}").json()
        assert info["objects"][0]["description"] == "A red square."
        assert info["objects"][0]["frames"] == 0  # described before any frame was tracked
        # Not tracked on another frame yet, and no clicks there: nothing to describe from.
        r = client.post(describe, json={"frame": 3})
        assert r.status_code == 409 and r.json()["code"] == "not_visible"
        # A question before tracking reached a frame is answered on the clicked frame too (it
        # was refused, "wait for tracking to reach it"), whatever time the page was at.
        r = client.post(
            f"/api/clips/{cid}/objects/{oid}/chat", json={"question": "And?", "frame": 3}
        )
        assert r.status_code == 200, r.text
        done = [json.loads(line) for line in r.text.splitlines()][-1]
        assert done["type"] == "chat_done" and done["frame_index"] == CLICK_FRAME
        # A frame the clip does not have is refused before tracking got anywhere, as after.
        for frame in (40, 2**63):
            r = client.post(
                f"/api/clips/{cid}/objects/{oid}/chat", json={"question": "And?", "frame": frame}
            )
            assert r.status_code == 422 and "frame must be in 0..39" in r.text, r.text
        # A refining click does not start another description.
        refine = {"frame": CLICK_FRAME, "x": x, "y": y, "object_id": oid}
        assert client.post(f"/api/clips/{cid}/clicks", json=refine).json()["describe"] is False


@contextlib.contextmanager
def direct_job(
    model: Any, clip_path: Path, frame: int, on_progress: Any, slow: Any = None
) -> Iterator[Any]:
    """A TrackJob of object 1 clicked on `frame` of the clip, its SAM2 steps on a thread of its
    own; `slow`: an asyncio.Event each frame after the clicked one waits for (None: no wait)."""
    import asyncio
    import functools
    from concurrent.futures import ThreadPoolExecutor

    from streamer.clip.job import FramePrompt, TrackJob

    pool = ThreadPoolExecutor(1)

    async def run_vision(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if slow is not None and fn == job._step and args[-1] is None:
            await slow.wait()
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(fn, *args, **kwargs)
        )

    job = TrackJob(
        job_id="c",
        obj_id=1,
        path=clip_path,
        info=probe(clip_path, LIMITS),
        prompts={frame: FramePrompt([(100.0, 60.0)], [1])},
        model=model,
        run_vision=run_vision,
        results={},
        on_progress=on_progress,
    )
    try:
        yield job
    finally:
        pool.shutdown()


@pytest.mark.timeout(120)
async def test_cancelling_a_job_mid_pass_leaves_the_process_whole(
    model: Any, clip_path: Path
) -> None:
    """Cancel at several points of both passes (decode threads in flight): no crash, partial results kept."""
    import asyncio

    from streamer.clip.job import TrackJob

    for stop_after in (0, 1, 5, FRAMES - 30 + 2):  # the last one lands in the backward pass
        task: asyncio.Task | None = None

        def on_progress(job: TrackJob, stop_after: int = stop_after) -> None:
            if job.progress.done >= stop_after and task is not None:
                task.cancel()

        with direct_job(model, clip_path, 30, on_progress) as job:
            job._emit = lambda force=False, job=job: on_progress(job)  # type: ignore[method-assign]
            task = asyncio.create_task(job.run())
            with pytest.raises(asyncio.CancelledError):
                await task
        assert job.state == "cancelled"
        assert len(job.results) >= min(stop_after, 1) and len(job.results) < FRAMES


@pytest.mark.timeout(120)
async def test_a_frame_done_just_after_the_last_progress_is_said_while_the_next_one_is_slow(
    model: Any, clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress goes out at most ~8 times a second: the clicked frame, done within that limit of
    the job's start, was said only with the next frame, so while that one was slow (or the job
    held) the page never drew the clicked frame's mask. It goes out once the limit allows."""
    import asyncio
    from types import SimpleNamespace

    from streamer.clip import job as job_module

    # The job's clock stands still: every step is within the limit of the job's start, as on a
    # fast machine (the event loop's own clock runs on).
    monkeypatch.setattr(job_module, "time", SimpleNamespace(monotonic=lambda: 1000.0))
    slow_frame = asyncio.Event()  # every frame after the clicked one waits until the test looked
    said: list[tuple[str, int]] = []
    on_progress = lambda job: said.append((job.state, job.progress.done))  # noqa: E731
    with direct_job(model, clip_path, 0, on_progress, slow=slow_frame) as job:
        task = asyncio.create_task(job.run())
        try:
            async with asyncio.timeout(60):
                while ("running", 1) not in said:
                    await asyncio.sleep(0.05)
            assert job.results.keys() == {0}, said
        finally:
            slow_frame.set()
            await task
    assert said[-1] == ("done", FRAMES)


def test_clip_socket_answers_binary_and_oversize_frames_with_a_message(
    client: TestClient, clip_path: Path
) -> None:
    cid = upload(client, clip_path)["id"]
    with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
        assert ws.receive_json()["type"] == "hello"
        ws.send_bytes(b"\x00\x01binary")
        error = ws.receive_json()
        assert error["code"] == "bad_message" and "binary" in error["message"]
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"  # the connection is still there
        ws.send_text("x" * (65 * 1024))
        error = ws.receive_json()
        assert error["code"] == "bad_message" and error["fatal"] and "limit" in error["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009
    assert client.get(f"/api/clips/{cid}").status_code == 200  # the clip is untouched


def test_a_click_at_an_infinite_time_is_a_422(client: TestClient, clip_path: Path) -> None:
    cid = upload(client, clip_path)["id"]
    for bad in ('{"x": 10, "y": 10, "t": Infinity}', '{"x": NaN, "y": 10, "t": 0}'):
        r = client.post(
            f"/api/clips/{cid}/clicks", content=bad, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422, (bad, r.text)
    assert client.get(f"/api/clips/{cid}").json()["objects"] == []


@pytest.mark.timeout(240)
def test_checked_find_tracks_only_the_candidate_the_vlm_accepts(
    model: Any, clip_path: Path, tmp_path: Path
) -> None:
    from tests.conftest import CheckedFindScript

    square = _square_box()
    corner = (2.0, 2.0, 28.0, 28.0)
    script = CheckedFindScript([corner, square], ["no", "yes, it is a red square"], (W, H))
    with vlm_client(model, tmp_path, script) as client:
        cid = upload(client, clip_path)["id"]
        with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
            ws.receive_json()
            r = find_the_square(client, cid)
            answer = r.json()
            assert len(script.checks) == 2 and all(n >= 1 for n in script.check_images())
            assert all('"the red square"' in request_text(b) for b in script.checks)
            (found,) = answer["objects"]
            assert found["check"] == "match" and found["box"] == pytest.approx(square, abs=2)
            (rejected,) = answer["rejected"]
            assert rejected["check"] == "no_match"
            assert rejected["box"] == pytest.approx(corner, abs=2)
            final, _ = wait_job(ws, found["object_id"])
        assert final["state"] == "done"
        objects = client.get(f"/api/clips/{cid}").json()["objects"]
        assert [(o["id"], o["find_check"]) for o in objects] == [(found["object_id"], "match")]


@pytest.mark.timeout(300)
def test_find_all_counts_on_the_frame_and_tracks_each_through_the_clip(
    model: Any, clip_path: Path, tmp_path: Path
) -> None:
    from streamer.services import build_reasoner
    from tests.fakes.openai_server import ScriptedVLMServer
    from tests.test_find_all import PROPOSE_ANYTHING

    with ScriptedVLMServer(answer='{"answers": ["yes", "no", "yes", "yes"]}') as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        settings = Settings(data_dir=tmp_path / "data", **PROPOSE_ANYTHING)
        app = create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
        with TestClient(app) as client:
            cid = upload(client, clip_path)["id"]
            with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
                ws.receive_json()
                r = client.post(
                    f"/api/clips/{cid}/find_all",
                    json={"frame": CLICK_FRAME, "phrase": "Find all: red squares"},
                )
                assert r.status_code == 200, r.text
                events = [json.loads(line) for line in r.text.splitlines()]
                assert events[0] == {**events[0], "type": "find_progress", "stage": "proposing"}
                result = events[-1]
                assert result["type"] == "find_result" and result["frame_index"] == CLICK_FRAME
                assert result["proposals"] >= 1
                (ask,) = [b for b in srv.requests if "Classify each region" in request_text(b)]
                assert '"red squares"' in request_text(ask)
                # The VLM said yes, no, yes to the proposals it was shown: those yes are tracked.
                expected = [a for a in ("yes", "no", "yes")[: result["proposals"]] if a == "yes"]
                assert result["count"] == len(expected) == len(result["objects"])
                for found in result["objects"]:
                    final, _ = wait_job(ws, found["object_id"])
                    assert final["state"] == "done"
            objects = client.get(f"/api/clips/{cid}").json()["objects"]
            assert [o["find_check"] for o in objects] == ["match"] * result["count"]
            r = client.post(f"/api/clips/{cid}/find_all", json={"frame": 10_000, "phrase": "x"})
            assert r.status_code in (404, 422), r.text


@pytest.mark.timeout(300)
def test_auto_refine_adds_the_vlm_clicks_as_prompts_in_order(
    model: Any, clip_path: Path, tmp_path: Path
) -> None:
    from workers.reasoning.images import fitted_size

    sw, sh = fitted_size(W, H, 768)

    def click(kind: str, x: float, y: float) -> str:
        return json.dumps({"action": kind, "point_2d": [round(x * sw / W), round(y * sh / H)]})

    answers = [click("negative", 5, 5), "Sure: " + click("positive", 84, 63), "Done.", "junk"]
    asked: list[str] = []

    def answer(body: dict[str, Any]) -> str:
        if "next click" not in request_text(body):
            return "a red square"
        asked.append(request_text(body))
        return answers[min(len(asked), len(answers)) - 1]

    x, y = square_center(CLICK_FRAME)
    with vlm_client(model, tmp_path, answer) as client:
        cid = upload(client, clip_path)["id"]
        with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
            ws.receive_json()
            r = client.post(f"/api/clips/{cid}/clicks", json={"frame": CLICK_FRAME, "x": x, "y": y})
            oid = r.json()["object_id"]
            wait_job(ws, oid)
            r = client.post(f"/api/clips/{cid}/objects/{oid}/auto_refine", json={})
            events = [json.loads(line) for line in r.text.splitlines()]
            assert [e["type"] for e in events] == [
                "refine_click",
                "refine_click",
                "refine_done",
            ]
            assert all(e["frame_index"] == CLICK_FRAME for e in events[:2])
            assert events[-1]["reason"] == "done" and events[-1]["steps"] == 2
            # Each click re-tracked the clip (the first re-run gives way to the second).
            states = [wait_job(ws, oid)[0]["state"]]
            if states[-1] == "cancelled":
                states.append(wait_job(ws, oid)[0]["state"])
            assert states[-1] == "done"
            doc = client.get(f"/api/clips/{cid}/export.json").json()
            (prompt,) = doc["objects"][0]["prompts"]
            assert prompt["labels"] == [1, 0, 1]
            assert prompt["points"][0] == pytest.approx([x, y])
            assert prompt["points"][1:] == [
                pytest.approx([events[0]["x"], events[0]["y"]]),
                pytest.approx([events[1]["x"], events[1]["y"]]),
            ]
            assert prompt["points"][1] == pytest.approx([5, 5], abs=1)

            # Junk: a clear message, nothing applied.
            r = client.post(f"/api/clips/{cid}/objects/{oid}/auto_refine", json={})
            (done,) = [json.loads(line) for line in r.text.splitlines()]
            assert done["reason"] == "unclear" and done["steps"] == 0
            assert "neither a click nor done" in done["message"]
            doc = client.get(f"/api/clips/{cid}/export.json").json()
            assert doc["objects"][0]["prompts"] == [prompt]


def test_a_failed_browser_copy_is_in_the_clip_info_for_a_page_that_opens_it_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page that opens the clip (GET, the websocket's hello) learns that it has no picture,
    and /video says why, instead of waiting for a copy that will never come."""
    from streamer.clip import exports
    from streamer.clip.playback import PROXY_FAILED

    uploaded = threading.Event()  # the copy fails once the upload's answer is read

    def failing_copy(*args: Any, **kwargs: Any) -> None:
        assert uploaded.wait(60)
        raise RuntimeError("the encoder gave up")

    monkeypatch.setattr(exports, "render_overlay_video", failing_copy)
    avi = write_clip(tmp_path / "old.avi", frames=6, codec="mjpeg", width=W, height=H)
    app = create_app(Settings(data_dir=tmp_path / "d"), reasoner=None, load_vision=False)
    with TestClient(app) as client:
        clip = upload(client, avi)
        uploaded.set()
        assert (clip["playable"], clip["proxy"]) == (False, "running")
        copying = app.state.clips.items[clip["id"]].proxy_task
        client.portal.call(asyncio.wait_for, copying, 60)  # type: ignore[union-attr]
        info = client.get(f"/api/clips/{clip['id']}").json()
        assert (info["playable"], info["proxy"]) == (False, "failed")
        with client.websocket_connect(f"/api/clips/{clip['id']}/ws") as ws:
            assert ws.receive_json()["clip"]["proxy"] == "failed"
        video = client.get(clip["video_url"])
        assert video.status_code == 415 and video.json()["detail"] == PROXY_FAILED


async def test_a_page_reading_slowly_gets_each_jobs_newest_progress_and_every_jobs_end() -> None:
    """Two jobs send progress ~8 times a second to a page that does not read for 40 s, and object 1
    gets a new job after its first ends: the page then gets each job's newest progress once, in
    order with job 1's end. (The page's queue dropped its oldest messages past 64, job 1's end
    among them: its bar stayed at 100%, "running".)"""
    from streamer.clip import protocol as cp
    from streamer.clip.state import Clip, Feed
    from streamer.objects.table import ObjectTable

    table = ObjectTable(cap=4, where="clip")
    clip = Clip("c", "a.mp4", Path("a.mp4"), None, True, "video/mp4", table)  # type: ignore[arg-type]
    feed = Feed(maxsize=64)
    clip.subscribers.add(feed)

    def job(oid: int, done: int, state: str = "running") -> dict[str, Any]:
        return dict(job_id=f"j{oid}", object_id=oid, state=state, phase="forward", done=done,
                    total=300, percent=done / 3, fps=8.0, eta_s=None, anchor_frame=0)  # fmt: skip

    for done in range(1, 301):
        clip.publish(cp.ProgressMessage(**job(2, done)))
        if done <= 100:
            clip.publish(cp.ProgressMessage(**job(1, done, "done" if done == 100 else "running")))
        if done == 100:
            clip.publish(cp.JobMessage(**job(1, done, "done")))
        if done > 200:  # object 1 clicked again: a new job, whose progress goes after the end
            clip.publish(cp.ProgressMessage(**{**job(1, done - 200), "job_id": "j1-again"}))
    got = [feed.get_nowait() for _ in range(feed.qsize())]
    assert [(m.type, m.job_id, m.state, m.done) for m in got] == [  # type: ignore[attr-defined]
        ("progress", "j2", "running", 300),
        ("progress", "j1", "done", 100),
        ("job", "j1", "done", 100),
        ("progress", "j1-again", "running", 100),
    ]
