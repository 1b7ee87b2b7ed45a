"""Live ingest: a WebRTC video track into a one-slot buffer; the tracker gets the newest frame.

aiortc's receive queue is unbounded: a consumer slower than the camera would build seconds of lag
and unbounded memory (docs/architecture.md, decision 1). A reader task drains the track as fast as
frames arrive and keeps only the newest; a frame replaced before the tracker took it counts as
dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiortc.mediastreams import MediaStreamError

log = logging.getLogger("fmu.live.ingest")


@dataclass
class IngestStats:
    received: int = 0
    taken: int = 0
    dropped: int = 0
    last_frame_at: float | None = None  # time.monotonic() of the newest frame


class FrameRate:
    """Frames processed per second, as the status line shows it: over the last 2 s, or over the
    last 3 frames where those took longer (a tracker step of over a second on a CPU read 0 in a
    2 s window half the time). When frames stop coming it falls, to 0 after 10 s without one."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=256)

    def tick(self, now: float | None = None) -> None:
        self._times.append(time.monotonic() if now is None else now)

    def per_second(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        recent = [t for t in self._times if now - t <= 10.0]
        if len(recent) < 2:
            return 0.0
        use = [t for t in recent if now - t <= 2.0]
        if len(use) < 3:
            use = recent[-3:]
        interval = (use[-1] - use[0]) / (len(use) - 1)
        # Frames still coming: their rate. Stalled (no frame for two of its intervals): down
        # towards 0, counting the wait since the last one.
        span = use[-1] - use[0] if now - use[-1] <= 2 * interval else now - use[0]
        return (len(use) - 1) / span if span > 0 else 0.0


class LatestFrameSlot:
    """Holds at most one frame. `put` replaces (and counts a drop); `take` waits for a frame."""

    def __init__(self) -> None:
        self._frame: Any = None
        self._event = asyncio.Event()
        self._closed = False
        self.stats = IngestStats()

    def put(self, frame: Any) -> None:
        if self._closed:
            return
        if self._frame is not None:
            self.stats.dropped += 1
        self._frame = frame
        self.stats.received += 1
        self.stats.last_frame_at = time.monotonic()
        self._event.set()

    async def take(self) -> Any:
        """The newest frame not yet taken; None once the slot is closed (the track ended)."""
        while self._frame is None:
            if self._closed:
                return None
            self._event.clear()
            await self._event.wait()
        frame, self._frame = self._frame, None
        self.stats.taken += 1
        return frame

    def close(self) -> None:
        self._closed = True
        self._frame = None
        self._event.set()

    @property
    def closed(self) -> bool:
        return self._closed


async def pump_track(track: Any, slot: LatestFrameSlot) -> None:
    """Move frames from an aiortc track into the slot until the track ends, then close the slot."""
    try:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            slot.put(frame)
    finally:
        slot.close()
