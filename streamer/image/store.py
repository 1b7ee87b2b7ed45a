"""Image mode's state: decoded images with their SAM2 embedding, and their objects.

Every image stays (the library lists them) until its owner deletes it or retention (--keep-days,
--disk-budget-mb) removes it; what it costs in memory is bounded: at most MAX_IMAGES_KEPT images
hold their pixels and SAM2 embedding, the least recently used are freed and read (pixels, from its
display JPEG) or computed (embedding, at its next click) again when used. Each image (its display JPEG
under images/), its objects, masks, descriptions and chat are saved in the database; after a
restart they come back, and the embedding is computed again at the first click.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from streamer.http.access import request_owner
from streamer.http.errors import require_vision
from streamer.http.kept import KeptItems
from streamer.image import protocol as ip
from streamer.image.decode import display_size, read_display
from streamer.objects.results import MaskResult
from streamer.objects.table import ObjectTable
from streamer.storage import clips as rows
from streamer.storage.db import Database
from workers.masks import resize_nearest, rle_decode, scale_coords

log = logging.getLogger("fmu.images")
MAX_IMAGES_KEPT = 8  # embeddings held (~ tens of MB each at 1024): bounded, least recently used out
THUMB_WIDTH = 160


@dataclass
class Segment:
    """One object's prompts on the image and its mask (result built on the vision thread)."""

    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    result: MaskResult | None = None


@dataclass
class ImageEntry:
    """One image: `image` is its working copy (see Decoded); `width` x `height` its own size,
    the pixel space of every click, box and mask the API takes and answers."""

    id: str
    filename: str
    image: np.ndarray | None  # None: freed; ImageStore.pixels reads it again
    segmenter: Any
    display_path: Path
    encode_ms: float
    objects: ObjectTable
    width: int
    height: int
    descriptions: bool = False
    segments: dict[int, Segment] = field(default_factory=dict)
    last_decode_ms: float | None = None
    created: float = field(default_factory=time.time)
    used: float = field(default_factory=time.time)  # last opened or changed (retention: LRU)
    size: int = 0  # bytes on disk: the display copy and the original upload
    thumb: bytes | None = None  # the library's thumbnail, made once
    working: tuple[int, int] = (0, 0)  # the working copy's width and height (its display file's)
    encoding: asyncio.Future[Any] | None = field(default=None, repr=False)  # a re-encode under way
    # One click at a time: each reads an object's clicks so far and stores them with its own
    clicking: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.image is not None and self.working == (0, 0):
            self.working = (self.image.shape[1], self.image.shape[0])

    def state(self) -> str:
        """One word for the library: new (no object), segmented, or described."""
        if any(o.description for o in self.objects):
            return "described"
        return "segmented" if len(self.objects) else "new"

    def _named(self) -> dict[str, Any]:
        """What both the library's line and the full answer say first."""
        return {
            "id": self.id,
            "filename": self.filename,
            "width": self.width,
            "height": self.height,
        }

    def summary(self) -> ip.ImageSummary:
        return ip.ImageSummary(
            **self._named(),
            created=self.created,
            bytes=self.size,
            objects=len(self.objects),
            state=self.state(),  # type: ignore[arg-type]
        )

    def thumbnail(self) -> bytes:
        """Worker thread: a JPEG THUMB_WIDTH wide, made once (from the display copy if the pixels
        are freed)."""
        if self.thumb is None:
            pixels = self.image  # read once: the loop may free them meanwhile
            if pixels is None:
                with Image.open(self.display_path) as src:
                    img = src.convert("RGB")
            else:
                img = Image.fromarray(pixels)
            img.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            self.thumb = buf.getvalue()
        return self.thumb

    def to_working(self, values: Sequence[float]) -> tuple[float, ...]:
        """Image coordinates (a point or a box) in the working copy's pixels, on it: a box to
        the image's edge (to_image rounds) came out a hair past the copy's, which SAM2 refuses."""
        w, h = self.working
        scaled = scale_coords(values, (self.width, self.height), self.working)
        return tuple(min(max(v, 0.0), (w, h)[i % 2]) for i, v in enumerate(scaled))

    def to_image(self, values: Sequence[float]) -> tuple[float, ...]:
        """Working-copy coordinates (a VLM's click or box) in the image's own pixels."""
        return tuple(
            round(v, 2) for v in scale_coords(values, self.working, (self.width, self.height))
        )

    def full_size_mask(self, mask: np.ndarray) -> np.ndarray:
        """A working-copy mask at the image's own size (nearest pixel)."""
        return resize_nearest(mask, self.width, self.height)

    def working_mask(self, mask: np.ndarray) -> np.ndarray:
        """A mask at the image's own size (a saved one) on the working copy (nearest pixel)."""
        return resize_nearest(mask, *self.working)

    def object_public(self, oid: int) -> ip.ImageObject:
        result = self.segments[oid].result
        assert result is not None
        obj = self.objects.get(oid)
        return ip.ImageObject(
            **obj.kept().model_dump(), **result.event(oid).model_dump(exclude={"id"})
        )

    async def remove(self, oid: int) -> bool:
        """Forget the object if it is still there (its description and chat stop first); False
        if it was gone already (a reset meets the ones a remove took while it waited)."""
        removed = await self.objects.remove(oid) is not None
        self.segments.pop(oid, None)
        return removed

    def public(self) -> ip.ImageInfo:
        return ip.ImageInfo(
            **self._named(),
            encode_ms=round(self.encode_ms, 1),
            image_url=f"/api/images/{self.id}/image",
            descriptions=self.descriptions,
            objects=[self.object_public(o.id) for o in self.objects],
        )


