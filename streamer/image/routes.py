"""Image mode over HTTP: upload (PNG, JPEG, WebP), encode once, then decoder-only clicks; find, describe with a verdict, chat.

Routes:
  POST   /api/images                              multipart `file`: decode, encode with SAM2 once, 201
  GET    /api/images                              the library: this browser's images, newest first
  GET    /api/images/{id}                         size, timings, objects (with descriptions, chat)
  GET    /api/images/{id}/thumbnail.jpg           the library's thumbnail
  GET    /api/images/{id}/image                   the image as decoded (EXIF orientation applied), JPEG
  DELETE /api/images/{id}
  POST   /api/images/{id}/clicks                  {x, y, negative, object_id}: new object or refine
  DELETE /api/images/{id}/objects/{oid}
  DELETE /api/images/{id}/objects                 forget every object (reset)
  POST   /api/images/{id}/objects/{oid}/describe  NDJSON object events: description_start, tokens, verdict
  POST   /api/images/{id}/objects/{oid}/chat      {question}: NDJSON chat_token events, chat_done

The library's list, open and delete are Clip's too (streamer/http/library.py). Find, find-all
and auto-refine (the VLM in the segmentation loop) are in agent.py; state lives
in store.py, decoding in decode.py; the events are the shared ones of streamer/objects/events.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.requests import HTTPConnection
from fastapi.responses import FileResponse, Response, StreamingResponse
from PIL import Image

from streamer import metrics
from streamer.http.access import short_id
from streamer.http.claim import Claim
from streamer.http.errors import FileAnswer, Refusal, require_vision
from streamer.http.kept import Removed
from streamer.http.library import add_library_routes
from streamer.http.uploads import receive_file
from streamer.image import protocol as ip
from streamer.image.decode import ImageError, decode_image
from streamer.image.store import ImageEntry, ImageStore, Segment
from streamer.objects import vlm
from streamer.objects.events import (
    FindResultMessage,
    ObjectsMessage,
    RefineClickMessage,
    VerdictMessage,
)
from streamer.objects.requests import check_point
from streamer.objects.results import summarize
from streamer.objects.table import ObjectRefused, describes_at_once

log = logging.getLogger("fmu.images")
router = APIRouter()


def image_store(conn: HTTPConnection) -> ImageStore:
    """The app's image store: create_app builds it and closes it at shutdown."""
    return conn.app.state.images


Store = Annotated[ImageStore, Depends(image_store)]
add_library_routes(router, "image", image_store, ip.ImageList, ip.ImageInfo)


def _write_display(image: np.ndarray, path: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=92)


@router.get("/api/images/{image_id}/thumbnail.jpg")
async def thumbnail(image_id: str, store: Store) -> Response:
    # a library thumbnail is no use of the image (retention)
    data = await store.peek_read(image_id, ImageEntry.thumbnail)
    return Response(data, media_type="image/jpeg")


