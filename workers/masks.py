"""Pure numpy geometry for masks and boxes: COCO RLE, mask boxes, IoU, box scaling.

Shared by the vision workers, the reasoning workers and the streamer; imports no torch.
Boxes are (x0, y0, x1, y1) in pixels with x1/y1 exclusive, so a one-pixel mask at (3, 2)
has the box (3, 2, 4, 3) and area 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np

Box = tuple[float, float, float, float]


class RLE(TypedDict):
    """COCO run-length encoding: column-major runs, starting with a run of zeros."""

    size: list[int]  # [height, width]
    counts: str  # COCO's compressed string form


def _check_mask(mask: np.ndarray) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", type(mask).__name__)
        raise ValueError(f"mask must be a 2-D array (H x W), got {shape}")
    return mask.astype(bool, copy=False)


def _runs(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a boolean mask in column-major order, starting with zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds)
    if flat[0]:  # COCO runs always start with a (possibly empty) run of zeros
        runs = np.concatenate(([0], runs))
    return runs


def _encode_counts(runs: np.ndarray) -> str:
    # COCO's string form: each count (delta-coded against the one two back, from the
    # third on) as little-endian 5-bit groups, offset by 48 into printable ASCII.
    out: list[str] = []
    values = runs.tolist()
    for i, x in enumerate(values):
        if i > 2:
            x -= values[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def _decode_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(s):
                raise ValueError("RLE counts string is truncated")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_encode(mask: np.ndarray) -> RLE:
    """Encode an H x W boolean mask as COCO RLE (compressed counts string)."""
    mask = _check_mask(mask)
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": _encode_counts(_runs(mask))}


def rle_decode(rle: RLE) -> np.ndarray:
    """Decode COCO RLE (string or list counts) back to an H x W boolean mask."""
    try:
        h, w = (int(v) for v in rle["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError("RLE must have size [height, width]") from exc
    counts = rle.get("counts")
    runs = _decode_counts(counts) if isinstance(counts, str) else list(counts or [])
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, size {h}x{w} needs {h * w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T.copy()


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels, without decoding the mask."""
    counts = rle["counts"]
    runs = _decode_counts(counts) if isinstance(counts, str) else list(counts)
    return int(sum(runs[1::2]))


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
