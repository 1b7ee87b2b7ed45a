"""A live session's lifecycle pieces: its state machine, its watchdog, and the newest snapshot.

Each is plain logic, tested without a peer (tests/test_live_parts.py); LiveSession wires them up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Phase = Literal["new", "running", "closing", "closed"]


class SessionStateError(RuntimeError):
    """A lifecycle step out of order (start twice, start after close, ...)."""


class SessionState:
    """new -> running -> closing -> closed; a step out of order raises instead of half-working."""

    def __init__(self) -> None:
        self.phase: Phase = "new"
        self.reason: str | None = None
        self.closed = asyncio.Event()

    def start(self) -> None:
        if self.phase != "new":
            raise SessionStateError(f"a session starts once; this one is {self.phase}")
        self.phase = "running"

    def begin_close(self, reason: str) -> bool:
        """True for the first close; False when closing is already under way or done."""
        if self.phase in ("closing", "closed"):
            return False
        self.phase = "closing"
        self.reason = reason
        return True

    def finish_close(self) -> None:
        if self.phase != "closing":
            raise SessionStateError(
                f"finish_close without begin_close (the session is {self.phase})"
            )
        self.phase = "closed"
        self.closed.set()

    @property
    def accepting(self) -> bool:
        """Whether new messages and work are taken (not once closing has begun)."""
        return self.phase in ("new", "running")


PAIRING_TIMEOUT_S = 30.0  # the websocket must attach this soon after the offer


@dataclass
class Watchdog:
    """Says when a session should end: no websocket soon after the offer, or idle too long."""

    idle_timeout_s: float
    pairing_timeout_s: float = PAIRING_TIMEOUT_S
    clock: Callable[[], float] = time.monotonic
    # A slot needs a live peer: messages alone (pings from a socket with no camera) do not keep
    # it. None: not checked (the unit tests of the other rules).
    first_frame_timeout_s: float | None = None
    created_at: float = field(default=0.0)
    last_activity: float = field(default=0.0)
    last_frame: float | None = field(default=None)

    def __post_init__(self) -> None:
        self.created_at = self.last_activity = self.clock()
        self.pairing_timeout_s = min(self.pairing_timeout_s, self.idle_timeout_s)

    @property
    def tick_s(self) -> float:
        return min(1.0, self.idle_timeout_s / 4)

    def touch(self) -> None:
        self.last_activity = self.clock()

    def frame_arrived(self) -> None:
        self.last_frame = self.last_activity = self.clock()

    def check(self, websocket_attached: bool) -> tuple[str, str] | None:
        """(reason, what the page is told) when the session should close now, else None."""
        now = self.clock()
        if not websocket_attached and now - self.created_at > self.pairing_timeout_s:
            return f"no websocket attached within {self.pairing_timeout_s:g} s", ""
        wait = self.first_frame_timeout_s
        if wait is not None and self.last_frame is None and now - self.created_at > wait:
            return f"no video within {wait:g} s", (
                f"session closed: no video arrived within {wait:g} s of connecting; check the "
                "camera, and that WebRTC media (UDP) can reach the server (a TURN server may be "
                "needed), then reload the page"
            )
        if now - self.last_activity > self.idle_timeout_s:
            return "idle timeout", (
                f"session closed after {self.idle_timeout_s:g} s without frames or messages; "
                "reload the page to start again"
            )
        if wait is not None and self.last_frame is not None:
            # messages go on, the video has stopped: the slot is not being used
            if now - self.last_frame > self.idle_timeout_s:
                return "video stopped", (
                    f"session closed: no video for {self.idle_timeout_s:g} s; reload the page "
                    "to start again"
                )
        return None


@dataclass
class Snapshot:
    """The newest processed frame and its masks (what clicks, describe and find work on)."""

    frame_index: int
    rgb: np.ndarray
    masks: dict[int, np.ndarray]
    visible: frozenset[int]  # objects whose mask is not empty (found on the vision thread)


class SnapshotBoard:
    """The newest snapshot, and a wait for the first one that satisfies a condition."""

    def __init__(self) -> None:
        self.latest: Snapshot | None = None
        self._new = asyncio.Event()

    def publish(self, snapshot: Snapshot) -> None:
        self.latest = snapshot
        new, self._new = self._new, asyncio.Event()
        new.set()  # wakes every waiter; the next wait uses a fresh event

    def clear(self) -> None:
        self.latest = None

    async def wait_for(
        self, condition: Callable[[Snapshot], bool], timeout_s: float | None
    ) -> Snapshot | None:
        """The newest snapshot once one satisfies `condition`, or None after `timeout_s` (None:
        as long as it takes; the session's end cancels the wait)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            snap = self.latest
            if snap is not None and condition(snap):
                return snap
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return None
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except asyncio.TimeoutError:
                return None
