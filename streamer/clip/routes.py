"""Clip mode over HTTP and a websocket: upload, playback, click-to-track jobs with progress, describe/chat/find, exports.

Routes (all JSON unless said otherwise):
  POST   /api/clips                              multipart `file`: upload, validate, 201 with the clip
  GET    /api/clips                              every kept clip (the library), newest first
  GET    /api/clips/{id}                         clip info, objects, jobs
  DELETE /api/clips/{id}                         cancel its jobs, delete its files
  GET    /api/clips/{id}/thumbnail.jpg               the first frame, small (the library)
  GET    /api/clips/{id}/video                   the clip (or its H.264 proxy), HTTP Range for seeking
  GET    /api/clips/{id}/frame?t=                which frame is on screen at time t
  POST   /api/clips/{id}/clicks                  {t|frame, x, y, negative, object_id}: track (or refine) an object
  POST   /api/clips/{id}/find                    {t|frame, phrase}: ground on that frame, track every box
  GET    /api/clips/{id}/results?start=&count=   per-frame results (RLE, box, presence_probability, present) for a window
  GET    /api/clips/{id}/presence                per object, one character per frame: present, lost, not tracked
  POST   /api/clips/{id}/objects/{oid}/cancel    cancel that object's job
  POST   /api/clips/{id}/objects/{oid}/resume    go on with an interrupted job from where it stopped
  DELETE /api/clips/{id}/objects/{oid}           forget an object
  DELETE /api/clips/{id}/objects                 forget every object (reset)
  POST   /api/clips/{id}/objects/{oid}/describe  NDJSON object events: description_start, tokens, verdict
  POST   /api/clips/{id}/objects/{oid}/chat      {question, t|frame}: NDJSON chat_token events, chat_done
  GET    /api/clips/{id}/export.json             download, schema in docs/export-schema.md
  GET    /api/clips/{id}/export.mp4              download, overlays drawn (rendered on first request)
  WS     /api/clips/{id}/ws                      progress and job state pushes; {"type": "cancel"} in

Playback (as uploaded, or an H.264 proxy) is decided in playback.py; find, describe and chat
live in reasoning.py.

State (clips, objects, tracks, jobs) lives in store.py; messages in protocol.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import (
    APIRouter,
    HTTPException,
    Query,
    Request,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ValidationError

from streamer import metrics
from streamer.clip import exports
from streamer.clip import protocol as cp
from streamer.clip.job import FramePrompt
from streamer.clip.playback import is_browser_playable, make_proxy, media_type
from streamer.clip.store import Clip, Store, Track
from streamer.clip.video_io import (
    VideoError,
    VideoLimitError,
    VideoReader,
    probe,
)
from streamer.http.access import short_id
from streamer.http.errors import require_vision
from streamer.http.kept import Deleted, Removed
from streamer.http.uploads import receive_file
from streamer.objects.events import ErrorMessage, ObjectsMessage
from streamer.objects.table import check_point, describes_at_once
from streamer.storage import clips as rows

log = logging.getLogger("fmu.clips")
router = APIRouter()


# -- upload and playback ---------------------------------------------------------------------------


@router.post("/api/clips", status_code=201)
async def upload_clip(request: Request, store: Store) -> cp.ClipInfo:
    settings = store.settings
    clip_id = uuid.uuid4().hex  # 128 bits: the id is what a browser holds
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
        metrics.UPLOAD_BYTES.labels("clip").inc(up.size)
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
        objects=store.new_table(),
        descriptions=store.services.reasoner is not None,
    )
    if not clip.playable:
        clip.proxy_state = "running"
        clip.proxy_task = asyncio.create_task(make_proxy(clip))
    await store.add(clip)
    await store.enforce_retention(spare=clip.id)
    log.info(
        "clip %s: %s, %d frames %dx%d %s/%s",
        short_id(clip_id),
        up.filename,
        info.frame_count,
        info.width,
        info.height,
        info.container,
        info.codec,
    )
    return clip.public()


@router.get("/api/clips")
async def list_clips(store: Store) -> cp.ClipList:
    clips = sorted(store.mine(), key=lambda c: c.created, reverse=True)
    return cp.ClipList(clips=[c.summary() for c in clips], removed=list(store.removed))


@router.get("/api/clips/{clip_id}")
async def get_clip(clip_id: str, store: Store) -> cp.ClipInfo:
    clip = store.get(clip_id)
    store.db.submit(rows.touch, clip.id)  # opened: retention keeps it longest, across restarts
    return clip.public()


@router.delete("/api/clips/{clip_id}")
async def delete_clip(clip_id: str, store: Store) -> Deleted:
    clip = store.get(clip_id)
    store.pop(clip_id)
    await store.discard(clip)
    return Deleted(deleted=clip_id)


@router.get("/api/clips/{clip_id}/video")
async def clip_video(clip_id: str, store: Store) -> FileResponse:
    clip = store.get(clip_id)
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


THUMB_WIDTH = 160


def _thumbnail(clip: Clip) -> Path:
    """Worker thread: the clip's first frame, THUMB_WIDTH wide, written once beside the clip."""
    dest = clip.dir / "thumb.jpg"
    if not dest.is_file():
        from PIL import Image

        with VideoReader(clip.path, clip.info) as reader:
            frame = reader.frame(0)
        img = Image.fromarray(frame)
        img.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
        tmp = dest.with_suffix(".part")
        img.save(tmp, format="JPEG", quality=85)
        tmp.replace(dest)  # never a half-written thumbnail, even after a crash
    return dest


