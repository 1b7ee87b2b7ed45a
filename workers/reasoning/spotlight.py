"""Spotlight: draw one object so a VLM looks at exactly it (dimmed background, outline, zoom crop).

The rules, exactly (docs/architecture.md, decision 6):

- Background pixels are at 50% brightness, rounded down: ``out = pixel >> 1`` (== ``pixel // 2``),
  per channel, so 255 -> 127, 1 -> 0.
- Pixels inside the mask are byte-identical to the input frame.
- The 1-pixel white outline (255, 255, 255) sits on the background pixels that are 8-adjacent to the
  mask (a 3x3 dilation minus the mask): it lies just outside the object, so object pixels stay
  untouched and the ring is closed, diagonal corners included. Where the mask touches the frame
  border there is no background pixel outside it, so the outline stops at the border.
- An object whose mask covers less than ``small_object_fraction`` of the frame also gets a zoomed
  crop of the spotlit image around its box with ``zoom_context`` of context, upscaled so its longest
  side is ``crop_size`` pixels (never downscaled), so the model sees the region at a usable size.

Frames are H x W x 3 uint8 (channel order is passed through untouched); masks are H x W, any dtype,
nonzero = object. Pure numpy/OpenCV; every mask operation is confined to the mask's box.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CropBox = tuple[int, int, int, int]

# 3x3 square: the outline is the 8-neighbourhood ring, closed around diagonal corners too.
_RING_KERNEL = np.ones((3, 3), dtype=np.uint8)
_MIN_CROP_SIDE = 32  # a 1-pixel object still gets some context around it


@dataclass(frozen=True)
class Spotlight:
    """A spotlit frame, and for small objects a zoomed crop of it (both H x W x 3 uint8)."""

    image: np.ndarray
    crop: np.ndarray | None = None
    crop_box: CropBox | None = None  # the crop's region in frame pixels, x1/y1 exclusive

    @property
    def images(self) -> list[np.ndarray]:
        """What goes to the model, in order: the full view, then the zoom if there is one."""
        return [self.image] if self.crop is None else [self.image, self.crop]


def _check_inputs(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Validate shapes and return the mask as a contiguous uint8 0/1 array (a view when bool)."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", type(frame).__name__)
        raise ValueError(f"frame must be an H x W x 3 array, got {shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {frame.dtype}")
    if not isinstance(mask, np.ndarray) or mask.shape != frame.shape[:2]:
        shape = getattr(mask, "shape", type(mask).__name__)
        raise ValueError(
            f"mask shape {shape} does not match frame shape {frame.shape}: "
            f"expected a mask of shape {frame.shape[:2]}"
        )
    if mask.dtype == np.bool_:
        return np.ascontiguousarray(mask).view(np.uint8)
    return np.ascontiguousarray(mask != 0).view(np.uint8)


def crop_region(
    box: tuple[int, int, int, int], width: int, height: int, zoom_context: float
) -> CropBox:
    """A square region around box with zoom_context of its size on each side, kept in the frame.

    The square is shifted (not cut) at the frame edges so the context stays; it is only cut where
    the frame itself is smaller than the square.
    """
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * zoom_context)
    side_i = min(max(int(round(side)), _MIN_CROP_SIDE), max(width, height))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0

    def span(center: float, limit: int) -> tuple[int, int]:
        s = min(side_i, limit)
        lo = int(round(center - s / 2.0))
        lo = min(max(lo, 0), limit - s)
        return lo, lo + s

    cx0, cx1 = span(cx, width)
    cy0, cy1 = span(cy, height)
    return (cx0, cy0, cx1, cy1)


def render_spotlight(
    frame: np.ndarray,
    mask: np.ndarray,
    *,
    small_object_fraction: float = 0.02,
    zoom_context: float = 0.5,
    crop_size: int = 448,
) -> Spotlight:
    """Spotlight the masked object in frame (see the module docstring for the exact rules)."""
    m = _check_inputs(frame, mask)
    area = cv2.countNonZero(m)
    if area == 0:
        raise ValueError(
            "mask is empty: there is no object to spotlight (click the object again or pass a "
            "mask with at least one nonzero pixel)"
        )
    h, w = m.shape
    bx, by, bw, bh = cv2.boundingRect(m)

    out = np.right_shift(frame, 1)  # 50% brightness, rounded down; a new uint8 array
    cv2.copyTo(frame, m, out)  # object pixels byte-identical

    # Outline: dilate inside the box grown by one pixel (that is all the ring can reach).
    rx0, ry0 = max(bx - 1, 0), max(by - 1, 0)
    rx1, ry1 = min(bx + bw + 1, w), min(by + bh + 1, h)
    sub = m[ry0:ry1, rx0:rx1]
    ring = cv2.dilate(sub, _RING_KERNEL)
    ring -= sub  # 1 on background pixels touching the mask (ring >= sub: no underflow)
    roi = out[ry0:ry1, rx0:rx1]  # a view: OpenCV writes through it
    # OR with white under the ring mask sets exactly those pixels to 255, ~8x faster than
    # numpy boolean indexing on a large box.
    if ring.size > 1:  # a 1x1 box (1x1 frame) has no ring, and OpenCV misreads 1x1x3 arrays
        cv2.bitwise_or(roi, (255, 255, 255, 0), dst=roi, mask=ring)

    if area >= small_object_fraction * h * w:
        return Spotlight(image=out)
    crop_box = crop_region((bx, by, bx + bw, by + bh), w, h, zoom_context)
    cx0, cy0, cx1, cy1 = crop_box
    crop = out[cy0:cy1, cx0:cx1]
    longest = max(crop.shape[:2])
    if longest < crop_size:
        scale = crop_size / longest
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC)
    else:
        crop = crop.copy()  # never hand out a view into image
    return Spotlight(image=out, crop=crop, crop_box=crop_box)
