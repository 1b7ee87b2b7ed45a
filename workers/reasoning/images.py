"""Images for a VLM request: resize to a known size (Qwen's patch grid), JPEG-encode, data URL.

We resize ourselves so the coordinate space the model answers in is known exactly: with sides that
are multiples of 28 (Qwen2.5-VL's 14 px patches merged 2x2) and at least 56 px, Qwen's own
`smart_resize` leaves the image as it is, so an absolute box from the model maps back to frame
pixels by a plain per-axis scale.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import cv2
import numpy as np

QWEN_MULTIPLE = 28  # Qwen2/2.5-VL: patch 14 x merge 2 (Qwen3-VL uses 32; its boxes are relative)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class PreparedImage:
    """One image as sent to the model, and the sizes needed to map its coordinates back."""

    data_url: str
    size: tuple[int, int]  # (width, height) as sent
    source_size: tuple[int, int]  # (width, height) of the frame it came from

    def part(self) -> dict[str, object]:
        """The OpenAI chat content part for this image."""
        return {"type": "image_url", "image_url": {"url": self.data_url}}


def fitted_size(
    width: int, height: int, max_side: int, multiple: int = QWEN_MULTIPLE
) -> tuple[int, int]:
    """(width, height) with the longest side <= max_side, both multiples of `multiple`, >= 2x it.

    The aspect ratio is kept up to rounding to the grid; frames are only scaled down, except
    that a side shorter than two grid cells is raised to two (Qwen's minimum image size).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    limit = max((max_side // multiple) * multiple, 2 * multiple)
    scale = min(1.0, max_side / max(width, height))

    def side(n: int) -> int:
        s = int(round(n * scale / multiple)) * multiple
        return min(max(s, 2 * multiple), limit)

    return side(width), side(height)


def fit_image(image: np.ndarray, max_side: int, multiple: int = QWEN_MULTIPLE) -> np.ndarray:
    """Resize an H x W x 3 image to fitted_size (a copy only when the size changes)."""
    h, w = image.shape[:2]
    size = fitted_size(w, h, max_side, multiple)
    if size == (w, h):
        return image
    # Halve with a Gaussian pyramid while the image is 2x too big or more (antialiased and fast),
    # then one bilinear step of less than 2x. INTER_AREA would be cleaner but costs ~9 ms at
    # 1280x720 -> 756x420 (a non-integer ratio), more than the rest of a request together.
    while image.shape[1] >= 2 * size[0] and image.shape[0] >= 2 * size[1]:
        image = cv2.pyrDown(image)
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def encode_jpeg(image: np.ndarray, *, rgb: bool = True, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an H x W x 3 uint8 image (RGB unless rgb=False, then BGR as OpenCV has it)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if rgb else image
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"could not JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def decode_data_url(url: str) -> np.ndarray:
    """The RGB array inside a `data:image/...;base64,` URL (tests and the in-process backend)."""
    if not url.startswith("data:image/") or ";base64," not in url:
        raise ValueError(f"expected a base64 image data URL, got {url[:40]!r}")
    raw = base64.b64decode(url.split(",", 1)[1])
    bgr = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("the data URL does not hold a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def prepare_image(
    image: np.ndarray,
    max_side: int,
    *,
    multiple: int = QWEN_MULTIPLE,
    rgb: bool = True,
    quality: int = JPEG_QUALITY,
) -> PreparedImage:
    """Resize, encode and wrap one image for a chat request."""
    h, w = image.shape[:2]
    fitted = fit_image(image, max_side, multiple)
    url = data_url(encode_jpeg(fitted, rgb=rgb, quality=quality))
    return PreparedImage(url, (fitted.shape[1], fitted.shape[0]), (w, h))
