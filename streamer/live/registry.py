"""Live mode's session registry: admission under one lock (so max_sessions is exact), which
browser owns which session, and the objects of dropped sessions kept for their page's return."""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Annotated, Any

from aiortc import RTCPeerConnection
from fastapi import Depends
from fastapi.requests import HTTPConnection

from streamer.http.access import request_owner
from streamer.live.session import LiveSession, Parked

PARKED_MAX = 64  # dropped sessions whose objects are kept at once (oldest go first)


class LiveRegistry:
    """The app's live sessions; admission happens under one lock so max_sessions is exact."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.sessions: dict[str, LiveSession] = {}
        self.owners: dict[str, str] = {}  # session id -> the browser that offered it
        self.lock = asyncio.Lock()
        # Every peer connection this app made, for leak checks: closed ones drop out once freed.
        self.peer_connections: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
        # dropped session id -> (when they expire, the browser that offered it, its objects)
        self.parked: dict[str, tuple[float, str | None, Parked]] = {}

    def _forget(self, session: LiveSession) -> None:
        self.sessions.pop(session.id, None)
        owner = self.owners.pop(session.id, None)
        if session.parked is not None:
            # A dropped connection: its objects wait for the page to come back (reconnect).
            expires = time.monotonic() + self.services.settings.session_idle_timeout_s
            self.parked[session.id] = (expires, owner, session.parked)
            while len(self.parked) > PARKED_MAX:
                self.parked.pop(next(iter(self.parked)))

    def take_parked(self, session_id: str) -> Parked | None:
        """A dropped session's objects, once, if they have not expired and this request's browser
        offered it; another browser gets None, as for an id that never was, and takes nothing."""
        now = time.monotonic()
        for sid, (expires, _, _) in list(self.parked.items()):
            if expires < now:
                del self.parked[sid]
        entry = self.parked.get(session_id)
        if entry is None or entry[1] != request_owner.get():
            return None
        del self.parked[session_id]
        return entry[2]

    async def admit(self) -> LiveSession | None:
        async with self.lock:
            if len(self.sessions) >= self.services.settings.max_sessions:
                return None
            session = LiveSession(self.services, on_closed=self._forget)
            self.sessions[session.id] = session
            self.owners[session.id] = request_owner.get()
            return session

    def find(self, session_id: str, *, closing: bool = False) -> LiveSession | None:
        """The open session if this request's browser offered it, else None (as if it never was);
        with `closing`, also one whose close is under way."""
        session = self.sessions.get(session_id)
        if session is None or session.closed.is_set():
            return None
        if not (closing or session.state.accepting):
            return None
        return session if self.owners.get(session_id) == request_owner.get() else None

    def open_peer_connections(self) -> int:
        return sum(1 for pc in self.peer_connections if pc.connectionState != "closed")

    async def close_all(self, reason: str = "the server is shutting down") -> None:
        await asyncio.gather(
            *(s.close(reason) for s in list(self.sessions.values())), return_exceptions=True
        )


def registry(conn: HTTPConnection) -> LiveRegistry:
    """The app's registry: create_app builds it and closes it at shutdown."""
    return conn.app.state.live


Registry = Annotated[LiveRegistry, Depends(registry)]
