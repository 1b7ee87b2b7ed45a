"""Image mode's state: decoded images with their SAM2 embedding, and their objects.

At most MAX_IMAGES_KEPT images (and their embeddings) are kept; the oldest is evicted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from streamer.http.kept import KeptItems
from streamer.image import protocol as ip
from streamer.objects.results import MaskResult
from streamer.objects.table import ObjectTable

log = logging.getLogger("fmu.images")
MAX_IMAGES_KEPT = 8  # each holds a SAM2 embedding (~ tens of MB at 1024): bounded, oldest out
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
class Segment:
    """One object's prompts on the image and its mask (result built on the vision thread)."""

    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    result: MaskResult | None = None


@dataclass
class ImageEntry:
    id: str
    filename: str
    image: np.ndarray
    segmenter: Any
    display_path: Path
    encode_ms: float
    objects: ObjectTable
    descriptions: bool = False
    segments: dict[int, Segment] = field(default_factory=dict)
    last_decode_ms: float | None = None

    def object_public(self, oid: int) -> ip.ImageObject:
        result = self.segments[oid].result
        assert result is not None
        return ip.ImageObject(
            **self.objects.get(oid).info().model_dump(),
            **result.event(oid).model_dump(exclude={"id"}),
        )

    async def remove(self, oid: int) -> None:
        """Forget the object (its description and chat stop first)."""
        self.objects.get(oid)
        await self.objects.remove(oid)
        self.segments.pop(oid, None)

    def public(self) -> ip.ImageInfo:
        h, w = self.image.shape[:2]
        return ip.ImageInfo(
            id=self.id,
            filename=self.filename,
            width=w,
            height=h,
            encode_ms=round(self.encode_ms, 1),
            image_url=f"/api/images/{self.id}/image",
            descriptions=self.descriptions,
            objects=[self.object_public(o.id) for o in self.objects],
        )


class ImageStore(KeptItems[ImageEntry]):
    """Decoded images with their SAM2 embedding; bounded (least recently used evicted)."""

    def __init__(self, services: Any) -> None:
        super().__init__(services, "image", "images", MAX_IMAGES_KEPT)

    def add(self, entry: ImageEntry) -> None:
        for old in self.put(entry.id, entry):
            self.drop(old)

    def drop(self, entry: ImageEntry) -> None:
        # Dropping the segmenter frees its cached embedding; the display copy goes from disk.
        entry.segmenter = None
        entry.display_path.unlink(missing_ok=True)

    async def aclose(self) -> None:
        for entry in self.drain():
            self.drop(entry)

    async def sweep(self) -> None:
        """At start: images are not kept across restarts (their embedding is in memory), so any
        file left under images/ is from a process that stopped without cleaning up (a crash)."""
        if not self.root.is_dir():
            return
        left = [p for p in self.root.iterdir() if p.is_file()]
        for p in left:
            p.unlink(missing_ok=True)
        if left:
            log.warning("removed %d image file(s) left by the last process", len(left))
