"""A live session's tracker and everything that runs with it on the vision thread.

Every method here is called through `services.run_vision`: frame conversion, the SAM2 step, and
the RLE encoding of every mask happen on the vision thread, so the event loop only moves the
finished overlay message and the snapshot.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from streamer.live import protocol as p
from streamer.live.frame_ids import read_frame_id
from streamer.live.lifecycle import Snapshot
from streamer.objects.results import summarize_state
from workers.masks import Box, clip_box, scale_box, scale_coords
from workers.vision.proposals import ProposalGrid

Size = tuple[int, int]  # (width, height) of a frame


def scale_prompt(prompt: dict[str, Any], seen_on: Size, size: Size) -> dict[str, Any]:
    """A box or click points made on a frame of `seen_on`, in the pixels of a frame of `size`:
    WebRTC changes the picture size as the bandwidth goes (and the synced overlay's band its
    height), so a prompt made on an older frame (a Find's, an auto-refine's, a resume's) is
    scaled to the frame it is applied on, each axis by its own ratio (a box kept inside it)."""
    if seen_on == size:
        return prompt
    scaled = dict(prompt)
    if prompt.get("box") is not None:
        scaled["box"] = clip_box(scale_box(prompt["box"], seen_on, size), *size)
    if prompt.get("points") is not None:
        scaled["points"] = [scale_coords(point, seen_on, size) for point in prompt["points"]]
    return scaled


class LiveTracker:
    """A StreamTracker plus the newest snapshot as the vision thread sees it (clicks land there)."""

    def __init__(self, model: Any, *, frame_ids: bool = False) -> None:
        from workers.vision import StreamTracker  # torch loads with the model, not with the app

        self.tracker = StreamTracker(model)
        self._snapshot: Snapshot | None = None
        # Each object's box on the last frame it showed on and that frame's size (what a
        # reconnect re-adds it from).
        self.last_boxes: dict[int, tuple[Box, Size]] = {}
        # A Find's candidates while the VLM checks them: tracked, in no overlay (the page lists
        # no such object) until kept.
        self.trials: set[int] = set()
        self.frame_ids = frame_ids  # the page sends a frame-id band under each picture

    @property
    def last_step_ms(self) -> float | None:
        return getattr(self.tracker, "last_step_ms", None)

    def step(self, frame: Any) -> tuple[Snapshot, str]:
        """Convert, step the tracker, encode every mask: (the snapshot, the overlay's JSON)."""
        rgb = frame.to_ndarray(format="rgb24")
        frame_id = None
        if self.frame_ids:
            frame_id, rgb = read_frame_id(rgb)
            rgb = np.ascontiguousarray(rgb)
        result = self.tracker.step(rgb)
        masks: dict[int, np.ndarray] = {}
        objects = []
        for oid, state in result.objects.items():
            masks[int(oid)] = np.asarray(state.mask, dtype=bool)
            if int(oid) not in self.trials:
                objects.append(summarize_state(state).event(int(oid)))
        pts = frame.pts
        time_s = float(pts * frame.time_base) if pts is not None and frame.time_base else None
        h, w = rgb.shape[:2]
        msg = p.OverlayMessage(
            frame_index=int(result.frame_index),
            pts=int(pts) if pts is not None else None,
            frame_id=frame_id,
            time_s=time_s,
            frame_size=p.FrameSize(width=w, height=h),
            objects=objects,
        )
        for o in objects:
            if o.box is not None:
                self.last_boxes[o.id] = (tuple(float(v) for v in o.box), (w, h))  # type: ignore[assignment]
        visible = frozenset(o.id for o in objects if o.box is not None)
        self._snapshot = Snapshot(int(result.frame_index), rgb, masks, visible)
        return self._snapshot, msg.model_dump_json()

    @property
    def size(self) -> Size | None:
        """(width, height) of the newest frame, the one prompts land on."""
        if self._snapshot is None:
            return None
        h, w = self._snapshot.rgb.shape[:2]
        return w, h

    def _fit(self, prompt: dict[str, Any], seen_on: Size | None) -> dict[str, Any]:
        prompt = {k: v for k, v in prompt.items() if v is not None}
        size = self.size
        return prompt if seen_on is None or size is None else scale_prompt(prompt, seen_on, size)

    def add_object(
        self, oid: int, *, trial: bool = False, seen_on: Size | None = None, **prompt: Any
    ) -> tuple[Snapshot, np.ndarray] | None:
        """Add an object on the newest frame (a `trial`: a Find's candidate, until `keep`), from
        a prompt made on a frame of size `seen_on` (None: on the newest one); (that frame, its
        mask) when the mask is not empty."""
        self.tracker.add_object(obj_id=oid, **self._fit(prompt, seen_on))
        if trial:  # this thread steps the tracker: no overlay has it yet
            self.trials.add(oid)
        state = self.tracker.objects.get(oid)
        self._note_box(oid, state)
        if state is None or self._snapshot is None:
            return None
        mask = np.asarray(state.mask, dtype=bool)
        return (self._snapshot, mask) if mask.any() else None

    def refine(
        self, oid: int, *, seen_on: Size | None = None, **prompt: Any
    ) -> tuple[Snapshot, np.ndarray] | None:
        """Refine an object on the newest frame, from a prompt made on a frame of size `seen_on`
        (None: on the newest one); (that frame, its new mask) when there is one."""
        state = self.tracker.refine(oid, **self._fit(prompt, seen_on))
        self._note_box(oid, state)
        if self._snapshot is None:
            return None
        return self._snapshot, np.asarray(state.mask, dtype=bool)

    def _note_box(self, oid: int, state: Any) -> None:
        # The newest frame shows it too: an object clicked (or refined) just before a drop, with
        # no step since, is parked from this box.
        size = self.size
        if state is not None and state.box is not None and size is not None:
            self.last_boxes[oid] = (tuple(float(v) for v in state.box), size)  # type: ignore[assignment]

    def propose(self, grid: ProposalGrid) -> tuple[Snapshot, list[Any]]:
        """Find-all's regions on the newest frame, from its cached features: (that frame, them)."""
        if self._snapshot is None:
            raise ValueError("no video frame has been tracked yet; wait for the picture")
        return self._snapshot, self.tracker.propose(self._snapshot.rgb, grid)

    def keep(self, oid: int) -> None:
        """A Find's candidate kept: an object of the session from now, in the overlay."""
        self.trials.discard(oid)

    def remove(self, oid: int) -> None:
        self.last_boxes.pop(oid, None)
        self.trials.discard(oid)
        self.tracker.remove(oid)

    def release(self) -> None:
        """Drop every object's memory bank (on the thread that owns them)."""
        for oid in list(self.tracker.objects):
            with contextlib.suppress(Exception):
                self.tracker.remove(oid)
        self._snapshot = None
