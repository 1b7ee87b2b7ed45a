"""A live session's outgoing messages: control messages in order, overlays and status latest-only.

A slow page never stalls tracking and never builds a backlog of overlays: only the newest overlay
and the newest status wait to go out, while control messages (tokens, verdicts, errors) are kept
in order and never dropped, up to a bound past which the page is not reading at all.
"""

from __future__ import annotations

import asyncio
import collections

MAX_QUEUED_MESSAGES = 4096  # a page this far behind is not reading: the session closes

LATEST_KINDS = ("overlay", "status")  # sent in this order after the control messages


class OutboxClosed(RuntimeError):
    """A message was put into an outbox that was already closed."""


class Outbox:
    """Waited on with events, not polled: `get` sleeps until there is something to send."""

    def __init__(self, max_queued: int = MAX_QUEUED_MESSAGES) -> None:
        self.max_queued = max_queued
        self._control: collections.deque[str] = collections.deque()
        self._latest: dict[str, str] = {}
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()  # no control message queued or being sent
        self._drained.set()
        self._in_flight = False
        self.control_only = False  # while closing: the last notices go out, overlays do not
        self.closed = False

    def __len__(self) -> int:
        return len(self._control)

    def put(self, text: str) -> bool:
        """Queue a control message; False when the queue is full (the page stopped reading)."""
        if self.closed:
            raise OutboxClosed("the session is closed: nothing more can be sent")
        if len(self._control) >= self.max_queued:
            return False
        self._control.append(text)
        self._drained.clear()
        self._ready.set()
        return True

    def put_latest(self, kind: str, text: str) -> None:
        """Replace the waiting message of this kind (overlay, status) with a newer one."""
        if kind not in LATEST_KINDS:
            raise ValueError(f"kind must be one of {LATEST_KINDS}, got {kind!r}")
        if self.closed:
            raise OutboxClosed("the session is closed: nothing more can be sent")
        self._latest[kind] = text
        self._ready.set()

    def _pop(self) -> str | None:
        if self._control:
            return self._control.popleft()
        if not self.control_only:
            for kind in LATEST_KINDS:
                text = self._latest.pop(kind, None)
                if text is not None:
                    return text
        return None

    async def get(self) -> str:
        """The next message to send; call `sent()` once it went out."""
        while True:
            text = self._pop()
            if text is not None:
                self._in_flight = True
                return text
            self._ready.clear()
            await self._ready.wait()

    def sent(self) -> None:
        self._in_flight = False
        if not self._control:
            self._drained.set()

    async def drained(self) -> None:
        """Until every control message queued so far has gone out."""
        await self._drained.wait()

    def close(self) -> None:
        """Drop whatever waits; later puts raise OutboxClosed."""
        self.closed = True
        self._control.clear()
        self._latest.clear()
        self._in_flight = False
        self._drained.set()
        self._ready.set()
