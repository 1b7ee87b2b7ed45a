"""What a clip may be: the limits an upload (and a batch-tracked clip) is held to, and the errors
that say why a file is refused.

Kept apart from the decoding in video_io.py: the store, the routes and the command line need the
limits without PyAV's reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class VideoError(ValueError):
    """The file is not a video we can use; the message says why and what to do."""


class VideoLimitError(VideoError):
    """The video is fine but over a configured limit (duration, resolution)."""


# Frames a second a clip may average over the longest clip accepted (slow-motion cameras record
# 240): a file of millions of tiny frames within the allowed length is refused while it is read,
# before its frame table fills memory and its jobs run for days.
MAX_FPS = 240


@dataclass(frozen=True)
class ClipLimits:
    max_seconds: float
    max_width: int
    max_height: int

    @property
    def max_frames(self) -> int:
        return max(1, math.ceil(self.max_seconds * MAX_FPS))

    @classmethod
    def from_settings(cls, settings: Any) -> ClipLimits:
        """The limits an upload is held to (and a batch-tracked clip too)."""
        return cls(settings.max_clip_seconds, settings.max_clip_width, settings.max_clip_height)


def too_long(limits: ClipLimits, seconds: float | None) -> str:
    got = f"{seconds:.1f} s" if seconds is not None else "longer than that"
    return (
        f"the clip is too long: at most {limits.max_seconds:g} s is accepted, got {got}. "
        "Trim it, or raise the limit (--max-clip-seconds)"
    )


def too_many_frames(limits: ClipLimits) -> str:
    return (
        f"the clip has too many frames: at most {limits.max_frames} are accepted "
        f"({MAX_FPS} a second over --max-clip-seconds {limits.max_seconds:g}). "
        "Lower its frame rate or trim it, or raise --max-clip-seconds"
    )


def check_size(width: int, height: int, limits: ClipLimits, rotation: int | None) -> None:
    # Portrait clips count in either orientation: the limit is on the long and the short side.
    long_max, short_max = (
        max(limits.max_width, limits.max_height),
        min(limits.max_width, limits.max_height),
    )
    if max(width, height) > long_max or min(width, height) > short_max:
        raise VideoLimitError(
            f"the clip's resolution is too high: at most {limits.max_width}x{limits.max_height} "
            f"is accepted, got {width}x{height}. Downscale it, or raise the limit "
            "(--max-clip-width, --max-clip-height)"
        )
