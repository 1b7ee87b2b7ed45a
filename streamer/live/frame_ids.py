"""The frame-id band: how a page in synced overlay mode names each frame it sends.

A local camera element has no RTP timestamp, so a page cannot tell which of its presented frames
an overlay's `pts` is. In synced mode the page sends its frames through a canvas and paints, below
the picture, a band of BAND_CELLS black or white cells: a white marker, the frame's id (16 bits,
most significant first), a black marker. The server reads the id, crops the band off before the
tracker sees the frame, and echoes the id in the overlay as `frame_id`; the page paints the frame
it kept under that id with its masks. web/synced.js writes the same layout.

The band is BAND_CELLS equal cells across the full width and width // BAND_HEIGHT_DIVISOR rows
high, so it scales with the frame if WebRTC sends a smaller picture. Cells are large and pure
black or white, which a video codec keeps readable.
"""

from __future__ import annotations

import numpy as np

ID_BITS = 16
BAND_CELLS = ID_BITS + 2  # white marker, the id's bits, black marker
BAND_HEIGHT_DIVISOR = 20
MIN_WIDTH = BAND_CELLS * 2  # below this a cell is too narrow to read


def band_height(width: int) -> int:
    """Rows the band takes at the bottom of a frame `width` pixels wide."""
    return width // BAND_HEIGHT_DIVISOR


def read_frame_id(rgb: np.ndarray) -> tuple[int | None, np.ndarray]:
    """(the frame's id, the frame without its band); the id is None when the band's markers are
    not there (a page that sent no band, or a frame too small to carry one)."""
    h, w = rgb.shape[:2]
    bh = band_height(w)
    if w < MIN_WIDTH or bh < 2 or h <= bh:
        return None, rgb
    picture = rgb[: h - bh]
    row = rgb[h - bh + bh // 4 : h - bh // 4]  # the band's middle rows: codecs blur its edges
    cell = w / BAND_CELLS
    bits = []
    for i in range(BAND_CELLS):
        x0 = int(i * cell + cell / 4)
        x1 = max(x0 + 1, int((i + 1) * cell - cell / 4))
        bits.append(float(row[:, x0:x1].mean()) > 127.5)
    if not bits[0] or bits[-1]:
        return None, picture
    value = 0
    for bit in bits[1:-1]:
        value = (value << 1) | int(bit)
    return value, picture


def write_frame_id(picture: np.ndarray, frame_id: int) -> np.ndarray:
    """The picture with a band naming it `frame_id` below it (what web/synced.js sends; tests)."""
    h, w = picture.shape[:2]
    bh = band_height(w)
    band = np.zeros((bh, w, 3), dtype=np.uint8)
    bits = [1] + [(frame_id >> (ID_BITS - 1 - i)) & 1 for i in range(ID_BITS)] + [0]
    for i, bit in enumerate(bits):
        if bit:
            band[:, round(i * w / BAND_CELLS) : round((i + 1) * w / BAND_CELLS)] = 255
    return np.concatenate([picture, band], axis=0)
