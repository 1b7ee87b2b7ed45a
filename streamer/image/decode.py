"""Image uploads decoded to a bounded working copy: formats accepted, the size checked before any
pixel is decoded, EXIF orientation applied; the display copy read back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from streamer.clip.video_io import is_video

ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP"}


class ImageError(ValueError):
    """The upload is not an image we can use; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# EXIF orientations that turn the picture a quarter: its upright width and height swap
_QUARTER_TURNS = (5, 6, 7, 8)


@dataclass(frozen=True)
class Decoded:
    """An upload decoded to its working copy: `image` (what SAM2, the VLM and the page see) has at
    most the working pixel count; `width` x `height` is the file's own size (EXIF orientation
    applied), the space clicks, boxes and masks are given in."""

    image: np.ndarray
    width: int
    height: int


def working_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size a width x height image is worked on at: itself, or scaled down (aspect kept) to at
    most max_pixels."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def decode_image(path: Path, *, max_pixels: int, working_pixels: int) -> Decoded:
    """Decode PNG/JPEG/WebP to an RGB working copy of at most `working_pixels` (EXIF orientation
    applied); ImageError says why not. The file's claimed size is checked before anything is
    decoded; a JPEG is decoded straight at a reduced scale, other formats once at full size in
    their own mode and reduced at once, so what is kept never grows with the file's resolution."""
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
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
            size = working_size(w, h, working_pixels)
            if size != (w, h):
                img.draft("RGB", size)  # JPEG: DCT scaling while decoding (others: no-op)
            img.load()
            small = _eight_bit(img)
            if small.size != size:
                small = small.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            small = small.convert("RGB")  # our own copy, with the file's EXIF
            ImageOps.exif_transpose(small, in_place=True)  # upright, after shrinking
            if orientation in _QUARTER_TURNS:
                w, h = h, w
            return Decoded(np.asarray(small, dtype=np.uint8).copy(), w, h)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(
            413, f"the image is too large to decode safely ({exc}); downscale it"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if is_video(path):
            raise ImageError(
                422,
                "this is a video, not an image: clips go in the page's Clip mode (or upload one "
                "frame of it as a PNG, JPEG or WebP image)",
            ) from None
        why = str(exc).replace(f" '{path}'", "").replace(str(path), "the file")  # not our paths
        raise ImageError(
            422,
            "this file is not an image we can read (it may be damaged, cut off, or another kind of "
            f"file: {why}). Upload a PNG, JPEG or WebP image",
        ) from None


def _eight_bit(img: Image.Image) -> Image.Image:
    """The image in 8-bit RGB or L, as a person sees it: 16- and 32-bit grey scaled down (not
    clipped to white), anything transparent laid on white (not on the colour under it)."""
    info = dict(img.info)  # its EXIF, for the turn upright after shrinking
    if img.mode.startswith("I"):
        wide = np.asarray(img, dtype=np.int64)
        top = 65535 if img.mode.startswith("I;16") or wide.max(initial=0) <= 65535 else wide.max()
        img = Image.fromarray((np.clip(wide, 0, top) * 255 // max(1, top)).astype(np.uint8), "L")
    elif img.mode == "F":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    elif img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    img.info.update(info)
    return img


def read_display(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def display_size(path: Path) -> tuple[int, int]:
    """Width and height from the file's header (OSError if it is gone or no image)."""
    with Image.open(path) as img:
        return img.size
