"""Tracking one object through a whole clip, forward and backward from its clicks, as a cancellable background job.

Memory is bounded by tracker state, not clip length: the forward pass holds one decoded frame (plus
one being decoded ahead), the backward pass holds one decode chunk (`VideoReader.frames_reverse`,
a byte budget), and results are kept as COCO RLE per frame. Every SAM2 call is one frame's work
submitted through `run_vision`, so a long job interleaves with live sessions on the vision thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from streamer.clip.encodings import SharedEncodings, Walk
from streamer.clip.limits import VideoError
from streamer.clip.video_io import VideoInfo, VideoReader
from streamer.objects.results import MaskResult, summarize_state
from streamer.objects.table import NEGATIVE_FIRST, starts_an_object

JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
RunVision = Callable[..., Awaitable[Any]]

# Bytes of decoded frames the backward pass may hold at once (one chunk). 256 MB is ~40 frames of
# 1080p; a GOP longer than that is decoded again from its keyframe per chunk (decoding is far
# cheaper than the SAM2 step it feeds).
REVERSE_CHUNK_BYTES = 256 << 20


@dataclass
class FramePrompt:
    """Clicks (and/or a box) for one object on one frame of the clip."""

    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    @property
    def negative(self) -> bool:
        """Only negative clicks (no positive one, no box): ObjectTable.check_new's `negative`, a
        prompt that cuts from an object but cannot start one."""
        return not starts_an_object(self.labels, self.box)


@dataclass
class Progress:
    done: int = 0
    total: int = 0
    fps: float = 0.0
    eta_s: float | None = None
    phase: str = "queued"

    @property
    def percent(self) -> float:
        return round(100.0 * self.done / self.total, 1) if self.total else 0.0


class TrackJob:
    """Track `obj_id` through the clip from its prompts; results land in `results` as frames finish.

    The forward pass runs from the earliest frame whose prompt can start the object (the anchor:
    a positive click or a box) to the end, the backward pass, with a reverse-time tracker sharing
    the object id, from the latest such frame to frame 0. Each pass refines the object with the
    prompts of every frame it reaches, so a click on any frame steers both directions; a frame
    of negative clicks only never starts the object in a pass. Frames between the two are tracked
    by both; the backward pass, which starts from the later clicks, has the final word there, as in
    SAM2's own propagate forward then in reverse.
    """

    def __init__(
        self,
        *,
        job_id: str,
        obj_id: int,
        path: Path,
        info: VideoInfo,
        prompts: dict[int, FramePrompt],
        model: Any,
        run_vision: RunVision,
        results: dict[int, MaskResult],
        on_progress: Callable[[TrackJob], None] | None = None,
        reverse_chunk_bytes: int = REVERSE_CHUNK_BYTES,
        resume: Resume | None = None,
        encodings: SharedEncodings | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("a track job needs at least one prompt (a click or a box), got none")
        self.job_id = job_id
        self.obj_id = obj_id
        self.path = path
        self.info = info
        # A copy: later clicks on the object mutate its prompts, and start a new job for them.
        self.prompts = {
            f: FramePrompt(list(p.points), list(p.labels), p.box) for f, p in prompts.items()
        }
        self.model = model
        self.run_vision = run_vision
        self.results = results
        self.on_progress = on_progress
        self.reverse_chunk_bytes = reverse_chunk_bytes
        self.encodings = encodings  # the clip's, shared with its other jobs (encodings.py)
        self.state: JobState = "queued"
        self.error: str | None = None
        self.failure: Exception | None = None
        self.progress = Progress()
        starts = start_frames(self.prompts)
        if not starts:
            raise ValueError(
                f"{NEGATIVE_FIRST} (a track job starts from a positive click or a box)"
            )
        self.anchor = starts[0]  # where the forward pass starts
        self.last_prompted = starts[-1]  # where the backward pass starts
        self.forward_from, self.backward_from = self.anchor, self.last_prompted
        self.run_forward = True
        if resume is not None:  # an interrupted job goes on from a frame it had reached
            phase, frame, seed = resume
            if seed is not None:
                self.prompts[frame] = seed
            if phase == "forward":
                self.forward_from = frame
            else:
                self.run_forward, self.backward_from = False, frame
            # Where it goes on from, until it reaches a frame: interrupted again before (still
            # queued, or at once), it resumes from there, with the results it has kept.
            self.progress.phase = phase
        n = info.frame_count
        # forward: its start..end; backward: every frame before its start (or from it, resumed)
        backward = self.backward_from + (self.backward_from != self.last_prompted)
        self.progress.total = (n - self.forward_from if self.run_forward else 0) + backward
        # Frames finished since the owner last took them (to be saved), and the newest one.
        self.fresh: list[int] = []
        self.position: int | None = None if resume is None else resume[1]
        self.waiting_for: int | None = None  # another object whose job this one lets catch up
        self._started = 0.0
        self._last_emit = 0.0
        self._held: asyncio.TimerHandle | None = None  # a held-back _emit, due at the limit

    # -- vision-thread work (one frame per call) ------------------------------------------------

    def _step(
        self, tracker: Any, frame: np.ndarray, index: int, prompt: FramePrompt | None
    ) -> MaskResult | None:
        tracker.step(frame, self.encodings, index)
        if prompt is not None and (prompt.points or prompt.box is not None):
            if self.obj_id in tracker.objects:
                tracker.refine(
                    self.obj_id, prompt.points or None, prompt.labels or None, box=prompt.box
                )
            elif not prompt.negative:  # negative clicks never start an object (check_new's rule)
                tracker.add_object(
                    points=prompt.points or None,
                    labels=prompt.labels or None,
                    box=prompt.box,
                    obj_id=self.obj_id,
                )
        state = tracker.objects.get(self.obj_id)
        return None if state is None else summarize_state(state)

    # -- the job ---------------------------------------------------------------------------------

    async def run(self) -> None:
        from workers.vision import StreamTracker  # torch loads with the model, not with the app

        self.state = "running"
        self._started = time.monotonic()
        self._emit(force=True)  # out of line: the page tells a running job from one waiting
        reader: VideoReader | None = None
        # Walks start with the job, so a job started a moment earlier waits while this one
        # opens the file (encodings.py); each pass leaves its walk as it ends.
        walk = self._walk(forward=True) if self.run_forward else None
        try:
            # Inside the try: a file that cannot be opened (gone, or damaged since it was probed)
            # fails the job like any other error, so it ends, says why and can be resumed.
            reader = await asyncio.to_thread(VideoReader, self.path, self.info)
            if self.run_forward:
                self.progress.phase = "forward"
                fwd = await self.run_vision(StreamTracker, self.model, reverse=False)
                await self._pass(fwd, reader.frames(self.forward_from), walk, forward=True)
                del fwd
            if self.backward_from > 0:
                self.progress.phase = "backward"
                self.position = self.backward_from  # a start, or a frame with a box: it seeds
                walk = self._walk(forward=False)
                bwd = await self.run_vision(StreamTracker, self.model, reverse=True)
                it = reader.frames_reverse(
                    self.backward_from, budget_bytes=self.reverse_chunk_bytes
                )
                await self._pass(bwd, it, walk, forward=False)
                del bwd
            self.state = "done"
        except asyncio.CancelledError:
            self.state = "cancelled"
            raise
        except Exception as exc:  # reported to the page; the clip and other jobs go on
            self.state = "failed"
            self.error = f"tracking failed: {exc}"
            self.failure = exc  # its traceback, for the server log
        finally:
            if walk is not None:
                walk.leave()  # a job that ended before its pass did
            if reader is not None:
                await _uncancellable(asyncio.to_thread(reader.close))
            self._emit(force=True)

    def _walk(self, forward: bool) -> Walk | None:
        if self.encodings is None:
            return None
        start = self.forward_from if forward else self.backward_from
        return self.encodings.walk(forward, start, self.info.frame_count, owner=self.obj_id)

    async def _pass(
        self,
        tracker: Any,
        frames: Iterator[tuple[int, np.ndarray]],
        walk: Walk | None,
        *,
        forward: bool,
    ) -> None:
        # Decode the next frame on a helper thread while the vision thread steps this one.
        sentinel = (None, None)

        def pull() -> tuple[int | None, np.ndarray | None]:
            return next(frames, sentinel)  # type: ignore[arg-type]

        # The prompted frames this pass comes to, in its order. The reader skips a frame the file
        # cannot decode; a prompted one skipped would leave its click unapplied and the object
        # tracked without it (or, its first, not at all) while the job said "done".
        due = sorted(
            (
                f
                for f in self.prompts
                if (f >= self.forward_from if forward else f <= self.backward_from)
            ),
            reverse=not forward,
        )
        loop = asyncio.get_running_loop()
        decoder = ThreadPoolExecutor(1, "clip-decode", initializer=_idle_priority)
        # A bare executor future, always awaited through shield(): cancelling the job must never
        # mark a decode as finished while its thread is still inside the container.
        pending = loop.run_in_executor(decoder, pull)
        try:
            while True:
                index, frame = await asyncio.shield(pending)
                if due and (index is None or (due[0] < index if forward else due[0] > index)):
                    raise VideoError(
                        f"frame {due[0]}, where the object was prompted, could not be decoded "
                        "(the file may be damaged there): click it on another frame"
                    )
                if due and due[0] == index:
                    due.pop(0)
                if index is None:
                    break
                pending = loop.run_in_executor(decoder, pull)
                prompt = self.prompts.get(index)
                if walk is not None:
                    # in step with the clip's other jobs (encodings.py)
                    await walk.turn(index, self._waits_for)
                result = await self.run_vision(self._step, tracker, frame, index, prompt)
                if walk is not None:
                    walk.stepped(index)
                del frame
                # the backward pass's first frame was the forward pass's, with memory: keep that
                if forward or index != self.last_prompted:
                    if result is not None:
                        self.results[index] = result
                        self.fresh.append(index)
                    self.position = index
                    self.progress.done += 1
                    self._tick()
        finally:
            if walk is not None:
                walk.leave()
            # Never abandon a decode in flight: the reader is closed right after this returns, and
            # closing a container another thread is decoding from crashes the process.
            await _settled(pending)
            # Close the decode generator now, on a thread, while its container is still open;
            # left to the garbage collector it would run after the container is closed.
            close = getattr(frames, "close", None)
            if close is not None:
                await _uncancellable(asyncio.to_thread(close))
            decoder.shutdown(wait=False)  # its one decode has settled above

    def _tick(self) -> None:
        elapsed = time.monotonic() - self._started
        if elapsed > 0:
            self.progress.fps = self.progress.done / elapsed
            left = self.progress.total - self.progress.done
            self.progress.eta_s = left / self.progress.fps if self.progress.fps > 0 else None
        self._emit()

    def _waits_for(self, obj_id: int | None) -> None:
        """Standing still while object `obj_id`'s job catches up (None: no longer), said."""
        self.waiting_for = obj_id
        self._emit(force=True)

    def _emit(self, force: bool = False) -> None:
        """The job's state to its owner (websockets, then the database) at most ~8 times a second,
        the final state always; one held back goes once the limit allows (it waited for the next
        step, and a job held up, e.g. on a slow frame, left the clicked frame's mask unshown)."""
        if self.on_progress is None:
            return
        wait = self._last_emit + 0.125 - time.monotonic()
        if not force and wait > 0:
            if self._held is None:
                self._held = asyncio.get_running_loop().call_later(wait, self._emit, True)
            return
        if self._held is not None:
            self._held.cancel()
            self._held = None
        self._last_emit = time.monotonic()
        self.on_progress(self)

    def take_fresh(self) -> list[tuple[int, MaskResult]]:
        """The frames finished since the last call, with their results (to be saved)."""
        fresh, self.fresh = self.fresh, []
        return [(i, self.results[i]) for i in fresh if i in self.results]

    def public(self) -> dict[str, Any]:
        p = self.progress
        return {
            "job_id": self.job_id,
            "object_id": self.obj_id,
            "state": self.state,
            "phase": p.phase,
            "done": p.done,
            "total": p.total,
            "percent": p.percent,
            "fps": round(p.fps, 2),
            "eta_s": None if p.eta_s is None else round(p.eta_s, 1),
            "anchor_frame": self.anchor,
            "error": self.error,
            "position": self.position,
            "waiting_for": self.waiting_for,
        }


Resume = tuple[str, int, FramePrompt | None]  # phase, frame, the prompt that re-seeds it


def start_frames(prompts: dict[int, FramePrompt]) -> list[int]:
    """The frames whose prompt can start the object (not negative clicks only), in order: a
    pass starts from one of these, and describe and auto-refine read one by default."""
    return sorted(f for f, p in prompts.items() if not p.negative)


def _idle_priority() -> None:
    """Run this (decode) thread only on CPU time nothing else wants (Linux SCHED_IDLE).

    Decoding the next frame is a few ms beside a SAM2 step of hundreds; at normal priority it
    preempts one of torch's intra-op threads, and the others then wait for it at their next
    barrier, which costs the step far more than the decode itself. Where the policy is not
    available the thread keeps normal priority.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


async def _settled(fut: asyncio.Future) -> None:
    """Wait until `fut` has really finished, through any cancellation of the caller."""
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            continue
        except Exception:  # noqa: BLE001 - only waiting for the thread to let go
            return


async def _uncancellable(coro: Awaitable[Any]) -> None:
    """Finish `coro` even if the caller is being cancelled (cleanup that must not be skipped)."""
    await _settled(asyncio.ensure_future(coro))
