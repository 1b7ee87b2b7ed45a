"""StreamTracker: SAM2 video tracking of clicked objects over an unbounded stream, with flat memory.

It drives sam2's own SAM2VideoPredictor / SAM2Base methods (track_step through
_run_single_frame_inference, the memory encoder) on a one-frame session, and keeps per object
only what memory attention reads (see memory.py). Two pieces skip work sam2 repeats: the image
encoder skips the work on Hiera's padded window tokens (encoder.py), and memory attention
projects each stored memory once (attention.py). With the same weights, frames and clicks its masks match
the official predictor's (tests/test_vision_equivalence.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from workers.masks import Box, mask_to_box
from workers.vision.batching import track_batched
from workers.vision.encoder import encode_image
from workers.vision.inputs import BoxLike, Point, Prompt, check_frame, video_frame_tensor
from workers.vision.memory import FrameOutput, MemoryBank
from workers.vision.precision import Precision, compute_mode, model_precision, resolve_precision
from workers.vision.proposals import Proposal, ProposalGrid, features_from_backbone, propose_regions

# Frame indices and the length SAM2 is told the "video" has. A stream has no length; any value
# >= max_obj_ptrs_in_encoder gives the same pointer encoding as a long video. Reverse tracking
# counts down from _REVERSE_ORIGIN, since sam2 stops reading pointers at negative indices.
_STREAM_LENGTH = 2**40
_REVERSE_ORIGIN = 2**39


class SharedFrames(Protocol):
    """Frame encodings several trackers share (streamer/clip/encodings.py's SharedEncodings)."""

    def get(self, key: int, encode: Callable[[], Any]) -> Any: ...


@dataclass(frozen=True)
class ObjectState:
    """One object on one frame."""

    mask: np.ndarray  # H x W bool, the frame's own size
    score: float  # SAM2's object score as a probability (sigmoid of its logit)
    present: bool  # SAM2's object score says the object is visible (logit > 0)
    box: Box | None  # tight (x0, y0, x1, y1) box of the mask, None when empty
    low_res_logits: np.ndarray = field(repr=False)  # (image_size/4)^2 mask logits, diagnostics


@dataclass(frozen=True)
class StepResult:
    """What step() returns: the frame's index in feeding order and every object's state."""

    frame_index: int
    objects: dict[int, ObjectState]


@dataclass
class _Track:
    """Per-object tracking state."""

    bank: MemoryBank
    first_idx: int  # internal index of the frame it was added on
    state: ObjectState
    newest_out: FrameOutput  # its output on the newest frame (logits fed back with new clicks)
    point_inputs: dict[str, torch.Tensor] | None = None  # clicks on the newest frame
    pending: tuple[FrameOutput, bool] | None = None  # click output awaiting memory, is_cond


class StreamTracker:
    """Tracks clicked objects frame by frame on a shared SAM2 model, with bounded memory.

    Call step(frame) for each new frame (H x W x 3 uint8 RGB, any size); click with
    add_object/refine on the newest stepped frame (decoder only: its image features stay cached).
    Objects are independent: each has its own memory bank, so adding, refining or removing one
    never changes another's masks. The image encoder runs once per frame for all objects, and
    objects whose memories have the same shape share one batched memory-attention pass.

    reverse=True means frames are fed in reverse time order (SAM2's track_in_reverse), e.g. to
    track backward from a clicked frame of a clip. max_cond_frames caps the clicked frames kept
    per object (the most recent 16 by default). corrections_as_cond=True (the default) makes a
    click on a frame the object was already tracked on a conditioning frame (SAM2's
    add_all_frames_to_correct_as_cond), so a correction keeps steering the object until the cap;
    False lets it age out after num_maskmem frames, as the official predictor's default does; None
    follows the model's setting. precision (auto | fp32 | bf16) sets what the step computes in
    (precision.py); None follows the precision the model was loaded with.

    Not thread-safe: the service calls every method of one tracker from one worker thread.
    Several trackers may share one model; no tracker state lives on the model.
    """

    def __init__(
        self,
        model: Any,
        reverse: bool = False,
        max_cond_frames: int = 16,
        corrections_as_cond: bool | None = True,
        batch_objects: bool = True,
        precision: str | None = None,
    ) -> None:
        if max_cond_frames < 1:
            raise ValueError(f"max_cond_frames must be at least 1, got {max_cond_frames}")
        self.model = model
        self.reverse = reverse
        self.max_cond_frames = max_cond_frames
        self.corrections_as_cond = (
            bool(model.add_all_frames_to_correct_as_cond)
            if corrections_as_cond is None
            else corrections_as_cond
        )
        # Batching across objects would change non_overlap_masks_for_mem_enc, which mixes masks
        # along the batch; the official predictor runs each object alone, so follow it then.
        self.batch_objects = batch_objects and not model.non_overlap_masks_for_mem_enc
        self.last_step_ms: float = 0.0
        self.frame_size: tuple[int, int] | None = None  # (width, height) of the newest frame
        self._device = model.device
        self.precision: Precision = (
            model_precision(model)
            if precision is None
            else resolve_precision(precision, self._device)
        )
        # The one-frame "inference state" sam2's predictor methods read: only the newest frame's
        # features are ever cached, and the video length is that of an endless stream.
        self._session: dict[str, Any] = {
            "cached_features": {},
            "num_frames": _STREAM_LENGTH,
            "device": self._device,
            "storage_device": self._device,
            "constants": {},
        }
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._steps = 0  # frames stepped so far
        self._newest_idx: int | None = None  # sam2 frame index of the newest frame

    # -- public surface -----------------------------------------------------------------------

    @property
    def frame_index(self) -> int | None:
        """Index (in feeding order) of the newest stepped frame, None before the first."""
        return None if self._newest_idx is None else self._steps - 1

    @property
    def objects(self) -> dict[int, ObjectState]:
        """Every object's state on the newest frame, clicks included (no new step)."""
        return {obj_id: track.state for obj_id, track in self._tracks.items()}

    def step(
        self, frame: np.ndarray, shared: SharedFrames | None = None, key: int = 0
    ) -> StepResult:
        """Encode a new frame once and track every object onto it.

        shared: encodings that trackers stepping the same frames take from each other (a
        clip's jobs: streamer/clip/encodings.py), `key` naming this frame there. They must come
        from this model at this precision; they are only read.
        """
        size = check_frame(frame)
        start = time.perf_counter()
        with self._torch_mode():
            self._encode_pending_memories()
            idx = self._next_frame_idx()

            def encode() -> tuple[torch.Tensor, dict[str, Any]]:
                image = video_frame_tensor(frame, self.model.image_size, self._device)
                return image, encode_image(self.model, image)

            image, backbone_out = encode() if shared is None else shared.get(key, encode)
            self._session["cached_features"] = {idx: (image, backbone_out)}
            self._newest_idx = idx
            self._steps += 1
            self.frame_size = size
            if self._tracks:
                self._track_all(idx)
        self.last_step_ms = (time.perf_counter() - start) * 1000.0
        return StepResult(frame_index=self._steps - 1, objects=self.objects)

    def newest_features(self) -> dict[str, Any]:
        """The newest stepped frame's backbone output (find-all decodes its proposals on it)."""
        if self._newest_idx is None:
            raise ValueError("no frame yet: call step(frame) first")
        return self._session["cached_features"][self._newest_idx][1]

    def propose(self, frame: np.ndarray, grid: ProposalGrid) -> list[Proposal]:
        """Find-all's regions on the newest stepped frame (`frame`, as given to step), decoded
        on its cached features: no second encode (proposals.propose_regions)."""
        with self._torch_mode():
            features = features_from_backbone(self.model, self.newest_features())
            return propose_regions(self.model, frame, features, grid)

    def add_object(
        self,
        points: Sequence[Point] | None = None,
        labels: Sequence[int] | None = None,
        box: BoxLike | None = None,
        obj_id: int | None = None,
    ) -> int:
        """Start tracking a new object from clicks and/or a box on the newest frame; its id."""
        frame_size = self._require_frame("add_object")
        prompt = Prompt.build(points, labels, box, frame_size)
        if obj_id is None:
            obj_id = self._next_id
        elif not isinstance(obj_id, int) or isinstance(obj_id, bool) or obj_id < 0:
            raise ValueError(f"obj_id must be a non-negative int, got {obj_id!r}")
        elif obj_id in self._tracks:
            raise ValueError(f"object id {obj_id} is already tracked; remove it first")
        self._next_id = max(self._next_id, obj_id + 1)
        assert self._newest_idx is not None
        with self._torch_mode():
            point_inputs = self._point_inputs(prompt, previous=None)
            track = _Track(
                bank=MemoryBank(self.model, self.max_cond_frames),
                first_idx=self._newest_idx,
                state=None,  # type: ignore[arg-type]  # set by _click below
                newest_out={},
            )
            # a new object's first frame is an initial conditioning frame: SAM on this frame's
            # features, no memory, as add_new_points_or_box does on an untracked frame
            self._click(track, point_inputs, is_init_cond_frame=True, prev_logits=None)
        self._tracks[obj_id] = track
        return obj_id

    def refine(
        self,
        obj_id: int,
        points: Sequence[Point] | None = None,
        labels: Sequence[int] | None = None,
        box: BoxLike | None = None,
    ) -> ObjectState:
        """Add clicks (label 0 = not this) for an object on the newest frame; its new state.

        Clicks add to the ones already given on this frame; a box replaces them (SAM2 takes a
        box only as the first prompt).
        """
        frame_size = self._require_frame("refine")
        track = self._track(obj_id)
        prompt = Prompt.build(points, labels, box, frame_size)
        with self._torch_mode():
            previous = None if prompt.has_box else track.point_inputs
            point_inputs = self._point_inputs(prompt, previous=previous)
            prev_logits = track.newest_out["pred_masks"]
            # Clamp as the official predictor does, to avoid rare numerical issues.
            prev_logits = torch.clamp(prev_logits.to(self._device), -32.0, 32.0)
            is_init = track.first_idx == self._newest_idx  # not tracked onto this frame yet
            self._click(track, point_inputs, is_init_cond_frame=is_init, prev_logits=prev_logits)
        return track.state

    def remove(self, obj_id: int) -> None:
        """Stop tracking an object and drop its memory."""
        self._track(obj_id)
        del self._tracks[obj_id]

    def memory_sizes(self) -> dict[int, tuple[int, int]]:
        """Per object: (conditioning frames, other frames) in its memory bank."""
        return {obj_id: track.bank.sizes() for obj_id, track in self._tracks.items()}

    # -- internals ----------------------------------------------------------------------------

    def _torch_mode(self) -> contextlib.AbstractContextManager[None]:
        return compute_mode(self._device, self.precision)

    def _require_frame(self, what: str) -> tuple[int, int]:
        if self.frame_size is None or self._newest_idx is None:
            raise ValueError(f"{what} needs a frame: call step(frame) first")
        return self.frame_size

    def _track(self, obj_id: int) -> _Track:
        track = self._tracks.get(obj_id)
        if track is None:
            known = ", ".join(str(i) for i in self._tracks) or "none"
            raise ValueError(f"unknown object id {obj_id!r} (tracked ids: {known})")
        return track

    def _next_frame_idx(self) -> int:
        if self._newest_idx is None:
            return _REVERSE_ORIGIN if self.reverse else 0
        return self._newest_idx - 1 if self.reverse else self._newest_idx + 1

    def _point_inputs(
        self, prompt: Prompt, previous: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        from sam2.utils.misc import concat_points

        assert self.frame_size is not None
        coords, labels = prompt.model_inputs(self.frame_size, self.model.image_size, self._device)
        return concat_points(previous, coords, labels)

    def _click(
        self,
        track: _Track,
        point_inputs: dict[str, torch.Tensor],
        is_init_cond_frame: bool,
        prev_logits: torch.Tensor | None,
    ) -> None:
        """Decoder pass on the cached newest frame, as add_new_points_or_box runs it."""
        idx = self._newest_idx
        out, pred_masks = self.model._run_single_frame_inference(
            inference_state=self._session,
            output_dict=track.bank.output_dict(),
            frame_idx=idx,
            batch_size=1,
            is_init_cond_frame=is_init_cond_frame,
            point_inputs=point_inputs,
            mask_inputs=None,
            reverse=False if is_init_cond_frame else self.reverse,
            # the memory is encoded when the next frame arrives (as propagate_in_video_preflight
            # does), so several clicks on one frame cost one memory encoding
            run_mem_encoder=False,
            prev_sam_mask_logits=prev_logits,
        )
        is_cond = is_init_cond_frame or self.corrections_as_cond
        track.point_inputs = point_inputs
        track.pending = (out, is_cond)
        track.newest_out = out
        track.state = self._states([pred_masks], [out["object_score_logits"]])[0]

    def _encode_pending_memories(self) -> None:
        """Encode clicked outputs into memory on their still-cached frame, as the preflight does."""
        idx = self._newest_idx
        for track in self._tracks.values():
            if track.pending is None:
                continue
            out, is_cond = track.pending
            high_res_masks = F.interpolate(
                out["pred_masks"].to(self._device),
                size=(self.model.image_size, self.model.image_size),
                mode="bilinear",
                align_corners=False,
            )
            out["maskmem_features"], out["maskmem_pos_enc"] = self.model._run_memory_encoder(
                inference_state=self._session,
                frame_idx=idx,
                batch_size=1,
                high_res_masks=high_res_masks,
                object_score_logits=out["object_score_logits"],
                is_mask_from_pts=True,  # these frames are what the user clicked on
            )
            track.bank.add(idx, out, is_cond)
            track.pending = None

    def _track_all(self, idx: int) -> None:
        """Track every object onto the newest frame (its features are cached)."""
        ids = list(self._tracks)
        banks = [self._tracks[i].bank for i in ids]
        outs, masks = track_batched(
            self.model, self._session, idx, banks, self.reverse, batch=self.batch_objects
        )
        states = self._states(masks, [out["object_score_logits"] for out in outs])
        for obj_id, out, state in zip(ids, outs, states, strict=True):
            track = self._tracks[obj_id]
            track.bank.add(idx, out, is_cond=False)
            track.bank.prune(idx)
            track.newest_out = out
            track.point_inputs = None
            track.state = state

    def _states(
        self, pred_masks: list[torch.Tensor], score_logits: list[torch.Tensor]
    ) -> list[ObjectState]:
        """Masks at the frame's own size, as _get_orig_video_res_output makes them."""
        assert self.frame_size is not None
        width, height = self.frame_size
        low_res = torch.cat(pred_masks, dim=0)
        video_res = F.interpolate(
            low_res.to(self._device).float(),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )
        if self.model.non_overlap_masks:
            video_res = self.model._apply_non_overlapping_constraints(video_res)
        masks = (video_res[:, 0] > 0.0).cpu().numpy()
        logits = low_res[:, 0].float().cpu().numpy()
        scores = torch.cat(score_logits, dim=0).float().reshape(-1).cpu()
        states = []
        for i in range(len(pred_masks)):
            logit = float(scores[i])
            states.append(
                ObjectState(
                    mask=masks[i],
                    score=float(torch.sigmoid(scores[i])),
                    present=logit > 0.0,
                    box=mask_to_box(masks[i]),
                    low_res_logits=logits[i],
                )
            )
        return states
