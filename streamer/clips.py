"""Clip mode over HTTP and a websocket: upload, playback, click-to-track jobs with progress, describe/chat/find, exports.

Routes (all JSON unless said otherwise):
  POST   /api/clips                              multipart `file`: upload, validate, 201 with the clip
  GET    /api/clips/{id}                         clip info, objects, jobs
  DELETE /api/clips/{id}                         cancel its jobs, delete its files
  GET    /api/clips/{id}/video                   the clip (or its H.264 proxy), HTTP Range for seeking
  GET    /api/clips/{id}/frame?t=                which frame is on screen at time t
  POST   /api/clips/{id}/clicks                  {t|frame, x, y, negative, object_id}: track (or refine) an object
  POST   /api/clips/{id}/find                    {t|frame, phrase}: ground on that frame, track every box
  GET    /api/clips/{id}/results?start=&count=   per-frame results (RLE, box, score, present) for a window
  POST   /api/clips/{id}/objects/{oid}/cancel    cancel that object's job
  DELETE /api/clips/{id}/objects/{oid}           forget an object
  POST   /api/clips/{id}/objects/{oid}/describe  NDJSON stream: token events, then a verdict
  POST   /api/clips/{id}/objects/{oid}/chat      {question, history, t|frame}: NDJSON stream of tokens
  GET    /api/clips/{id}/export.json             download, schema in docs/export-schema.md
  GET    /api/clips/{id}/export.mp4              download, overlays drawn (rendered on first request)
  WS     /ws/clips/{id}                          progress and job state pushes; {"type": "cancel"} in

Playback: a clip whose (container, codec) Chromium plays (MP4/MOV/MKV with H.264, WebM/MKV with
VP8/VP9/AV1) is served as uploaded, with HTTP Range so <video> can seek. Anything else (MJPEG,
MPEG-4 part 2, AVI, ...) gets an H.264 MP4 proxy rendered in the background with the source's frame
timestamps and rotation applied; until it is ready /video answers 409 and the websocket announces
{"type": "proxy", "state": "ready"}. Either way frame i has the same time in the page as here.

Uploads live in data_dir/clips/<id>/ under generated names and are removed when the clip is
deleted, evicted (MAX_CLIPS_KEPT) or the app shuts down: clips do not survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from streamer import exports
from streamer._http import check_new_object, check_point, require_reasoner, require_vision
from streamer.clip_job import FrameResult, Prompt, TrackJob
from streamer.ndjson import event_dict, ndjson
from streamer.upload_stream import receive_file
from streamer.video_io import (
    ClipLimits,
    VideoError,
    VideoInfo,
    VideoLimitError,
    VideoReader,
    is_browser_playable,
    media_type,
    probe,
)
from workers.masks import rle_decode

log = logging.getLogger("fmu.clips")
router = APIRouter()

MAX_CLIPS_KEPT = 8  # uploaded clips kept at once; the oldest (and its files) goes first
DESCRIBE_KEYFRAMES = 6  # frames sampled over an object's track for describe_track
MAX_OBJECTS_PER_CLIP = 32


# -- request bodies --------------------------------------------------------------------------------


class _AtFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t: float | None = Field(None, ge=0, description="The page's currentTime, seconds.")
    frame: int | None = Field(None, ge=0, description="A frame index, instead of t.")


class ClickBody(_AtFrame):
    x: float
    y: float
    negative: bool = False
    object_id: int | None = Field(None, description="Refine this object; none starts a new one.")


class FindBody(_AtFrame):
    phrase: str = Field(..., min_length=1, max_length=300)


class ChatBody(_AtFrame):
    question: str = Field(..., min_length=1, max_length=2000)
    history: list[dict[str, str]] = Field(default_factory=list, max_length=40)


# -- state -----------------------------------------------------------------------------------------


@dataclass
class ClipObject:
    id: int
    label: str | None = None
    prompts: dict[int, Prompt] = field(default_factory=dict)
    results: dict[int, FrameResult] = field(default_factory=dict)
    job: TrackJob | None = None
    task: asyncio.Task | None = None
    description: dict[str, Any] | None = None

    def prompts_public(self) -> list[dict[str, Any]]:
        return [
            {"frame": f, "points": [list(p) for p in pr.points], "labels": pr.labels, "box": pr.box}
            for f, pr in sorted(self.prompts.items())
        ]


@dataclass
class Clip:
    id: str
    filename: str
    path: Path
    info: VideoInfo
    playable: bool
    mime: str
    proxy_path: Path | None = None
    proxy_state: str = "none"  # none | running | ready | failed
    objects: dict[int, ClipObject] = field(default_factory=dict)
    next_obj_id: int = 1
    subscribers: set[asyncio.Queue] = field(default_factory=set)
    export_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    proxy_task: asyncio.Task | None = None

    @property
    def dir(self) -> Path:
        return self.path.parent

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            **self.info.public(),
            "video_url": f"/api/clips/{self.id}/video",
            "playable": self.playable or self.proxy_state == "ready",
            "proxy": self.proxy_state,
            "objects": [
                {
                    "id": o.id,
                    "label": o.label,
                    "frames": len(o.results),
                    "job": o.job.public() if o.job else None,
                    "description": o.description,
                }
                for o in self.objects.values()
            ],
        }

    def publish(self, message: dict[str, Any]) -> None:
        for q in list(self.subscribers):
            if q.full():  # a slow page loses old progress, never the newest
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(message)


class ClipStore:
    """Every uploaded clip of this app, its objects and jobs; bounded (oldest evicted)."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.settings = services.settings
        self.root = Path(self.settings.data_dir) / "clips"
        self.clips: OrderedDict[str, Clip] = OrderedDict()
        self.job_slots = asyncio.Semaphore(self.settings.max_clip_jobs)
        self.tracker_factory: Any = None

    def limits(self) -> ClipLimits:
        s = self.settings
        return ClipLimits(s.max_clip_seconds, s.max_clip_width, s.max_clip_height)

    def get(self, clip_id: str) -> Clip:
        clip = self.clips.get(clip_id)
        if clip is None:
            raise HTTPException(
                404, f"no clip {clip_id!r}: it was deleted or the server restarted; upload it again"
            )
        return clip

    def factory(self) -> Any:
        if self.tracker_factory is None:
            from workers.vision import StreamTracker

            self.tracker_factory = StreamTracker
        return self.tracker_factory

    async def add(self, clip: Clip) -> None:
        self.clips[clip.id] = clip
        while len(self.clips) > MAX_CLIPS_KEPT:
            _, old = self.clips.popitem(last=False)
            await self.discard(old)

    async def discard(self, clip: Clip) -> None:
        tasks = [o.task for o in clip.objects.values() if o.task] + (
            [clip.proxy_task] if clip.proxy_task else []
        )
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        clip.publish({"type": "closed", "message": "this clip was removed from the server"})
        await asyncio.to_thread(shutil.rmtree, clip.dir, True)

    async def aclose(self) -> None:
        for clip in list(self.clips.values()):
            await self.discard(clip)
        self.clips.clear()


