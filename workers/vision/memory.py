"""Bounded per-object memory for streaming SAM2: clicked frames plus the recent frames SAM2 reads.

SAM2VideoPredictor keeps every frame's output forever. Memory attention only ever reads, for the
frame it is on, (a) the conditioning frames, (b) the non-conditioning memories of the last
num_maskmem - 1 frames (spaced memory_temporal_stride_for_eval apart) and (c) the object pointers
of the last max_obj_ptrs_in_encoder - 1 frames. A MemoryBank keeps exactly those, so the state is
flat in stream length and the model sees the same inputs the official predictor gives it.
"""

from __future__ import annotations

from typing import Any

FrameOutput = dict[str, Any]  # sam2's compact per-frame output: maskmem_features, obj_ptr, ...

# What memory attention reads of a frame output (sam2_base._prepare_memory_conditioned_features).
_MEMORY_KEYS = ("maskmem_features", "maskmem_pos_enc", "obj_ptr")


def memory_reach(model: Any) -> int:
    """How many frames back memory attention reads spatial memories (stride included)."""
    if model.num_maskmem < 2:
        return 0
    stride = max(1, int(model.memory_temporal_stride_for_eval))
    # t_rel = 1 is the previous frame; t_rel >= 2 sit on every stride-th frame before frame - 2,
    # the farthest being (num_maskmem - 2) strides plus up to (stride - 1) + 2 frames back.
    return max(1, (model.num_maskmem - 2) * stride + 1)


def pointer_reach(model: Any) -> int:
    """How many frames back memory attention reads object pointers."""
    return model.max_obj_ptrs_in_encoder - 1 if model.use_obj_ptrs_in_encoder else 0


class MemoryBank:
    """One object's memory, in sam2's output_dict layout, pruned after every frame.

    Conditioning frames are the frames the object was clicked on (its first frame, plus
    corrections when they count as conditioning). At most `max_cond_frames` are kept, the most
    recently clicked; the model's own max_cond_frames_in_attn still picks among those. A dropped
    conditioning frame becomes an ordinary past frame (as SAM2 treats unselected conditioning
    frames) and ages out with the window.
    """

    def __init__(self, model: Any, max_cond_frames: int) -> None:
        if max_cond_frames < 1:
            raise ValueError(f"max_cond_frames must be at least 1, got {max_cond_frames}")
        self.max_cond_frames = max_cond_frames
        self.cond: dict[int, FrameOutput] = {}
        self.non_cond: dict[int, FrameOutput] = {}
        self._mem_reach = memory_reach(model)
        # a click on the newest frame reads from the newest frame itself, so keep one frame more
        # than the next frame needs: distance <= reach from the newest frame.
        self._reach = max(self._mem_reach, pointer_reach(model))

    def output_dict(self) -> dict[str, dict[int, FrameOutput]]:
        """The view sam2's track_step reads (shares storage with the bank)."""
        return {"cond_frame_outputs": self.cond, "non_cond_frame_outputs": self.non_cond}

    def add(self, frame_idx: int, out: FrameOutput, is_cond: bool) -> None:
        """Store a frame's output; keep only what memory attention reads."""
        kept = {k: out[k] for k in _MEMORY_KEYS}
        if is_cond:
            self.cond[frame_idx] = kept
            self.non_cond.pop(frame_idx, None)  # as propagate_in_video_preflight does
            while len(self.cond) > self.max_cond_frames:
                oldest = next(iter(self.cond))  # dicts keep click order
                self.non_cond[oldest] = self.cond.pop(oldest)
        else:
            self.non_cond[frame_idx] = kept

    def prune(self, newest_idx: int) -> None:
        """Forget what no later frame (nor a click on the newest one) can read."""
        for t in list(self.non_cond):
            distance = abs(newest_idx - t)
            if distance > self._reach:
                del self.non_cond[t]
            elif distance > self._mem_reach and self.non_cond[t]["maskmem_features"] is not None:
                # only the object pointer is still read this far back
                self.non_cond[t] = {
                    "maskmem_features": None,
                    "maskmem_pos_enc": None,
                    "obj_ptr": self.non_cond[t]["obj_ptr"],
                }

    def sizes(self) -> tuple[int, int]:
        """(conditioning frames, other frames) held: bounded whatever the stream length."""
        return len(self.cond), len(self.non_cond)
