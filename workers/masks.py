"""Geometry for masks and boxes: COCO RLE (pycocotools), mask boxes, IoU, box scaling.

Shared by the vision workers, the reasoning workers and the streamer; imports no torch.
Boxes are (x0, y0, x1, y1) in pixels with x1/y1 exclusive, so a one-pixel mask at (3, 2)
has the box (3, 2, 4, 3) and area 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
from pycocotools import mask as coco_mask

Box = tuple[float, float, float, float]
MAX_RLE_PIXELS = 1 << 31  # past any image (a 2 GP mask); a bigger RLE size is refused unread


class RLE(TypedDict):
    """COCO run-length encoding: column-major runs, starting with a run of zeros."""

    size: list[int]  # [height, width]
    counts: str  # COCO's compressed string form


def _check_mask(mask: np.ndarray) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", type(mask).__name__)
        raise ValueError(f"mask must be a 2-D array (H x W), got {shape}")
    return mask.astype(bool, copy=False)


def rle_encode(mask: np.ndarray) -> RLE:
    """Encode an H x W boolean mask as COCO RLE (compressed counts string), with pycocotools."""
    mask = _check_mask(mask)
    h, w = mask.shape
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}


def _string_runs(counts: str | bytes) -> np.ndarray:
    """The runs of COCO's compressed counts string, parsed with numpy (the format: each count
    as little-endian 5-bit groups offset by 48, 0x20 set on all but a count's last character,
    0x10 on that one its sign; from the third count on, a delta against the count two back)."""
    raw = counts.encode("utf-8") if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if ((c < 0) | (c > 63)).any():
        raise ValueError("RLE counts have a character outside COCO's range ('0' to 'o')")
    last = (c & 0x20) == 0  # each count's last character
    if not last[-1]:
        raise ValueError("RLE counts string is truncated")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if (ends - starts).max() > 6:  # 7 characters hold 35 bits: far past any image's size
        raise ValueError("RLE counts have a count too long for any image")
    k = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # place within its count
    values = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (k[ends[negative]] + 1))
    runs = values.copy()
    for first in (1, 2):  # (0-based) counts 3, 5, ... add count 1's chain; 4, 6, ... count 2's
        runs[first::2] = np.cumsum(values[first::2])
    return runs


def rle_decode(rle: RLE) -> np.ndarray:
    """Decode COCO RLE (string or list counts) back to an H x W boolean mask. ValueError when
    it is not one: no size, or runs that do not cover it exactly (pycocotools' decode would fill
    what a short one leaves with whatever memory held: README, Development)."""
    try:
        h, w = (int(v) for v in rle["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError("RLE must have size [height, width]") from exc
    if h < 0 or w < 0 or h * w > MAX_RLE_PIXELS:
        raise ValueError(f"RLE size {h}x{w} is no image's (0 to {MAX_RLE_PIXELS} pixels)")
    counts: Any = rle.get("counts")
    if isinstance(counts, str | bytes):
        runs = _string_runs(counts)
        covered = -1 if (runs < 0).any() else int(runs.sum())
    elif isinstance(counts, list | tuple) and all(
        isinstance(r, int) and not isinstance(r, bool) for r in counts
    ):
        # Checked in Python ints first: a run past int64 is refused, not overflowed.
        covered = sum(counts) if all(r >= 0 for r in counts) else -1
        runs = np.asarray(counts, dtype=np.int64) if covered == h * w else np.zeros(0, np.int64)
    else:
        raise ValueError("RLE counts must be COCO's string or a list of whole numbers")
    if covered != h * w:
        what = f"cover {covered} pixels" if covered >= 0 else "include a negative one"
        raise ValueError(f"RLE runs {what}, size {h}x{w} needs {h * w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape((w, h)).T.copy()


def mask_to_box(mask: np.ndarray) -> Box | None:
    """Tight box around the mask's pixels (x1, y1 exclusive), or None for an empty mask."""
    mask = _check_mask(mask)
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


def box_area(box: Sequence[float]) -> float:
    x0, y0, x1, y1 = box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0.0 when both are empty."""
    ix0, iy0 = max(a[0], b[0]), max(a[1], b[1])
    ix1, iy1 = min(a[2], b[2]), min(a[3], b[3])
    inter = box_area((ix0, iy0, ix1, iy1))
    union = box_area(a) + box_area(b) - inter
    return float(inter / union) if union > 0 else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel IoU of two masks of the same shape; two empty masks count as identical (1.0)."""
    a, b = _check_mask(a), _check_mask(b)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def resize_nearest(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A mask at width x height, each pixel the nearest one of the mask's (itself if that is
    its size already)."""
    h, w = mask.shape
    if (w, h) == (width, height):
        return mask
    ys = ((np.arange(height) + 0.5) * h / height).astype(np.intp)
    xs = ((np.arange(width) + 0.5) * w / width).astype(np.intp)
    return mask[ys[:, None], xs[None, :]]


def scale_box(box: Sequence[float], from_size: tuple[int, int], to_size: tuple[int, int]) -> Box:
    """Map a box between two image sizes given as (width, height)."""
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def scale_coords(
    values: Sequence[float], from_size: tuple[int, int], to_size: tuple[int, int]
) -> tuple[float, ...]:
    """A point (x, y) or a box between two image sizes (width, height), each axis by its own
    ratio (a size rounded on each axis, as a working copy's or a resized video's is: one ratio for
    both misses the far edge by up to a pixel)."""
    return scale_box((*values, *values)[:4], from_size, to_size)[: len(values)]


def clip_box(box: Sequence[float], width: int, height: int) -> Box:
    """Clamp a box to the frame; coordinates may come out of a model slightly outside it."""
    x0, y0, x1, y1 = box
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    return (float(x0), float(y0), float(x1), float(y1))