class ImageStore(KeptItems[ImageEntry]):
    """Every image kept, with at most MAX_IMAGES_KEPT SAM2 embeddings (least recently used freed)."""

    def __init__(self, services: Any, db: Database) -> None:
        super().__init__(services, "image", "images", MAX_IMAGES_KEPT)
        self.db = db

    def get(self, item_id: str) -> ImageEntry:
        entry = super().get(item_id)
        entry.used = time.time()
        return entry

    def free_memory(self) -> None:
        """Past MAX_IMAGES_KEPT images in memory, free the least recently used ones' pixels and
        embedding; the images stay (on disk and in the library)."""
        held = [e for e in self.items.values() if e.image is not None or e.segmenter is not None]
        for entry in held[: max(0, len(held) - MAX_IMAGES_KEPT)]:
            entry.segmenter = None
            entry.image = None

    async def pixels(self, entry: ImageEntry) -> np.ndarray:
        """The image's pixels, read again from its display copy if they were freed."""
        image = entry.image
        if image is None:
            try:
                image = entry.image = await asyncio.to_thread(read_display, entry.display_path)
            except FileNotFoundError:
                self.peek(entry.id)  # deleted meanwhile, its file too: refused as unknown
                raise
            self.free_memory()
        return image

    def original_path(self, image_id: str) -> Path:
        """Where the upload is kept as it came, at full resolution, for the person's own backups
        (the service works from the display JPEG, which is the working copy)."""
        return self.root / f"{image_id}.original"

    async def add(self, entry: ImageEntry) -> None:
        """Keep a new image: its row is committed before the upload is answered."""
        media = str(entry.display_path.relative_to(Path(self.settings.data_dir)))
        info = json.dumps(
            {"encode_ms": entry.encode_ms, "width": entry.width, "height": entry.height}
        )
        original = self.original_path(entry.id)
        size = entry.size = entry.display_path.stat().st_size + (
            original.stat().st_size if original.exists() else 0
        )
        await self.db.call(
            rows.insert_clip,
            entry.id,
            entry.filename,
            media,
            info,
            size,
            request_owner.get(),  # whose it is survives a restart
            "image",
        )
        self.items[entry.id] = entry
        self.owners[entry.id] = request_owner.get()
        self.free_memory()

    def in_use(self, entry: ImageEntry) -> bool:
        """A describe, chat or auto-refine of one of its objects is under way: never removed."""
        return any(obj.busy() for obj in entry.objects)

    async def discard(self, entry: ImageEntry) -> None:
        await entry.objects.clear()
        # Dropping the segmenter frees its cached embedding; both copies go from disk.
        entry.segmenter = None
        for path in (entry.display_path, self.original_path(entry.id)):
            await asyncio.to_thread(path.unlink, missing_ok=True)
        self.db.submit(rows.delete_item, entry.id)

    def save_object(self, entry: ImageEntry, oid: int) -> None:
        """Queue the object's row (label, description, chat, prompts) and its mask for saving;
        nothing for an image deleted meanwhile (a describe that outlived its image)."""
        obj = entry.objects.objects.get(oid)
        seg = entry.segments.get(oid)
        if obj is None or seg is None or self.items.get(entry.id) is not entry:
            return
        prompts = {"0": {"points": seg.points, "labels": seg.labels, "box": seg.box}}
        row = obj.row(json.dumps(prompts))
        self.db.submit(rows.save_image_object, entry.id, row, seg.result)

    def forget_object(self, entry: ImageEntry, oid: int) -> None:
        self.db.submit(rows.delete_object, entry.id, oid)

    async def encoded(self, entry: ImageEntry) -> Any:
        """The image's SAM2 segmenter. One restored after a restart, or freed to bound memory, is
        encoded again here, once however many requests ask at the same time. The caller uses the
        one answered: the entry's own may be freed again meanwhile."""
        if entry.segmenter is not None:
            return entry.segmenter
        if entry.encoding is None or entry.encoding.done():
            entry.encoding = asyncio.ensure_future(self._encode(entry))
        return await asyncio.shield(entry.encoding)

    async def _encode(self, entry: ImageEntry) -> Any:
        from workers.vision import ImageSegmenter

        model = require_vision(self.services)
        image = await self.pixels(entry)

        def encode() -> Any:
            seg = ImageSegmenter(model)
            seg.set_image(image)
            return seg

        entry.segmenter = await self.services.run_vision(encode)
        return entry.segmenter

    async def aclose(self) -> None:
        """Shutdown: the images, their files and rows stay for the next start."""
        for entry in self.drain():
            entry.segmenter = None

    async def restore(self) -> None:
        """Bring back the images the database holds (embeddings are computed at the first
        click); rows whose file is gone and files with no row are removed, and logged."""
        await self.restore_rows(self._load)

    async def _load(self, row: dict[str, Any], path: Path) -> tuple[ImageEntry, list[str]]:
        working = await asyncio.to_thread(display_size, path)  # OSError: gone or unreadable
        data = await self.db.call(rows.load_clip, row["id"])
        info = json.loads(row["info"])
        entry = ImageEntry(
            row["id"],
            row["filename"],
            None,  # pixels and embedding are read and computed when it is used
            None,
            path,
            float(info.get("encode_ms", 0.0)),
            objects=self.new_table(row),
            # saved before images had a working copy: the display copy was the image
            width=int(info.get("width", working[0])),
            height=int(info.get("height", working[1])),
            descriptions=self.services.reasoner is not None,
            created=row["created"],
            used=row["used"],
            size=row["bytes"],
            working=working,
        )
        results = [data["results"].get(o["oid"], {}).get(0) for o in data["objects"]]
        masks = await asyncio.to_thread(_working_masks, entry, results)
        for o, result, mask in zip(data["objects"], results, masks, strict=True):
            obj = entry.objects.add_row(o)
            p = json.loads(o["prompts"]).get("0", {})
            entry.segments[obj.id] = Segment(
                [tuple(pt) for pt in p.get("points", [])],  # type: ignore[misc]
                list(p.get("labels", [])),
                None if p.get("box") is None else tuple(p["box"]),
                mask,
                result,
            )
        return entry, [path.name, self.original_path(entry.id).name]


def _working_masks(entry: ImageEntry, results: list[Any]) -> list[Any]:
    """Saved results' masks at the entry's working size (off the event loop: each is decoded at
    the image's full size first)."""
    return [None if r is None else entry.working_mask(rle_decode(r.rle)) for r in results]