@router.get("/api/clips/{clip_id}/thumbnail.jpg")
async def thumbnail(clip_id: str, store: Store) -> FileResponse:
    clip = store.items.get(clip_id)  # a library thumbnail is no use of the clip (retention)
    if clip is None:
        store.get(clip_id)  # the 404 with its reason
    try:
        path = await asyncio.to_thread(_thumbnail, clip)  # type: ignore[arg-type]
    except VideoError as exc:
        raise HTTPException(422, f"no thumbnail for this clip: {exc}") from None
    return FileResponse(path, media_type="image/jpeg")


@router.get("/api/clips/{clip_id}/frame")
async def frame_at(clip_id: str, store: Store, t: float = Query(..., ge=0)) -> cp.FrameAnswer:
    clip = store.get(clip_id)
    i = clip.info.index_at(t)
    return cp.FrameAnswer(frame=i, time=clip.info.time_of(i))


# -- tracking --------------------------------------------------------------------------------------


@router.post("/api/clips/{clip_id}/clicks")
async def click(clip_id: str, body: cp.ClickBody, store: Store) -> cp.ClickAnswer:
    clip = store.get(clip_id)
    require_vision(store.services)
    index = clip.frame_index(body)
    check_point((body.x, body.y), clip.info.width, clip.info.height, "frame")
    label = 0 if body.negative else 1
    if body.object_id is None:
        clip.objects.check_new(negative=body.negative)
        oid = clip.objects.add("click").id
        clip.tracks[oid] = Track(prompts={index: FramePrompt([(body.x, body.y)], [label])})
        clip.publish(clip.objects.message(added=oid))
    else:
        oid = clip.objects.get(body.object_id).id
        prompt = clip.tracks[oid].prompts.setdefault(index, FramePrompt())
        prompt.points.append((body.x, body.y))
        prompt.labels.append(label)
    job = store.start_job(clip, oid)
    return cp.ClickAnswer(
        object_id=oid,
        frame=index,
        time=clip.info.time_of(index),
        job=cp.JobInfo(**job.public()),
        describe=describes_at_once(
            new_object=body.object_id is None, reasoner=store.services.reasoner
        ),
    )


@router.post("/api/clips/{clip_id}/objects/{oid}/cancel")
async def cancel_object(clip_id: str, oid: int, store: Store) -> cp.CancelAnswer:
    clip = store.get(clip_id)
    clip.objects.get(oid)
    track = clip.tracks[oid]
    await store.stop_job(track)
    job = cp.JobInfo(**track.job.public()) if track.job else None
    return cp.CancelAnswer(object_id=oid, job=job)


@router.post("/api/clips/{clip_id}/objects/{oid}/resume")
async def resume_object(clip_id: str, oid: int, store: Store) -> cp.CancelAnswer:
    """An interrupted job (the server stopped or crashed) goes on from the frame it had reached;
    the results it had are kept."""
    clip = store.get(clip_id)
    job = store.resume_job(clip, oid)
    return cp.CancelAnswer(object_id=oid, job=cp.JobInfo(**job.public()))


@router.delete("/api/clips/{clip_id}/objects/{oid}")
async def remove_object(clip_id: str, oid: int, store: Store) -> Removed:
    await store.remove_object(store.get(clip_id), oid)
    return Removed(removed=oid)


@router.delete("/api/clips/{clip_id}/objects")
async def reset(clip_id: str, store: Store) -> ObjectsMessage:
    """Forget every object of the clip (Live's reset): their jobs stop, their tracks go."""
    clip = store.get(clip_id)
    for obj in clip.objects:
        await store.remove_object(clip, obj.id)
    return clip.objects.message()


@router.get("/api/clips/{clip_id}/results")
async def results(
    clip_id: str,
    store: Store,
    start: int = Query(0, ge=0),
    count: int = Query(1, ge=1, le=1000),
) -> cp.ResultsAnswer:
    clip = store.get(clip_id)
    stop = min(clip.info.frame_count, start + count)
    frames: dict[str, dict[str, Any]] = {}
    for i in range(start, stop):
        per = {str(oid): t.results[i].public() for oid, t in clip.tracks.items() if i in t.results}
        if per:
            frames[str(i)] = per
    jobs = {str(oid): t.job.state for oid, t in clip.tracks.items() if t.job}
    return cp.ResultsAnswer(start=start, stop=stop, frames=frames, jobs=jobs)  # type: ignore[arg-type]