def _store(request_or_ws: Request | WebSocket) -> ClipStore:
    app = request_or_ws.app
    store = getattr(app.state, "clip_store", None)
    if store is None:
        store = ClipStore(app.state.services)
        app.state.clip_store = store
        app.state.shutdown_hooks.append(store.aclose)
    return store


def _frame_index(clip: Clip, body: _AtFrame) -> int:
    info = clip.info
    if body.frame is not None:
        if body.frame >= info.frame_count:
            raise HTTPException(
                422, f"frame must be in 0..{info.frame_count - 1}, got {body.frame}"
            )
        return body.frame
    if body.t is None:
        raise HTTPException(
            422, "say which frame: send t (the video's currentTime, seconds) or frame (an index)"
        )
    return info.index_at(body.t)


def _object(clip: Clip, oid: int) -> ClipObject:
    obj = clip.objects.get(oid)
    if obj is None:
        raise HTTPException(
            404, f"clip {clip.id} has no object {oid}; click the object again to track it"
        )
    return obj


# -- upload and playback ---------------------------------------------------------------------------


@router.post("/api/clips", status_code=201)
async def upload_clip(request: Request) -> dict[str, Any]:
    store = _store(request)
    settings = store.settings
    clip_id = uuid.uuid4().hex[:16]
    clip_dir = store.root / clip_id
    try:
        up = await receive_file(
            request,
            clip_dir,
            field="file",
            max_bytes=settings.max_upload_mb * 1_000_000,
            what="clip",
        )
        try:
            info = await asyncio.to_thread(probe, up.path, store.limits())
        except VideoLimitError as exc:
            raise HTTPException(413, str(exc)) from None
        except VideoError as exc:
            raise HTTPException(422, f"{up.filename or 'the file'}: {exc}") from None
        mime, suffix = media_type(info)
        final = clip_dir / f"source{suffix}"
        up.path.rename(final)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, clip_dir, True)
        raise
    clip = Clip(
        id=clip_id,
        filename=up.filename,
        path=final,
        info=info,
        playable=is_browser_playable(info),
        mime=mime,
    )
    if not clip.playable:
        clip.proxy_state = "running"
        clip.proxy_task = asyncio.create_task(_make_proxy(clip))
    await store.add(clip)
    log.info(
        "clip %s: %s, %d frames %dx%d %s/%s",
        clip_id,
        up.filename,
        info.frame_count,
        info.width,
        info.height,
        info.container,
        info.codec,
    )
    return clip.public()


