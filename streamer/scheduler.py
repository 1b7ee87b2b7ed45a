"""The vision thread's scheduler: who gets SAM2 next when several are waiting.

One SAM2 thread serves every live session, clip job and image. Submitted in arrival order, two clip
jobs (a frame each, back to back) or one session's click flood crowd out another session's frames.
Here each live session has its own lane and the lanes are served round-robin; clip jobs, image
encodes and clicks wait in one background lane that runs only when no live session has work
waiting, or when LIVE_TURNS_PER_BACKGROUND live calls ran since the last one (they yield between
steps: each frame of a job is its own call; never starved, never ahead). A session's frame loop
and its message loop each await their call before the next, so a live lane never holds more than
a couple of calls: nobody builds a backlog on the vision thread.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

BACKGROUND = ""  # the lane of clip jobs, image work and anything not a live session's
# Live calls run before each background call when both wait: live keeps ~3/4 of the thread.
LIVE_TURNS_PER_BACKGROUND = 3


class VisionScheduler:
    """Runs calls one at a time on `executor` (one thread), live lanes round-robin first."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.live: OrderedDict[str, deque[tuple[asyncio.Future[Any], Callable[[], Any]]]] = (
            OrderedDict()
        )
        self.background: deque[tuple[asyncio.Future[Any], Callable[[], Any]]] = deque()
        self.busy = False
        self.live_turns = 0  # live calls since the last background call
        self.served: list[str] = []  # lanes in the order they ran (recent only; for tests)

    async def run(self, lane: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call = functools.partial(fn, *args, **kwargs)
        if lane == BACKGROUND:
            self.background.append((future, call))
        else:
            self.live.setdefault(lane, deque()).append((future, call))
        self._next()
        return await future

    def _pick(self) -> tuple[str, asyncio.Future[Any], Callable[[], Any]] | None:
        if self.live_turns >= LIVE_TURNS_PER_BACKGROUND or not self.live:
            picked = self._pick_background()
            if picked is not None:
                self.live_turns = 0
                return picked
        while self.live:
            lane, calls = next(iter(self.live.items()))
            self.live.move_to_end(lane)  # round-robin: this lane goes behind the others
            future, call = calls.popleft()
            if not calls:
                del self.live[lane]
            if not future.cancelled():
                self.live_turns += 1
                return lane, future, call
        return self._pick_background()

    def _pick_background(self) -> tuple[str, asyncio.Future[Any], Callable[[], Any]] | None:
        while self.background:
            future, call = self.background.popleft()
            if not future.cancelled():
                return BACKGROUND, future, call
        return None

    def _next(self) -> None:
        if self.busy:
            return
        picked = self._pick()
        if picked is None:
            return
        lane, future, call = picked
        self.busy = True
        self.served = [*self.served[-999:], lane]
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self.executor, call)

        def finished(result: asyncio.Future[Any]) -> None:
            self.busy = False
            if not future.cancelled():
                if result.exception() is not None:
                    future.set_exception(result.exception())  # type: ignore[arg-type]
                else:
                    future.set_result(result.result())
            # Picked one loop turn later: the caller just woken (a session whose next frame is
            # already waiting) submits again first, so its lane is not found empty.
            loop.call_soon(self._next)

        done.add_done_callback(finished)