@router.post("/api/images", status_code=201)
async def upload_image(request: Request, store: Store) -> ip.ImageInfo:
    model = require_vision(store.services)
    settings = store.settings
    up = await receive_file(
        request, store.root, field="file", max_bytes=settings.max_image_mb * 1_000_000, what="image"
    )
    image_id = uuid.uuid4().hex  # 128 bits: the id is what a browser holds
    original = store.original_path(image_id)
    try:
        decoded = await asyncio.to_thread(
            decode_image,
            up.path,
            max_pixels=settings.max_image_pixels,
            working_pixels=settings.image_working_pixels,
        )
        up.path.replace(original)  # the file at full resolution stays with the image
    except ImageError as exc:
        code = "too_large" if exc.status == 413 else "bad_upload"
        raise Refusal(exc.status, code, f"{up.filename or 'the file'}: {exc}") from None
    finally:
        up.path.unlink(missing_ok=True)
    image = decoded.image
    metrics.UPLOAD_BYTES.labels("image").inc(up.size)
    display = store.root / f"{image_id}.jpg"
    from workers.vision import ImageSegmenter

    def encode() -> tuple[Any, float]:
        seg = ImageSegmenter(model)
        t0 = time.perf_counter()
        seg.set_image(image)
        return seg, (time.perf_counter() - t0) * 1000.0

    try:
        (seg, encode_ms), _ = await asyncio.gather(
            store.services.run_vision(encode), asyncio.to_thread(_write_display, image, display)
        )
    except ValueError as exc:  # e.g. an image SAM2 cannot take (too small)
        display.unlink(missing_ok=True)
        original.unlink(missing_ok=True)
        raise Refusal(
            422, "bad_upload", f"{up.filename or 'the image'} cannot be segmented: {exc}"
        ) from None
    except BaseException:
        display.unlink(missing_ok=True)
        original.unlink(missing_ok=True)
        raise
    entry = ImageEntry(
        image_id,
        up.filename,
        image,
        seg,
        display,
        encode_ms,
        objects=store.new_table(),
        width=decoded.width,
        height=decoded.height,
        descriptions=store.services.reasoner is not None,
    )
    try:
        await store.add(entry)
    except BaseException:
        display.unlink(missing_ok=True)
        original.unlink(missing_ok=True)
        raise
    await store.enforce_retention(spare=entry.id)
    log.info(
        "image %s: %s %dx%d (worked on at %dx%d) encoded in %.0f ms",
        short_id(image_id),
        up.filename,
        decoded.width,
        decoded.height,
        image.shape[1],
        image.shape[0],
        encode_ms,
    )
    return entry.public()


@router.get("/api/images/{image_id}/image")
async def image_file(image_id: str, store: Store) -> FileResponse:
    return FileAnswer(store.get(image_id).display_path, kind="image", media_type="image/jpeg")


def segment_now(seg: Any, entry: ImageEntry, segment: Segment) -> None:
    """Vision thread: decoder only (`seg` holds the image's embedding), then the mask's RLE,
    box and presence probability, so nothing of it is computed on the event loop."""
    # The prompts are in the image's pixels; SAM2 works on the working copy, and the mask it
    # answers is given back at the image's size.
    points = [entry.to_working(p) for p in segment.points]
    box = None if segment.box is None else entry.to_working(segment.box)
    t0 = time.perf_counter()
    mask, _iou = seg.segment(points=points or None, labels=segment.labels or None, box=box)
    entry.last_decode_ms = (time.perf_counter() - t0) * 1000.0
    segment.mask = mask
    segment.result = summarize(entry.full_size_mask(mask), seg.last_object_score or 0.0)


async def run_segment(store: ImageStore, entry: ImageEntry, segment: Segment) -> None:
    seg = await store.encoded(entry)  # restored or freed: the embedding is computed once here
    try:
        await store.services.run_vision(segment_now, seg, entry, segment)
    except ValueError as exc:
        raise ObjectRefused("bad_prompt", str(exc)) from None


@router.post("/api/images/{image_id}/clicks")
async def click(image_id: str, body: ip.ClickBody, store: Store) -> ip.ClickAnswer:
    entry = store.get(image_id)
    check_point((body.x, body.y), entry.width, entry.height, "image")
    oid = await click_object(store, entry, body.object_id, body.x, body.y, body.negative)
    new = body.object_id is None
    return ip.ClickAnswer(
        object=entry.object_public(oid),
        describe=describes_at_once(new_object=new, services=store.services),
        decode_ms=round(entry.last_decode_ms or 0.0, 2),
        encode_ms=round(entry.encode_ms, 1),
    )


async def click_object(
    store: ImageStore, entry: ImageEntry, oid: int | None, x: float, y: float, negative: bool
) -> int:
    """One click: a new object, or a refinement of `oid` (its mask changes only once the new
    one exists). Answers the object's id."""
    label = 0 if negative else 1
    async with entry.clicking:  # two quick clicks on one object: each builds on the other
        if oid is None:
            entry.objects.check_new(negative=negative)
            current = Segment()
        else:
            current = entry.segments[entry.objects.get(oid).id]
        trial = Segment(current.points + [(x, y)], current.labels + [label], current.box)
        await run_segment(store, entry, trial)
        store.peek(entry.id)  # deleted while it segmented: refused as unknown, no orphan object
        if oid is None:
            oid = entry.objects.add("click").id  # the cap again: a Find may have taken the room
        elif oid not in entry.objects:
            entry.objects.get(oid)  # removed meanwhile: refused as unknown
        entry.segments[oid] = trial  # the object changes only once its new mask exists
        store.save_object(entry, oid)
    return oid