async def _make_proxy(clip: Clip) -> None:
    """An H.264 MP4 copy the browser can play, same frame timestamps, already rotated."""
    dest = clip.dir / "proxy.mp4"
    try:
        await asyncio.to_thread(exports.render_overlay_video, clip.path, clip.info, {}, dest)
        clip.proxy_path, clip.proxy_state = dest, "ready"
        clip.publish(
            {"type": "proxy", "state": "ready", "video_url": f"/api/clips/{clip.id}/video"}
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the clip can still be tracked and exported; only playback lacks
        clip.proxy_state = "failed"
        clip.publish(
            {
                "type": "proxy",
                "state": "failed",
                "message": f"the browser cannot play this codec and converting it failed: {exc}",
            }
        )


@router.get("/api/clips/{clip_id}")
async def get_clip(clip_id: str, request: Request) -> dict[str, Any]:
    return _store(request).get(clip_id).public()


@router.delete("/api/clips/{clip_id}")
async def delete_clip(clip_id: str, request: Request) -> dict[str, Any]:
    store = _store(request)
    clip = store.get(clip_id)
    store.clips.pop(clip_id, None)
    await store.discard(clip)
    return {"deleted": clip_id}


@router.get("/api/clips/{clip_id}/video")
async def clip_video(clip_id: str, request: Request) -> FileResponse:
    clip = _store(request).get(clip_id)
    if clip.playable:
        return FileResponse(clip.path, media_type=clip.mime)
    if clip.proxy_state == "ready" and clip.proxy_path is not None:
        return FileResponse(clip.proxy_path, media_type="video/mp4")
    if clip.proxy_state == "failed":
        raise HTTPException(
            415, "the browser cannot play this clip's codec and converting it failed"
        )
    raise HTTPException(
        409,
        "preparing a copy the browser can play (this codec is not playable in browsers); "
        "it is announced on the clip's websocket when ready",
        headers={"Retry-After": "2"},
    )


@router.get("/api/clips/{clip_id}/frame")
async def frame_at(clip_id: str, request: Request, t: float = Query(..., ge=0)) -> dict[str, Any]:
    clip = _store(request).get(clip_id)
    i = clip.info.index_at(t)
    return {"frame": i, "time": clip.info.time_of(i)}


# -- tracking --------------------------------------------------------------------------------------


def _start_job(store: ClipStore, clip: Clip, obj: ClipObject) -> TrackJob:
    model = require_vision(store.services)
    if obj.task is not None and not obj.task.done():
        obj.task.cancel()  # a refinement re-runs the object from scratch
    obj.results = {}
    job = TrackJob(
        job_id=uuid.uuid4().hex[:12],
        obj_id=obj.id,
        path=clip.path,
        info=clip.info,
        prompts=obj.prompts,
        model=model,
        run_vision=store.services.run_vision,
        tracker_factory=store.factory(),
        results=obj.results,
        on_progress=lambda j: clip.publish({"type": "progress", **j.public()}),
    )
    obj.job = job
    previous = obj.task

    async def run() -> None:
        if previous is not None:
            with contextlib.suppress(BaseException):
                await previous
        clip.publish({"type": "progress", **job.public()})
        async with store.job_slots:
            await job.run()
        clip.publish({"type": "job", **job.public()})

    obj.task = asyncio.create_task(run())
    obj.task.add_done_callback(lambda t: _job_finished(clip, job, t))
    return job


def _job_finished(clip: Clip, job: TrackJob, task: asyncio.Task) -> None:
    if task.cancelled():
        job.state = "cancelled"
        clip.publish({"type": "job", **job.public()})


@router.post("/api/clips/{clip_id}/clicks")
async def click(clip_id: str, body: ClickBody, request: Request) -> dict[str, Any]:
    store = _store(request)
    clip = store.get(clip_id)
    require_vision(store.services)
    index = _frame_index(clip, body)
    check_point(body.x, body.y, clip.info.width, clip.info.height, "frame")
    label = 0 if body.negative else 1
    if body.object_id is None:
        check_new_object(body.negative, len(clip.objects), MAX_OBJECTS_PER_CLIP, "clip")
        obj = ClipObject(id=clip.next_obj_id)
        clip.next_obj_id += 1
        clip.objects[obj.id] = obj
        obj.prompts[index] = Prompt([(body.x, body.y)], [label])
    else:
        obj = _object(clip, body.object_id)
        prompt = obj.prompts.setdefault(index, Prompt())
        prompt.points.append((body.x, body.y))
        prompt.labels.append(label)
    job = _start_job(store, clip, obj)
    return {
        "object_id": obj.id,
        "frame": index,
        "time": clip.info.time_of(index),
        "job": job.public(),
    }


async def _stop_job(obj: ClipObject) -> None:
    """Cancel the object's tracking job, if one runs, and wait until it has let go of the clip."""
    if obj.task is not None and not obj.task.done():
        obj.task.cancel()
        with contextlib.suppress(BaseException):
            await obj.task


@router.post("/api/clips/{clip_id}/objects/{oid}/cancel")
async def cancel_object(clip_id: str, oid: int, request: Request) -> dict[str, Any]:
    clip = _store(request).get(clip_id)
    obj = _object(clip, oid)
    await _stop_job(obj)
    return {"object_id": oid, "job": obj.job.public() if obj.job else None}


@router.delete("/api/clips/{clip_id}/objects/{oid}")
async def remove_object(clip_id: str, oid: int, request: Request) -> dict[str, Any]:
    clip = _store(request).get(clip_id)
    obj = _object(clip, oid)
    await _stop_job(obj)
    clip.objects.pop(oid, None)
    clip.publish({"type": "removed", "object_id": oid})
    return {"removed": oid}


@router.get("/api/clips/{clip_id}/results")
async def results(
    clip_id: str,
    request: Request,
    start: int = Query(0, ge=0),
    count: int = Query(1, ge=1, le=1000),
) -> dict[str, Any]:
    clip = _store(request).get(clip_id)
    stop = min(clip.info.frame_count, start + count)
    frames: dict[str, dict[str, Any]] = {}
    for i in range(start, stop):
        per = {str(o.id): o.results[i].public() for o in clip.objects.values() if i in o.results}
        if per:
            frames[str(i)] = per
    return {
        "start": start,
        "stop": stop,
        "frames": frames,
        "jobs": {str(o.id): o.job.state for o in clip.objects.values() if o.job},
    }


@router.post("/api/clips/{clip_id}/find")
async def find(clip_id: str, body: FindBody, request: Request) -> dict[str, Any]:
    store = _store(request)
    clip = store.get(clip_id)
    reasoner = require_reasoner(store.services)
    require_vision(store.services)
    index = _frame_index(clip, body)
    frame = await asyncio.to_thread(_read_frame, clip, index)
    boxes = await _vlm(reasoner.ground(frame, body.phrase))
    created = []
    for g in boxes[: max(0, MAX_OBJECTS_PER_CLIP - len(clip.objects))]:
        obj = ClipObject(id=clip.next_obj_id, label=g.label or body.phrase)
        clip.next_obj_id += 1
        clip.objects[obj.id] = obj
        obj.prompts[index] = Prompt(box=tuple(float(v) for v in g.box))  # type: ignore[arg-type]
        job = _start_job(store, clip, obj)
        created.append(
            {"object_id": obj.id, "label": obj.label, "box": list(g.box), "job": job.public()}
        )
    return {
        "frame": index,
        "time": clip.info.time_of(index),
        "phrase": body.phrase,
        "objects": created,
    }


def _read_frame(clip: Clip, index: int) -> np.ndarray:
    with VideoReader(clip.path, clip.info) as r:
        return r.frame(index)


async def _vlm(awaitable: Any) -> Any:
    from workers.reasoning import VLMError

    try:
        return await awaitable
    except VLMError as exc:
        raise HTTPException(502, str(exc)) from None


# -- describe and chat -----------------------------------------------------------------------------


def _present_frames(obj: ClipObject) -> list[int]:
    return [
        i for i in sorted(obj.results) if obj.results[i].present and obj.results[i].box is not None
    ]


def _sample(frames: list[int], n: int) -> list[int]:
    if len(frames) <= n:
        return frames
    picks = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return [frames[i] for i in sorted(set(picks.tolist()))]


def _read_frames(clip: Clip, indices: list[int]) -> list[np.ndarray]:
    with VideoReader(clip.path, clip.info) as r:
        return [r.frame(i) for i in indices]


@router.post("/api/clips/{clip_id}/objects/{oid}/describe")
async def describe(clip_id: str, oid: int, request: Request) -> StreamingResponse:
    store = _store(request)
    clip = store.get(clip_id)
    reasoner = require_reasoner(store.services)
    obj = _object(clip, oid)
    present = _present_frames(obj)
    if not present:
        raise HTTPException(
            409,
            f"object {oid} has no frames where it is visible yet; wait for tracking to reach it",
        )
    picks = _sample(present, DESCRIBE_KEYFRAMES)
    keyframes = await asyncio.to_thread(_read_frames, clip, picks)
    masks = [rle_decode(obj.results[i].rle) for i in picks]

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "keyframes", "frames": picks}
        async for ev in reasoner.describe_track_verified(keyframes, masks):
            d = event_dict(ev)
            if d["type"] == "verdict":
                obj.description = {k: d[k] for k in ("description", "verdict", "iou", "attempts")}
                obj.label = obj.label or d["description"][:60]
            yield d

    return StreamingResponse(ndjson(events()), media_type="application/x-ndjson")


