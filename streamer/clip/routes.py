"""Clip mode's files over HTTP: upload, the library, playback, and the exports.

Routes (all JSON unless said otherwise):
  POST   /api/clips                              multipart `file`: upload, validate, 201 with the clip
  GET    /api/clips                              every kept clip (the library), newest first
  GET    /api/clips/{id}                         clip info, objects, jobs
  DELETE /api/clips/{id}                         cancel its jobs, delete its files
  GET    /api/clips/{id}/thumbnail.jpg           the first frame, small (the library)
  GET    /api/clips/{id}/video                   the clip (or its H.264 proxy), HTTP Range for seeking
  GET    /api/clips/{id}/frame?t=                which frame is on screen at time t
  GET    /api/clips/{id}/export.json             download, schema in docs/export-schema.md
  GET    /api/clips/{id}/export.mp4              download, overlays drawn (rendered on first request)

The library's list, open and delete are Image's too (streamer/http/library.py). Clicks, jobs,
results and the progress websocket are in tracking.py; find, auto-refine, describe
and chat in reasoning.py. Playback (as uploaded, or an H.264 proxy) is decided in playback.py.
State (clips, objects, tracks, jobs) lives in store.py and state.py; messages in protocol.py.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from streamer import metrics
from streamer.clip import exports
from streamer.clip import protocol as cp
from streamer.clip.limits import VideoError, VideoLimitError
from streamer.clip.playback import PROXY_FAILED, is_browser_playable, make_proxy, media_type
from streamer.clip.store import Clip, Store, clip_store
from streamer.clip.video_io import VideoReader, probe
from streamer.http.access import short_id
from streamer.http.errors import FileAnswer, Refusal
from streamer.http.library import add_library_routes
from streamer.http.uploads import receive_file
from streamer.objects.table import listed

log = logging.getLogger("fmu.clips")
router = APIRouter()
add_library_routes(router, "clip", clip_store, cp.ClipList, cp.ClipInfo)


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
            raise Refusal(413, "too_large", str(exc)) from None
        except VideoError as exc:
            raise Refusal(422, "bad_upload", f"{up.filename or 'the file'}: {exc}") from None
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
    try:
        await store.add(clip)
    except BaseException:  # not kept (its row could not be written): its folder goes too
        await asyncio.to_thread(shutil.rmtree, clip_dir, True)
        raise
    if not clip.playable:  # the browser copy is made once the clip is kept
        clip.proxy_state = "running"
        clip.proxy_task = asyncio.create_task(make_proxy(clip, store.render_slots))
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


@router.get("/api/clips/{clip_id}/video")
async def clip_video(clip_id: str, store: Store) -> FileResponse:
    clip = store.get(clip_id)
    if clip.playable:
        return FileAnswer(clip.path, kind="clip", media_type=clip.mime)
    if clip.proxy_state == "ready" and clip.proxy_path is not None:
        return FileAnswer(clip.proxy_path, kind="clip", media_type="video/mp4")
    if clip.proxy_state == "failed":
        raise Refusal(415, "bad_video", PROXY_FAILED)
    raise Refusal(
        409,
        "not_ready",
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
        # Its own part file: two requests at once (two tabs on the library) each write theirs.
        tmp = dest.with_suffix(f".{uuid.uuid4().hex[:8]}.part")
        try:
            img.save(tmp, format="JPEG", quality=85)
            tmp.replace(dest)  # never a half-written thumbnail, even after a crash
        finally:
            tmp.unlink(missing_ok=True)
    return dest


@router.get("/api/clips/{clip_id}/thumbnail.jpg")
async def thumbnail(clip_id: str, store: Store) -> FileResponse:
    try:  # a library thumbnail is no use of the clip (retention)
        path = await store.peek_read(clip_id, _thumbnail)
    except VideoError as exc:
        raise Refusal(422, "bad_video", f"no thumbnail for this clip: {exc}") from None
    return FileAnswer(path, kind="clip", media_type="image/jpeg")


@router.get("/api/clips/{clip_id}/frame")
async def frame_at(
    clip_id: str, store: Store, t: float = Query(..., ge=0, allow_inf_nan=False)
) -> cp.FrameAnswer:
    clip = store.get(clip_id)
    i = clip.info.index_at(t)
    return cp.FrameAnswer(frame=i, time=clip.info.time_of(i))


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
                "note": o.note,
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


def _refuse_while_tracking(clip: Clip) -> None:
    running = [oid for oid, t in clip.tracks.items() if t.running]
    if running:
        raise Refusal(
            409,
            "busy",
            f"tracking is still running for object{'s' if len(running) > 1 else ''} "
            f"{listed(running)}; export when it is done",
        )


@router.get("/api/clips/{clip_id}/export.mp4")
async def export_video(clip_id: str, store: Store) -> FileResponse:
    clip = store.get(clip_id)
    _refuse_while_tracking(clip)  # at once, not after another render
    dest = clip.dir / f"export-{uuid.uuid4().hex[:8]}.mp4"
    total = clip.info.frame_count
    if clip.export_lock.locked() or store.render_slots.locked():  # the page's bar says why
        clip.publish(cp.ExportMessage(done=0, total=total, percent=0.0, waiting=True))
    # One render per clip at a time, and RENDERS_AT_ONCE in all: each is a full decode + encode.
    async with clip.export_lock, store.render_slots:
        store.peek(clip_id)  # the 404 every request on a gone clip gets: deleted meanwhile
        # The objects as they are when its turn comes (another render may have taken minutes).
        _refuse_while_tracking(clip)
        tracks = {oid: dict(t.results) for oid, t in clip.tracks.items()}
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        step = max(1, total // 50)

        def on_frame(idx: int) -> None:  # on the render thread: hand progress to the loop
            if idx % step == 0 or idx == total - 1:
                msg = cp.ExportMessage(
                    done=idx + 1, total=total, percent=round(100.0 * (idx + 1) / total, 1)
                )
                loop.call_soon_threadsafe(clip.publish, msg)

        try:
            await asyncio.to_thread(
                exports.render_overlay_video,
                clip.path,
                clip.info,
                tracks,
                dest,
                on_frame=on_frame,
                stop=clip.stopping,
            )
        except Exception as exc:
            store.peek(clip_id)  # deleted during the render (it stopped): its folder went too
            if isinstance(exc, exports.RenderStopped):
                raise Refusal(
                    503, "not_ready", "the server is stopping; export again once it is back"
                ) from exc
            raise
        try:
            store.peek(clip_id)
        except Refusal:  # deleted as the render ended: its file goes too
            dest.unlink(missing_ok=True)
            raise
        log.info(
            "clip %s: overlay video rendered in %.1f s", short_id(clip.id), time.monotonic() - t0
        )
        clip.last_export = dest
        for old in clip.dir.glob("export-*.mp4"):
            if old != dest and old not in clip.exports_answering:
                old.unlink(missing_ok=True)
        return _RenderAnswer(clip, dest)


class _RenderAnswer(FileAnswer):
    """An export.mp4 render being sent: a render of a request meanwhile leaves it be, so two at
    once each get their own whole file; once sent, it goes if a newer render replaced it."""

    def __init__(self, clip: Clip, render: Path) -> None:
        name = f"clip-{clip.id}-overlay.mp4"
        super().__init__(render, kind="clip", media_type="video/mp4", filename=name)
        self.clip, self.render = clip, render
        clip.exports_answering.add(render)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.clip.exports_answering.discard(self.render)
            if self.clip.last_export != self.render:
                self.render.unlink(missing_ok=True)