@router.delete("/api/images/{image_id}/objects/{oid}")
async def remove_object(image_id: str, oid: int, store: Store) -> Removed:
    entry = store.get(image_id)
    entry.objects.get(oid)  # an id not there is refused as unknown
    await entry.remove(oid)
    store.forget_object(entry, oid)
    return Removed(removed=oid)


@router.delete("/api/images/{image_id}/objects")
async def reset(image_id: str, store: Store) -> ObjectsMessage:
    """Forget every object of the image (Live's reset); the image and its embedding stay."""
    entry = store.get(image_id)
    for oid in entry.objects.reset():
        if await entry.remove(oid):  # one a remove took meanwhile is gone already
            store.forget_object(entry, oid)
    return entry.objects.message()


async def object_view(store: ImageStore, entry: ImageEntry, oid: int) -> tuple[Any, np.ndarray]:
    """The image (its working copy) and the object's mask on it, for the VLM."""
    segment = entry.segments[entry.objects.get(oid).id]
    if segment.result is None or segment.result.box is None or segment.mask is None:
        raise ObjectRefused(
            "not_visible", f"object {oid}'s mask is empty: click on the object again", oid
        )
    return await store.pixels(entry), segment.mask  # replaced, never changed in place, by a click


@router.post("/api/images/{image_id}/objects/{oid}/describe")
async def describe(image_id: str, oid: int, store: Store, request: Request) -> StreamingResponse:
    # Refused now (409) if one is under way, before this one reads its pixels back; past the
    # image's VLM share it waits its turn first.
    async with Claim.answering(store, image_id, oid, "describe", request) as (
        entry,
        reasoner,
        claim,
    ):
        stream = reasoner.describe_verified(*await object_view(store, entry, oid))
        events = vlm.describe(entry.objects, oid, stream, frame_index=0)
        return claim.respond(_saved(store, entry, oid, in_image_pixels(entry, events)), "describe")


async def in_image_pixels(entry: ImageEntry, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The VLM's clicks and boxes (on the working copy: Find's, auto-refine's, the verdict's
    grounded box) told in the image's own pixels, like every other coordinate of the API."""
    async for event in events:
        if isinstance(event, RefineClickMessage):
            x, y = entry.to_image((event.x, event.y))
            event = event.model_copy(update={"x": x, "y": y})
        elif isinstance(event, VerdictMessage) and event.box is not None:
            event = event.model_copy(update={"box": entry.to_image(event.box)})
        elif isinstance(event, FindResultMessage):
            event = event.model_copy(
                update={
                    "objects": [
                        o.model_copy(update={"box": entry.to_image(o.box)}) for o in event.objects
                    ],
                    "rejected": [
                        r.model_copy(update={"box": entry.to_image(r.box)}) for r in event.rejected
                    ],
                }
            )
        yield event


@router.post("/api/images/{image_id}/objects/{oid}/chat")
async def chat(
    image_id: str, oid: int, body: ip.ChatBody, store: Store, request: Request
) -> StreamingResponse:
    async with Claim.answering(store, image_id, oid, "chat", request) as (entry, reasoner, claim):
        image, mask = await object_view(store, entry, oid)
        events = vlm.chat(entry.objects, oid, reasoner, image, mask, body.question, frame_index=0)
        return claim.respond(_saved(store, entry, oid, events), "chat")


async def _saved(
    store: ImageStore, entry: ImageEntry, oid: int, events: AsyncIterator[Any]
) -> AsyncIterator[Any]:
    """Relay the events; what the object now holds (description, chat) is saved at the end."""
    try:
        async for event in events:
            yield event
    finally:
        store.save_object(entry, oid)
