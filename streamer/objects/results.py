"""One object's result on one frame, `{rle, box, presence_probability, present}`, the same shape in every mode.

Built on the vision thread (or another worker thread) right after SAM2 made the mask, never on the
event loop: RLE encoding a mask is numpy work that grows with the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.objects.events import Box, ObjectResult, RLEMask
from workers.masks import RLE, mask_to_box, rle_encode


@dataclass(frozen=True)
class MaskResult:
    """What is kept of one object's mask on one frame.

    presence_probability: SAM2's object score as a probability (sigmoid of its logit: how sure the
    model is the object is visible), in every mode; present: it is > 0.5 and the mask is not empty.
    Not the decoder's predicted IoU, which no mode reports.
    """

    rle: RLE
    box: Box | None
    presence_probability: float
    present: bool

    def public(self) -> dict[str, Any]:
        return {
            "rle": self.rle,
            "box": self.box,
            "presence_probability": round(self.presence_probability, 4),
            "present": self.present,
        }

    def event(self, object_id: int) -> ObjectResult:
        return ObjectResult(
            id=object_id,
            rle=RLEMask(size=list(self.rle["size"]), counts=self.rle["counts"]),
            box=self.box,
            presence_probability=round(self.presence_probability, 4),
            present=self.present,
        )


def summarize(
    mask: Any, presence_probability: float, *, present: bool | None = None, box: Any = None
) -> MaskResult:
    """Reduce a mask to a MaskResult. `present` defaults to presence_probability > 0.5; it is false for an empty
    mask whatever the probability. `box` defaults to the mask's box. Call it off the event loop."""
    mask = np.asarray(mask, dtype=bool)
    if box is None:
        box = mask_to_box(mask)
    box_t = tuple(float(v) for v in box) if box is not None else None
    visible = box_t is not None and bool(mask.any())
    present = (presence_probability > 0.5 if present is None else bool(present)) and visible
    return MaskResult(rle_encode(mask), box_t, float(presence_probability), present)  # type: ignore[arg-type]


def summarize_state(state: Any) -> MaskResult:
    """A StreamTracker ObjectState (mask, box, score, present) as a MaskResult."""
    return summarize(state.mask, float(state.score), present=bool(state.present), box=state.box)