@router.post("/api/clips/{clip_id}/objects/{oid}/chat")
async def chat(clip_id: str, oid: int, body: ChatBody, request: Request) -> StreamingResponse:
    store = _store(request)
    clip = store.get(clip_id)
    reasoner = require_reasoner(store.services)
    obj = _object(clip, oid)
    present = _present_frames(obj)
    if not present:
        raise HTTPException(409, f"object {oid} is not visible in any tracked frame yet")
    want = (
        _frame_index(clip, body)
        if (body.t is not None or body.frame is not None)
        else present[len(present) // 2]
    )
    index = min(present, key=lambda i: abs(i - want))  # the nearest frame where it is visible
    frame = (await asyncio.to_thread(_read_frames, clip, [index]))[0]
    mask = rle_decode(obj.results[index].rle)

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "frame", "frame": index}
        async for piece in reasoner.chat(frame, mask, body.history, body.question):
            yield {"type": "token", "text": piece}
        yield {"type": "end"}

    return StreamingResponse(ndjson(events()), media_type="application/x-ndjson")


# -- exports ---------------------------------------------------------------------------------------


def _export_objects(clip: Clip) -> list[dict[str, Any]]:
    return [
        {
            "id": o.id,
            "label": o.label,
            "prompts": o.prompts_public(),
            "description": o.description,
            "results": dict(o.results),
        }
        for o in clip.objects.values()
    ]


