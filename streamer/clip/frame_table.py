"""A clip's frame table: every frame's presentation timestamp, its keyframes, and the exact frame <-> time mapping the page and the server share."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from fractions import Fraction


@dataclass
class VideoInfo:
    """What clip mode needs to know about a video, all read from the file once at upload."""

    width: int  # display orientation (after rotation)
    height: int
    coded_width: int
    coded_height: int
    rotation: int  # counter-clockwise degrees from the display matrix, one of 0, 90, 180, 270
    codec: str
    container: str  # first name of the demuxer, e.g. "mp4" for mov,mp4,m4a,...
    time_base: Fraction
    pts: list[int]  # presentation timestamps of every frame, ascending; index = frame index
    keyframes: list[int] = field(default_factory=list)  # frame indices of keyframes, ascending
    fps: float = 0.0
    # The shape of a pixel as shown, width:height in display orientation: (2, 1) for an
    # anamorphic clip shown twice as wide as its frames. Frames, clicks and masks are in frame
    # pixels; a video made from the frames (the overlay export, the browser copy) carries it.
    pixel_aspect: tuple[int, int] = (1, 1)

    @property
    def frame_count(self) -> int:
        return len(self.pts)

    @property
    def duration_s(self) -> float:
        if not self.pts:
            return 0.0
        last = float((self.pts[-1] - self.pts[0]) * self.time_base)
        return last + (1.0 / self.fps if self.fps > 0 else 0.0)

    def time_of(self, index: int) -> float:
        """Seconds from the first frame to frame `index`: what <video>.currentTime shows for it."""
        self._check_index(index)
        return float((self.pts[index] - self.pts[0]) * self.time_base)

    def index_at(self, t: float) -> int:
        """The frame on screen at time `t` (seconds from the first frame): the last one starting at or before it.

        A time within a tenth of the gap before the next frame counts as that frame: it absorbs
        float rounding in the browser's currentTime. The gap is the local one, not the average
        frame: in a variable-frame-rate clip's burst an average-sized tolerance skips a frame.
        A time past the last frame is the last frame, as <video> shows it: a clip's audio often
        runs on past its video (AAC priming, a longer track), and the page's currentTime with it.
        """
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"time must be a finite number of seconds >= 0, got {t}")
        ticks = t / float(self.time_base) + self.pts[0]
        i = max(0, bisect.bisect_right(self.pts, ticks) - 1)
        if i + 1 < len(self.pts) and self.pts[i + 1] - ticks <= 0.1 * (
            self.pts[i + 1] - self.pts[i]
        ):
            i += 1
        return i

    def index_of_pts(self, pts: int) -> int | None:
        i = bisect.bisect_left(self.pts, pts)
        return i if i < len(self.pts) and self.pts[i] == pts else None

    def keyframe_at_or_before(self, index: int) -> int:
        i = bisect.bisect_right(self.keyframes, index) - 1
        return self.keyframes[i] if i >= 0 else 0

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.pts):
            raise ValueError(f"frame index must be in 0..{len(self.pts) - 1}, got {index}")

    def public(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "rotation": self.rotation,
            "pixel_aspect": list(self.pixel_aspect),
            "codec": self.codec,
            "container": self.container,
            "frame_count": self.frame_count,
            "fps": round(self.fps, 4),
            "duration_s": round(self.duration_s, 4),
            "frame_times": [round(float((p - self.pts[0]) * self.time_base), 6) for p in self.pts],
        }