@router.get("/api/clips/{clip_id}/presence")
async def presence(clip_id: str, store: Store) -> cp.PresenceAnswer:
    clip = store.get(clip_id)
    n = clip.info.frame_count
    objects = {}
    for oid, track in list(clip.tracks.items()):
        row = bytearray(b"." * n)
        for i, result in list(track.results.items()):
            if 0 <= i < n:
                row[i] = ord("1") if result.present else ord("0")
        objects[str(oid)] = row.decode()
    return cp.PresenceAnswer(frame_count=n, objects=objects)


# -- exports ---------------------------------------------------------------------------------------


def _export_objects(clip: Clip) -> list[dict[str, Any]]:
    return [
        {
            "id": o.id,
            "label": o.label,
            "prompts": clip.tracks[o.id].prompts_public(),
            "description": None
            if o.description is None
            else {
                "description": o.description,
                "verdict": o.verdict,
                "iou": o.iou,
                "attempts": o.attempts,
            },
            "results": dict(clip.tracks[o.id].results),
        }
        for o in clip.objects
    ]


@router.get("/api/clips/{clip_id}/export.json")
async def export_json(clip_id: str, store: Store) -> JSONResponse:
    clip = store.get(clip_id)
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
async def export_video(clip_id: str, store: Store) -> FileResponse:
    clip = store.get(clip_id)
    running = [oid for oid, t in clip.tracks.items() if t.running]
    if running:
        raise HTTPException(
            409, f"tracking is still running for object(s) {running}; export when it is done"
        )
    tracks = {oid: dict(t.results) for oid, t in clip.tracks.items()}
    dest = clip.dir / f"export-{uuid.uuid4().hex[:8]}.mp4"
    async with clip.export_lock:  # one render per clip at a time: it is a full decode + encode
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        total = clip.info.frame_count
        step = max(1, total // 50)

        def on_frame(idx: int) -> None:  # on the render thread: hand progress to the loop
            if idx % step == 0 or idx == total - 1:
                msg = cp.ExportMessage(
                    done=idx + 1, total=total, percent=round(100.0 * (idx + 1) / total, 1)
                )
                loop.call_soon_threadsafe(clip.publish, msg)

        await asyncio.to_thread(
            exports.render_overlay_video, clip.path, clip.info, tracks, dest, on_frame=on_frame
        )
        log.info(
            "clip %s: overlay video rendered in %.1f s", short_id(clip.id), time.monotonic() - t0
        )
    for old in clip.dir.glob("export-*.mp4"):
        if old != dest:
            old.unlink(missing_ok=True)
    return FileResponse(dest, media_type="video/mp4", filename=f"clip-{clip.id}-overlay.mp4")


# -- websocket -------------------------------------------------------------------------------------


@router.websocket("/api/clips/{clip_id}/ws")
async def clip_socket(ws: WebSocket, clip_id: str, store: Store) -> None:
    clip = store.find(clip_id)
    await ws.accept()
    if clip is None:
        error = ErrorMessage(
            code="unknown_object", message=f"no clip {clip_id!r}; upload it again", fatal=True
        )
        await ws.send_text(error.model_dump_json())
        await ws.close(code=4404)
        return
    queue: asyncio.Queue[BaseModel] = asyncio.Queue(maxsize=64)
    clip.subscribers.add(queue)

    async def pump() -> None:
        while True:
            msg = await queue.get()
            await ws.send_text(msg.model_dump_json())
            if isinstance(msg, cp.ClosedMessage):
                await ws.close()
                return

    sender = asyncio.create_task(pump())
    try:
        await ws.send_text(cp.HelloMessage(clip=clip.public()).model_dump_json())
        limit = store.settings.max_ws_message_bytes
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:  # a binary frame: the protocol is JSON text
                error = ErrorMessage(
                    code="bad_message", message="binary frames are not accepted: send JSON text"
                )
                await ws.send_text(error.model_dump_json())
                continue
            if len(text.encode()) > limit:
                error = ErrorMessage(
                    code="bad_message",
                    fatal=True,
                    message=f"message over the {limit}-byte limit; the connection is closed",
                )
                await ws.send_text(error.model_dump_json())
                await ws.close(code=1009)
                return
            try:
                msg = cp.clip_client_adapter.validate_json(text)
            except ValidationError as exc:
                where = ".".join(str(x) for x in exc.errors()[0].get("loc", ()))
                error = ErrorMessage(
                    code="bad_message",
                    message=f"not a clip message ({where or 'body'}: {exc.errors()[0]['msg']}); "
                    'send {"type": "ping"} or {"type": "cancel", "object_id": N}',
                )
                await ws.send_text(error.model_dump_json())
                continue
            if msg.type == "cancel":
                for oid, track in list(clip.tracks.items()):
                    if msg.object_id is None or oid == msg.object_id:
                        if track.running:
                            track.task.cancel()  # type: ignore[union-attr]
            elif msg.type == "ping":
                await ws.send_text(cp.PongMessage().model_dump_json())
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        clip.subscribers.discard(queue)
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
