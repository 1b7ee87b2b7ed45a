"""A live session's, clip's or image's share of the VLM: at most --vlm-max-in-flight-per-session of
its requests at the VLM at once, so one page cannot take every slot of --vlm-max-in-flight."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterator

from streamer.objects.refusal import ObjectRefused

# What counts against a table's VLM share (--vlm-max-in-flight-per-session): a describe, a chat and
# an auto-refine each hold one request at the VLM at a time, for their whole run. Past the share
# one waits its turn (VLMShare.turn), taken by whoever starts it: a Claim (Clip, Image), Live's task.
# A Find's requests (its grounding, each candidate's check, find-all's batches) each take a turn of
# their own (VLMShare.request).
VLM_SHARED_KINDS = frozenset({"describe", "chat", "refine"})


class VLMShare:
    """The VLM requests one live session, clip or image may have running at once: its share of
    the global --vlm-max-in-flight, so one page cannot take every slot (cap None: no share)."""

    def __init__(self, cap: int | None, where: str, wait_s: float | None = None) -> None:
        self.cap, self.where = cap, where
        self.wait_s = wait_s  # the longest a request waits its turn (None: as long as it takes)
        self.running = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._woken = 0  # waiters told it is their turn that have not taken it yet

    @property
    def waiting(self) -> int:
        """Requests waiting whose turn has not come."""
        return len(self._waiting) - self._woken

    def _room(self) -> bool:
        return self.cap is None or self.running + self._woken < self.cap

    async def turn(self, oid: int | None) -> None:
        """Return once the share has room, after those who waited before (those whose turn came
        hold theirs); the caller then takes its slot with no await in between
        (TrackedObject.take_share). Past `wait_s` it is refused as busy."""
        if self._room() and self.waiting == 0:
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            async with asyncio.timeout(self.wait_s):
                await turn
        except BaseException as exc:  # gone while waiting (a remove, a client gone), or too long
            self._waiting.remove(turn)
            if turn.done() and not turn.cancelled():  # its turn had come: the next one's now
                self._woken -= 1
                self._wake()
            if isinstance(exc, TimeoutError):
                raise ObjectRefused(
                    "busy",
                    f"this {self.where}'s {self.cap} requests to the VLM (its share) were still "
                    f"running after {self.wait_s:g} s of waiting; try again",
                    oid,
                ) from None
            raise
        self._waiting.remove(turn)
        self._woken -= 1

    def _wake(self) -> None:
        for turn in self._waiting:
            if not self._room():
                return
            if not turn.done():
                turn.set_result(None)
                self._woken += 1

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """One request of the share for as long as it runs, after waiting its turn (a Find's)."""
        await self.turn(None)
        with self.slot(None):  # no await since the turn came: it is taken
            yield

    @contextlib.contextmanager
    def slot(self, oid: int | None) -> Iterator[None]:
        """One request of the share, at once; with no room it is refused as busy (turn() waits
        for room instead)."""
        if not self._room():
            raise ObjectRefused(
                "busy",
                f"this {self.where} already has {self.running} requests to the VLM running "
                "(its share); wait for one to finish",
                oid,
            )
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._wake()
