"""A clip's frame encodings, shared by the tracking jobs that walk its frames together.

Each object of a clip is tracked by a job of its own (job.py), so that it can be refined,
cancelled and resumed alone; but jobs running at once (`fmu-live track`'s objects, find-all's
regions, a person's clicks on several objects) step the same frames side by side on the one
vision thread, and the image encoder, about two thirds of a one-object step at 256 px on a CPU
(benchmarks/RESULTS.md), would run once per job for the same pixels. The second job to reach a
frame takes the first's encoding instead. The encoding is sam2's backbone output for those
pixels: what a job then computes from it is what it computes alone, bit for bit
(tests/test_clip_encodings.py).

Only the newest `keep` (2) frames are held, and only while two or more passes walk the clip.
Jobs on one vision thread take turns, one step each, so a job that fell behind (it started later:
a person's second click, find's next object; or its decode was slow on a loaded machine) would
stay behind for good and find nothing held. So each pass walks through `Walk.turn`: a job more
than `keep` frames ahead of another walking the same way waits for it to catch up, then both walk
in step, if the other is at most `pace` (8) frames behind, or further but at most `catch_up` (a
third) of the frames the job ahead has still to step.

Why a third: with g frames between them, L frames left for the one ahead, and a step costing e
(the encoder) + r (the rest), walking apart the two take turns to the end, the one ahead done
after about 2L(e + r). Waiting, it is done after g(e + r) (the other catching up; the vision
thread is busy all along) + L(e + 2r) (in step, one encode a frame), which is no later while
g(e + r) <= L e, that is g <= L times the encoder's share of a step: two thirds at 256 px on a
CPU, unmeasured on a GPU, taken as a third. The one behind, and so the clip, is always done
sooner. A job started long after (further than that) is left alone.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from typing import Any

from streamer.metrics import CLIP_FRAMES_ENCODED


class SharedEncodings:
    """Frame encodings keyed by clip frame index, for the jobs of one clip (one model)."""

    def __init__(
        self, keep: int = 2, pace: int = 8, catch_up: float = 1 / 3, say_after_s: float = 0.5
    ) -> None:
        if keep < 1 or pace < keep or not 0 <= catch_up < 1:
            raise ValueError(
                f"need 1 <= keep <= pace and 0 <= catch_up < 1, got keep={keep}, pace={pace}, "
                f"catch_up={catch_up}"
            )
        self.keep, self.pace, self.catch_up = keep, pace, catch_up
        self.say_after_s = say_after_s  # a wait longer than this is said (Walk.turn)
        self._kept: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._walks: set[Walk] = set()
        self._moved = asyncio.Event()  # set, and replaced, whenever a walk moves or ends
        # Walks start, move and end on the event loop; encodings are taken on the vision thread.
        self._lock = threading.Lock()

    def walk(self, forward: bool, start: int, frames: int, owner: Any = None) -> Walk:
        """A pass over a clip of `frames` frames from frame `start`, forward or backward, by
        `owner` (a job's object id: what a pass waiting for it names); `leave()` it when it ends."""
        walk = Walk(self, forward, start, frames, owner)
        with self._lock:
            self._walks.add(walk)
        return walk

    def get(self, key: int, encode: Callable[[], Any]) -> Any:
        """The encoding of frame `key`: another job's, or `encode()`'s (kept when shared)."""
        with self._lock:
            hit = self._kept.get(key)
            if hit is not None:
                CLIP_FRAMES_ENCODED.labels("shared").inc()
                return hit
        value = encode()  # outside the lock: a walk starting or ending never waits on an encode
        CLIP_FRAMES_ENCODED.labels("encoded").inc()
        with self._lock:
            if len(self._walks) >= 2:
                self._kept[key] = value
                # First what every walk has passed, then the oldest: a job catching up encodes
                # the frames it missed, which must not push out those the others hold for it.
                for old in [k for k in self._kept if not self._needed(k)]:
                    del self._kept[old]
                while len(self._kept) > self.keep:
                    self._kept.popitem(last=False)
        return value

    @property
    def held(self) -> int:
        """Frames held now."""
        return len(self._kept)

    def _moves(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()

    def _leave(self, walk: Walk) -> None:
        with self._lock:
            if walk not in self._walks:  # left already: its pass ended, then its job
                return
            self._walks.remove(walk)
            if len(self._walks) < 2:
                self._kept.clear()
        self._moves()

    def _needed(self, index: int) -> bool:
        return any(walk.behind(index) > 0 for walk in self._walks)

    def _waits_for(self, walk: Walk, index: int) -> Walk | None:
        """The walk `walk`, about to step frame `index`, must let catch up first, if any."""
        bound = max(self.pace, int(walk.left(index) * self.catch_up))
        return next(
            (
                other
                for other in self._walks
                if other is not walk
                and other.forward == walk.forward
                and self.keep < other.behind(index) <= bound
            ),
            None,
        )


class Walk:
    """One pass of a job over the clip: where it is, so that one ahead can wait for it."""

    def __init__(
        self, shared: SharedEncodings, forward: bool, start: int, frames: int, owner: Any = None
    ) -> None:
        self.shared, self.forward, self.frames, self.owner = shared, forward, frames, owner
        self.position = start - 1 if forward else start + 1  # the last frame it stepped

    def behind(self, index: int) -> int:
        """How many frames this walk has still to step to have stepped frame `index`."""
        return index - self.position if self.forward else self.position - index

    def left(self, index: int) -> int:
        """Frames this pass steps from frame `index` on, `index` included."""
        return self.frames - index if self.forward else index + 1

    async def turn(self, index: int, says: Callable[[Any], None] | None = None) -> None:
        """Wait, if need be, until frame `index` may be stepped (the module docstring). A wait
        longer than `say_after_s` is said, so that a job standing still says why: `says(owner)`
        of the walk waited for, then `says(None)` as the wait ends (brief waits, while two walk
        in step, are not)."""
        deadline, said = None, False
        try:
            while (other := self.shared._waits_for(self, index)) is not None:
                if says is None or said:
                    await self.shared._moved.wait()
                    continue
                if deadline is None:
                    deadline = asyncio.get_running_loop().time() + self.shared.say_after_s
                try:
                    async with asyncio.timeout_at(deadline):
                        await self.shared._moved.wait()
                except TimeoutError:
                    said = True
                    says(other.owner)
        finally:
            if said and says is not None:
                says(None)

    def stepped(self, index: int) -> None:
        self.position = index
        self.shared._moves()

    def leave(self) -> None:
        self.shared._leave(self)
