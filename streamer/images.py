"""Image mode over HTTP: upload (PNG, JPEG, WebP), encode once, then decoder-only clicks; find, describe with a verdict, chat.

Routes:
  POST   /api/images                              multipart `file`: decode, encode with SAM2 once, 201
  GET    /api/images/{id}                         size, timings, objects
  GET    /api/images/{id}/image                   the image as decoded (EXIF orientation applied), JPEG
  DELETE /api/images/{id}
  POST   /api/images/{id}/clicks                  {x, y, negative, object_id}: new object or refine
  POST   /api/images/{id}/find                    {phrase}: ground, then a mask per box
  DELETE /api/images/{id}/objects/{oid}
  POST   /api/images/{id}/objects/{oid}/describe  NDJSON: tokens, then a verdict
  POST   /api/images/{id}/objects/{oid}/chat      {question, history}: NDJSON tokens

At most MAX_IMAGES_KEPT images (and their SAM2 embeddings) are kept; the oldest is evicted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, StreamingResponse
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from streamer._http import check_new_object, check_point, require_reasoner, require_vision
from streamer.ndjson import event_dict, ndjson
from streamer.upload_stream import receive_file
from workers.masks import mask_to_box, rle_encode

log = logging.getLogger("fmu.images")
router = APIRouter()

MAX_IMAGES_KEPT = 8  # each holds a SAM2 embedding (~ tens of MB at 1024): bounded, oldest out
MAX_OBJECTS_PER_IMAGE = 64
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP"}


class ImageError(ValueError):
    """The upload is not an image we can use; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_image(path: Path, *, max_pixels: int) -> np.ndarray:
    """Decode PNG/JPEG/WebP to H x W x 3 uint8 RGB with EXIF orientation applied; ImageError says why not."""
    try:
        with Image.open(path) as img:
            fmt = img.format or "unknown"
            if fmt not in ACCEPTED_FORMATS:
                raise ImageError(
                    415, f"{fmt} images are not supported: upload a PNG, JPEG or WebP image"
                )
            w, h = img.size
            # Checked before decoding, so a decompression bomb costs nothing.
            if w * h > max_pixels:
                raise ImageError(
                    413,
                    f"the image is too large: at most {max_pixels:,} pixels are accepted, got "
                    f"{w}x{h} = {w * h:,}. Downscale it and upload again",
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(
            413, f"the image is too large to decode safely ({exc}); downscale it"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            422,
            "this file is not an image we can read (it may be damaged, cut off, or another kind of "
            f"file: {exc}). Upload a PNG, JPEG or WebP image",
        ) from None


@dataclass
class ImageObject:
    id: int
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    score: float = 0.0
    label: str | None = None
    description: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        assert self.mask is not None
        box = mask_to_box(self.mask)
        return {
            "id": self.id,
            "label": self.label,
            "rle": rle_encode(self.mask),
            "box": list(box) if box is not None else None,
            "score": round(self.score, 4),
            "present": box is not None,
            "description": self.description,
        }


@dataclass
class ImageEntry:
    id: str
    filename: str
    image: np.ndarray
    segmenter: Any
    display_path: Path
    encode_ms: float
    objects: dict[int, ImageObject] = field(default_factory=dict)
    next_obj_id: int = 1
    last_decode_ms: float | None = None

    def public(self) -> dict[str, Any]:
        h, w = self.image.shape[:2]
        return {
            "id": self.id,
            "filename": self.filename,
            "width": w,
            "height": h,
            "encode_ms": round(self.encode_ms, 1),
            "image_url": f"/api/images/{self.id}/image",
            "objects": [o.public() for o in self.objects.values() if o.mask is not None],
        }


class ImageStore:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.settings = services.settings
        self.root = Path(self.settings.data_dir) / "images"
        self.images: OrderedDict[str, ImageEntry] = OrderedDict()

    def get(self, image_id: str) -> ImageEntry:
        entry = self.images.get(image_id)
        if entry is None:
            raise HTTPException(
                404,
                f"no image {image_id!r}: it was replaced by newer ones or the server restarted; upload it again",
            )
        self.images.move_to_end(image_id)  # recently used images are evicted last
        return entry

    def add(self, entry: ImageEntry) -> None:
        self.images[entry.id] = entry
        while len(self.images) > MAX_IMAGES_KEPT:
            _, old = self.images.popitem(last=False)
            self.drop(old)

    def drop(self, entry: ImageEntry) -> None:
        # Dropping the segmenter frees its cached embedding; the display copy goes from disk.
        entry.segmenter = None
        entry.display_path.unlink(missing_ok=True)

    async def aclose(self) -> None:
        for entry in list(self.images.values()):
            self.drop(entry)
        self.images.clear()


def _store(request: Request) -> ImageStore:
    app = request.app
    store = getattr(app.state, "image_store", None)
    if store is None:
        store = ImageStore(app.state.services)
        app.state.image_store = store
        app.state.shutdown_hooks.append(store.aclose)
    return store


def _object(entry: ImageEntry, oid: int) -> ImageObject:
    obj = entry.objects.get(oid)
    if obj is None or obj.mask is None:
        raise HTTPException(404, f"image {entry.id} has no object {oid}; click the object first")
    return obj


class ClickBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: float
    y: float
    negative: bool = False
    object_id: int | None = None


class FindBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phrase: str = Field(..., min_length=1, max_length=300)


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(..., min_length=1, max_length=2000)
    history: list[dict[str, str]] = Field(default_factory=list, max_length=40)


def _write_display(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=92)


@router.post("/api/images", status_code=201)
async def upload_image(request: Request) -> dict[str, Any]:
    store = _store(request)
    model = require_vision(store.services)
    settings = store.settings
    up = await receive_file(
        request, store.root, field="file", max_bytes=settings.max_image_mb * 1_000_000, what="image"
    )
    try:
        image = await asyncio.to_thread(decode_image, up.path, max_pixels=settings.max_image_pixels)
    except ImageError as exc:
        raise HTTPException(exc.status, f"{up.filename or 'the file'}: {exc}") from None
    finally:
        up.path.unlink(missing_ok=True)  # the decoded array is what is kept
    image_id = uuid.uuid4().hex[:16]
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
        raise HTTPException(
            422, f"{up.filename or 'the image'} cannot be segmented: {exc}"
        ) from None
    except BaseException:
        display.unlink(missing_ok=True)
        raise
    entry = ImageEntry(image_id, up.filename, image, seg, display, encode_ms)
    store.add(entry)
    log.info(
        "image %s: %s %dx%d encoded in %.0f ms",
        image_id,
        up.filename,
        image.shape[1],
        image.shape[0],
        encode_ms,
    )
    return entry.public()


@router.get("/api/images/{image_id}")
async def get_image(image_id: str, request: Request) -> dict[str, Any]:
    return _store(request).get(image_id).public()


@router.get("/api/images/{image_id}/image")
async def image_file(image_id: str, request: Request) -> FileResponse:
    return FileResponse(_store(request).get(image_id).display_path, media_type="image/jpeg")


@router.delete("/api/images/{image_id}")
async def delete_image(image_id: str, request: Request) -> dict[str, Any]:
    store = _store(request)
    entry = store.get(image_id)
    store.images.pop(image_id, None)
    store.drop(entry)
    return {"deleted": image_id}


def _segment(entry: ImageEntry, obj: ImageObject) -> None:
    """Decoder only: the embedding was computed at upload. Runs on the vision thread."""
    seg = entry.segmenter
    if seg is None:
        raise ValueError("this image was evicted; upload it again")
    t0 = time.perf_counter()
    mask, score = seg.segment(points=obj.points or None, labels=obj.labels or None, box=obj.box)
    entry.last_decode_ms = (time.perf_counter() - t0) * 1000.0
    obj.mask, obj.score = mask, score


@router.post("/api/images/{image_id}/clicks")
async def click(image_id: str, body: ClickBody, request: Request) -> dict[str, Any]:
    store = _store(request)
    entry = store.get(image_id)
    h, w = entry.image.shape[:2]
    check_point(body.x, body.y, w, h, "image")
    label = 0 if body.negative else 1
    if body.object_id is None:
        check_new_object(body.negative, len(entry.objects), MAX_OBJECTS_PER_IMAGE, "image")
        obj = ImageObject(id=entry.next_obj_id)
        entry.next_obj_id += 1
        new = True
    else:
        obj = _object(entry, body.object_id)
        new = False
    points, labels = obj.points + [(body.x, body.y)], obj.labels + [label]
    trial = ImageObject(obj.id, points, labels, obj.box, label=obj.label)
    try:
        await store.services.run_vision(_segment, entry, trial)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    obj.points, obj.labels, obj.mask, obj.score = points, labels, trial.mask, trial.score
    if new:
        entry.objects[obj.id] = obj
    return {
        "object": obj.public(),
        "decode_ms": round(entry.last_decode_ms or 0.0, 2),
        "encode_ms": round(entry.encode_ms, 1),
    }


@router.post("/api/images/{image_id}/find")
async def find(image_id: str, body: FindBody, request: Request) -> dict[str, Any]:
    from workers.reasoning import VLMError

    store = _store(request)
    entry = store.get(image_id)
    reasoner = require_reasoner(store.services)
    try:
        boxes = await reasoner.ground(entry.image, body.phrase)
    except VLMError as exc:
        raise HTTPException(502, str(exc)) from None
    created = []
    for g in boxes[: max(0, MAX_OBJECTS_PER_IMAGE - len(entry.objects))]:
        obj = ImageObject(
            id=entry.next_obj_id, box=tuple(float(v) for v in g.box), label=g.label or body.phrase
        )  # type: ignore[arg-type]
        entry.next_obj_id += 1
        await store.services.run_vision(_segment, entry, obj)
        entry.objects[obj.id] = obj
        created.append({**obj.public(), "found_box": [float(v) for v in g.box]})
    return {"phrase": body.phrase, "objects": created}


@router.delete("/api/images/{image_id}/objects/{oid}")
async def remove_object(image_id: str, oid: int, request: Request) -> dict[str, Any]:
    entry = _store(request).get(image_id)
    _object(entry, oid)
    del entry.objects[oid]
    return {"removed": oid}


@router.post("/api/images/{image_id}/objects/{oid}/describe")
async def describe(image_id: str, oid: int, request: Request) -> StreamingResponse:
    store = _store(request)
    entry = store.get(image_id)
    reasoner = require_reasoner(store.services)
    obj = _object(entry, oid)
    if not obj.mask.any():  # type: ignore[union-attr]
        raise HTTPException(409, f"object {oid}'s mask is empty: click on the object again")
    mask = obj.mask.copy()  # type: ignore[union-attr]

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for ev in reasoner.describe_verified(entry.image, mask):
            d = event_dict(ev)
            if d["type"] == "verdict":
                obj.description = {k: d[k] for k in ("description", "verdict", "iou", "attempts")}
            yield d

    return StreamingResponse(ndjson(events()), media_type="application/x-ndjson")


@router.post("/api/images/{image_id}/objects/{oid}/chat")
async def chat(image_id: str, oid: int, body: ChatBody, request: Request) -> StreamingResponse:
    store = _store(request)
    entry = store.get(image_id)
    reasoner = require_reasoner(store.services)
    obj = _object(entry, oid)
    mask = obj.mask.copy()  # type: ignore[union-attr]

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for piece in reasoner.chat(entry.image, mask, body.history, body.question):
            yield {"type": "token", "text": piece}
        yield {"type": "end"}

    return StreamingResponse(ndjson(events()), media_type="application/x-ndjson")
