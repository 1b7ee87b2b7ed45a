"""Clip mode's tracking over HTTP and its websocket: clicks start or refine an object's job, which
a person can cancel or resume; results and presence per frame; progress pushed to the page.

Routes:
  POST   /api/clips/{id}/clicks                  {t|frame, x, y, negative, object_id}: track (or refine) an object
  GET    /api/clips/{id}/results?start=&count=   per-frame results (RLE, box, presence_probability, present) for a window
  GET    /api/clips/{id}/presence                per object, one character per frame: present, lost, not tracked
  POST   /api/clips/{id}/objects/{oid}/cancel    cancel that object's job
  POST   /api/clips/{id}/objects/{oid}/resume    go on with an interrupted job from where it stopped
  DELETE /api/clips/{id}/objects/{oid}           forget an object
  DELETE /api/clips/{id}/objects                 forget every object (reset)
  WS     /api/clips/{id}/ws                      progress and job state pushes; {"type": "cancel"} in

The jobs themselves run in the store (store.py, job.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from streamer.clip import protocol as cp
from streamer.clip.job import FramePrompt
from streamer.clip.state import Feed
from streamer.clip.store import Store, Track
from streamer.http.errors import Refusal, require_vision
from streamer.http.kept import Removed
from streamer.objects.events import ErrorMessage, ObjectsMessage, binary_frame_refused
from streamer.objects.requests import check_point, field_error
from streamer.objects.table import ObjectRefused, describes_at_once

router = APIRouter()

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
        label=clip.objects.get(oid).label,
        frame=index,
        time=clip.info.time_of(index),
        job=cp.JobInfo(**job.public()),
        describe=describes_at_once(new_object=body.object_id is None, services=store.services),
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
    await store.remove_objects(clip, clip.objects.reset())
    return clip.objects.message()


@router.get("/api/clips/{clip_id}/results")
async def results(
    clip_id: str,
    store: Store,
    start: int = Query(0, ge=0),
    count: int = Query(1, ge=1, le=1000),
) -> cp.ResultsAnswer:
    clip = store.get(clip_id)
    clip.check_frame(start, "start")
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


# -- websocket -------------------------------------------------------------------------------------


@router.websocket("/api/clips/{clip_id}/ws")
async def clip_socket(ws: WebSocket, clip_id: str, store: Store) -> None:
    await ws.accept()
    try:
        clip = store.peek(clip_id)
    except Refusal as exc:  # the HTTP routes' unknown_clip, said as the socket's last message
        error = ErrorMessage(code=exc.code, message=exc.detail, fatal=True)
        await ws.send_text(error.model_dump_json())
        await ws.close(code=4404)
        return
    queue = Feed(maxsize=64)
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
            if text is None:
                await ws.send_text(binary_frame_refused().model_dump_json())
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
                error = ErrorMessage(
                    code="bad_message",
                    message=f"not a clip message ({field_error(exc.errors()[0])}); "
                    'send {"type": "ping"} or {"type": "cancel", "object_id": N}',
                )
                await ws.send_text(error.model_dump_json())
                continue
            if msg.type == "cancel":
                try:
                    if msg.object_id is not None:
                        clip.objects.get(msg.object_id)
                except ObjectRefused as exc:
                    await ws.send_text(exc.event("cancel").model_dump_json())
                    continue
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
