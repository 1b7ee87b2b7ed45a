"""Checking and converting what callers hand the vision workers: RGB frames and click/box prompts.

Errors are ValueErrors that name what was wrong, so a session can show them and carry on.
Conversions mirror sam2's own (video frame loading, click normalisation) bit for bit, which is
what makes our tracker's masks equal to the official predictor's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# ImageNet statistics, as sam2.utils.misc.load_video_frames normalises video frames.
_IMG_MEAN = (0.485, 0.456, 0.406)
_IMG_STD = (0.229, 0.224, 0.225)

Point = tuple[float, float]
BoxLike = Sequence[float]


def check_frame(frame: object) -> tuple[int, int]:
    """Return (width, height) of an H x W x 3 uint8 RGB frame, or raise ValueError."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(
            f"frame must be an H x W x 3 uint8 numpy array, got {type(frame).__name__}"
        )
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame must have shape H x W x 3 (RGB), got {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must have dtype uint8, got {frame.dtype}")
    return int(frame.shape[1]), int(frame.shape[0])


def video_frame_tensor(
    frame: np.ndarray,
    image_size: int,
    device: torch.device,
    *,
    resize_on_device: bool | None = None,
) -> torch.Tensor:
    """1 x 3 x S x S model input, made as SAM2VideoPredictor.init_state makes its frames.

    sam2.utils.misc._load_img_as_tensor resizes with PIL (bicubic) to S x S, divides by 255 in
    float64, stores float32, then normalises with ImageNet mean/std; we repeat each step bit for
    bit. On a CUDA GPU (resize_on_device, default: on CUDA) the uint8 frame goes up as it is and
    is resized there instead (device_resize): on one H200, resizing and normalising a 640 x 360
    frame to 1024 px on the CPU took 24.7 ms, on the GPU 0.4 ms, of a 45.6 ms step. Not on MPS:
    nobody has measured it there, nor checked that MPS has the antialiased bicubic.
    """
    if resize_on_device is None:
        resize_on_device = resizes_on_device(device)
    if resize_on_device:
        resized = device_resize(frame, image_size, device)
        return _normalised(resized).permute(2, 0, 1).unsqueeze(0).contiguous()
    # contiguous first: frames arrive as views too (BGR->RGB flips, crops)
    pil = Image.fromarray(np.ascontiguousarray(frame))
    resized = torch.from_numpy(np.array(pil.resize((image_size, image_size))))
    return _normalised(resized).permute(2, 0, 1).unsqueeze(0).to(device)


def resizes_on_device(device: torch.device) -> bool:
    """Whether a frame goes up as uint8 and is resized on `device` rather than on the CPU:
    on CUDA only (video_frame_tensor says why; image.py's image input follows the same rule)."""
    return device.type == "cuda"


def uint8_on_device(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """H x W x 3 uint8 on `device`, sent as it is (a quarter of a float copy's bytes)."""
    # copied only where it must be: torch warns on a read-only array (PIL's np.asarray gives one)
    return torch.from_numpy(np.require(image, requirements=("C", "W"))).to(device)


def device_resize(frame: np.ndarray, image_size: int, device: torch.device) -> torch.Tensor:
    """S x S x 3 uint8 on `device`: torch's antialiased bicubic, which is PIL's kernel (a = -0.5,
    widened when shrinking), rounded to whole levels as PIL's is. PIL also clips between its two
    passes, so a pixel can differ from PIL's by a level or so, by more only beside sharp edges
    that bicubic overshoots (tests/test_vision_inputs.py bounds how often)."""
    image = uint8_on_device(frame, device)
    resized = F.interpolate(
        image.permute(2, 0, 1).unsqueeze(0).float(),
        size=(image_size, image_size),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )
    return resized.round_().clamp_(0, 255)[0].permute(1, 2, 0).to(torch.uint8)


def _normalised(resized: torch.Tensor) -> torch.Tensor:
    """S x S x 3 float32 of S x S x 3 uint8: / 255 in float64, then ImageNet mean and std in
    float32, the operations and types sam2's loader uses, so the values are its values."""
    image = (resized.double() / 255.0).float()
    mean = torch.tensor(_IMG_MEAN, dtype=torch.float32, device=image.device)
    std = torch.tensor(_IMG_STD, dtype=torch.float32, device=image.device)
    image -= mean
    image /= std
    return image


@dataclass(frozen=True)
class Prompt:
    """Clicks and an optional box on one frame, in that frame's pixels (validated)."""

    points: np.ndarray  # (N, 2) float32, x then y
    labels: np.ndarray  # (N,) int32: 1 foreground, 0 background; a box adds labels 2 and 3
    has_box: bool

    @classmethod
    def build(
        cls,
        points: Sequence[Point] | None,
        labels: Sequence[int] | None,
        box: BoxLike | None,
        frame_size: tuple[int, int],
    ) -> Prompt:
        """Validate against a (width, height) frame; the box goes first, as SAM2 expects."""
        width, height = frame_size
        pts = _as_points(points)
        if labels is None:
            labels = [1] * len(pts)  # bare clicks mean "this object"
        lbl = [int(v) for v in labels]
        if len(lbl) != len(pts):
            raise ValueError(
                f"got {len(pts)} points but {len(lbl)} labels; give one label per point"
            )
        if any(v not in (0, 1) for v in lbl):
            raise ValueError(f"labels must be 1 (object) or 0 (background), got {lbl}")
        for x, y in pts:
            if not (0 <= x < width and 0 <= y < height):
                raise ValueError(
                    f"click ({x:g}, {y:g}) is outside the {width}x{height} frame "
                    f"(x must be in [0, {width}), y in [0, {height}))"
                )
        coords: list[Point] = []
        all_labels: list[int] = []
        if box is not None:
            x0, y0, x1, y1 = _as_box(box)
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ValueError(
                    f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) must have x0 < x1, y0 < y1 and lie "
                    f"inside the {width}x{height} frame"
                )
            coords += [(x0, y0), (x1, y1)]
            all_labels += [2, 3]
        coords += pts
        all_labels += lbl
        if not coords:
            raise ValueError("a prompt needs at least one point or a box")
        return cls(
            points=np.asarray(coords, dtype=np.float32).reshape(-1, 2),
            labels=np.asarray(all_labels, dtype=np.int32),
            has_box=box is not None,
        )

    def model_inputs(
        self, frame_size: tuple[int, int], image_size: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, N, 2) model-pixel coordinates and (1, N) labels, as in add_new_points_or_box."""
        width, height = frame_size
        coords = torch.from_numpy(self.points).unsqueeze(0)
        coords = coords / torch.tensor([width, height]) * image_size
        labels = torch.from_numpy(self.labels).unsqueeze(0)
        return coords.to(device), labels.to(device)


def _as_points(points: Sequence[Point] | None) -> list[Point]:
    if points is None:
        return []
    out: list[Point] = []
    for p in points:
        try:
            x, y = (float(v) for v in p)
        except (TypeError, ValueError):
            raise ValueError(f"each point must be an (x, y) pair of numbers, got {p!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"point coordinates must be finite, got ({x}, {y})")
        out.append((x, y))
    return out


def _as_box(box: BoxLike) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be (x0, y0, x1, y1) numbers, got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box coordinates must be finite, got {box!r}")
    return x0, y0, x1, y1