@router.get("/api/clips/{clip_id}/export.json")
async def export_json(clip_id: str, request: Request) -> JSONResponse:
    clip = _store(request).get(clip_id)
    doc = await asyncio.to_thread(
        exports.export_document,
        {"id": clip.id, "filename": clip.filename},
        clip.info,
        _export_objects(clip),
    )
    return JSONResponse(
        doc, headers={"Content-Disposition": f'attachment; filename="clip-{clip.id}.json"'}
    )


@router.get("/api/clips/{clip_id}/export.mp4")
async def export_video(clip_id: str, request: Request) -> FileResponse:
    clip = _store(request).get(clip_id)
    running = [o.id for o in clip.objects.values() if o.task is not None and not o.task.done()]
    if running:
        raise HTTPException(
            409, f"tracking is still running for object(s) {running}; export when it is done"
        )
    tracks = {o.id: dict(o.results) for o in clip.objects.values()}
    dest = clip.dir / f"export-{uuid.uuid4().hex[:8]}.mp4"
    async with clip.export_lock:  # one render per clip at a time: it is a full decode + encode
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        total = clip.info.frame_count
        step = max(1, total // 50)

        def on_frame(idx: int) -> None:  # on the render thread: hand progress to the loop
            if idx % step == 0 or idx == total - 1:
                msg = {
                    "type": "export",
                    "done": idx + 1,
                    "total": total,
                    "percent": round(100.0 * (idx + 1) / total, 1),
                }
                loop.call_soon_threadsafe(clip.publish, msg)

        await asyncio.to_thread(
            exports.render_overlay_video, clip.path, clip.info, tracks, dest, on_frame=on_frame
        )
        log.info("clip %s: overlay video rendered in %.1f s", clip.id, time.monotonic() - t0)
    for old in clip.dir.glob("export-*.mp4"):
        if old != dest:
            old.unlink(missing_ok=True)
    return FileResponse(dest, media_type="video/mp4", filename=f"clip-{clip.id}-overlay.mp4")


# -- websocket -------------------------------------------------------------------------------------


@router.websocket("/ws/clips/{clip_id}")
async def clip_socket(ws: WebSocket, clip_id: str) -> None:
    store = _store(ws)
    clip = store.clips.get(clip_id)
    await ws.accept()
    if clip is None:
        await ws.send_json({"type": "error", "message": f"no clip {clip_id!r}; upload it again"})
        await ws.close(code=4404)
        return
    queue: asyncio.Queue = asyncio.Queue(maxsize=64)
    clip.subscribers.add(queue)

    async def pump() -> None:
        while True:
            msg = await queue.get()
            await ws.send_json(msg)
            if msg.get("type") == "closed":
                await ws.close()
                return

    sender = asyncio.create_task(pump())
    try:
        await ws.send_json({"type": "hello", "clip": clip.public()})
        while True:
            msg = await ws.receive_json()
            if not isinstance(msg, dict):
                continue
            if msg.get("type") == "cancel":
                oid = msg.get("object_id")
                for o in list(clip.objects.values()):
                    if (oid is None or o.id == oid) and o.task is not None and not o.task.done():
                        o.task.cancel()
            elif msg.get("type") == "ping":
                await ws.send_json({"type": "pong"})
    except (WebSocketDisconnect, RuntimeError, json.JSONDecodeError):
        pass
    finally:
        clip.subscribers.discard(queue)
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
