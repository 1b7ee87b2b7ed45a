"""ImageSegmenter: single-image SAM2 with the image encoded once and every click decoder-only.

A thin layer over sam2's own SAM2ImagePredictor (same transforms, same decoder call), so results
equal the official predictor's; it adds prompt checking, the best-of-multimask choice and a
feature-map layout that follows the model's image size instead of assuming 1024.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from workers.vision.batching import ModelView
from workers.vision.encoder import encode_image
from workers.vision.inputs import (
    BoxLike,
    Point,
    Prompt,
    check_frame,
    resizes_on_device,
    uint8_on_device,
)
from workers.vision.precision import Precision, compute_mode, model_precision, resolve_precision
from workers.vision.proposals import Proposal, ProposalGrid, propose_regions

# SAM2ImagePredictor's constructor scripts its transforms (torch.jit.script), which keeps
# process-wide state that two threads scripting at once corrupt (KeyError in torch's
# _clear_fn_overloads: a Clip describe on the vision thread beside an auto-refine on the loop).
_SCRIPTING = threading.Lock()


class ImageSegmenter:
    """Segments objects in one image at a time: set_image encodes, segment decodes a prompt.

    Not thread-safe: call it from one worker thread. Several segmenters (and trackers) may share
    one loaded model; the cached embedding lives here, not on the model. precision (auto | fp32
    | bf16, precision.py) sets what the encode and the decoder compute in; None follows the
    precision the model was loaded with. on_device: the image goes to the model's device as
    uint8 and sam2's resize and normalisation run there (default: as video frames,
    inputs.resizes_on_device), the same operations as on the CPU.
    """

    def __init__(
        self, model: Any, precision: str | None = None, *, on_device: bool | None = None
    ) -> None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.model = model
        self.precision: Precision = (
            model_precision(model)
            if precision is None
            else resolve_precision(precision, model.device)
        )
        # sam2's predictor, encoding through encode_image (same features, less padded work)
        self._decoder = _ObjectScoreTap(model.sam_mask_decoder)
        with _SCRIPTING:
            self._predictor = SAM2ImagePredictor(
                ModelView(
                    model,
                    forward_image=functools.partial(encode_image, model),
                    sam_mask_decoder=self._decoder,
                )
            )
        # SAM2ImagePredictor hard-codes the 1024-input feature sizes (256, 128, 64)
        side = model.image_size
        self._predictor._bb_feat_sizes = [
            (side // 4, side // 4),
            (side // 8, side // 8),
            (side // 16, side // 16),
        ]
        # the decoder's candidates stay low-res; segment() upsamples only the one it returns
        self._upsample = self._predictor._transforms.postprocess_masks
        self._predictor._transforms = _SegmenterTransforms(
            self._predictor._transforms, model.device, on_device
        )
        self.image_size: tuple[int, int] | None = None  # (width, height) of the set image
        self.last_low_res_logits: np.ndarray | None = None  # logits of the last returned mask
        # SAM2's object score for the last prompt, as a probability (the tracker's `score`)
        self.last_object_score: float | None = None

    def _torch_mode(self) -> contextlib.AbstractContextManager[None]:
        return compute_mode(self.model.device, self.precision)

    def set_image(self, image: np.ndarray) -> None:
        """Encode an H x W x 3 uint8 RGB image once; later segment() calls reuse it."""
        size = check_frame(image)
        with self._torch_mode():
            self._predictor.set_image(image)
        self.image_size = size

    def segment(
        self,
        points: Sequence[Point] | None = None,
        labels: Sequence[int] | None = None,
        box: BoxLike | None = None,
    ) -> tuple[np.ndarray, float]:
        """(H x W bool mask, predicted IoU) for clicks and/or a box, in the image's pixels."""
        if self.image_size is None:
            raise ValueError("segment needs an image: call set_image(image) first")
        prompt = Prompt.build(points, labels, box, self.image_size)
        n_box = 2 if prompt.has_box else 0
        # As SAM2Base._use_multimask: several candidates only for an ambiguous prompt (one
        # click; a box counts as two points), then the one with the best predicted IoU.
        num_pts = len(prompt.labels)
        multimask = bool(
            self.model.multimask_output_in_sam
            and self.model.multimask_min_pt_num <= num_pts <= self.model.multimask_max_pt_num
        )
        clicks = prompt.points[n_box:]
        with self._torch_mode():
            candidates, scores, low_res = self._predictor.predict(
                point_coords=clicks if len(clicks) else None,
                point_labels=prompt.labels[n_box:] if len(clicks) else None,
                box=prompt.points[:2].reshape(4) if prompt.has_box else None,
                multimask_output=multimask,
                return_logits=True,  # thresholded below, after upsampling
            )
            best = int(np.argmax(scores))
            width, height = self.image_size
            logits = torch.from_numpy(np.ascontiguousarray(candidates[best]))[None, None]
            full = self._upsample(logits.to(self.model.device), (height, width))
            mask = (full[0, 0] > self._predictor.mask_threshold).cpu().numpy()
        self.last_low_res_logits = low_res[best]
        self.last_object_score = self._decoder.last_probability()
        return mask, float(scores[best])

    def propose(self, image: np.ndarray, grid: ProposalGrid) -> list[Proposal]:
        """Find-all's regions on the set image (proposals.propose_regions), decoded on its
        cached embedding: no second encode. `image` is the one given to set_image."""
        if self.image_size is None or self._predictor._features is None:
            raise ValueError("propose needs an image: call set_image(image) first")
        with self._torch_mode():
            return propose_regions(self.model, image, self._predictor._features, grid)


class _ObjectScoreTap:
    """The mask decoder, keeping the object-score logit SAM2ImagePredictor discards."""

    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder
        self._logit: torch.Tensor | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._decoder(*args, **kwargs)
        self._logit = out[3]  # (masks, iou predictions, sam tokens, object score logits)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoder, name)

    def last_probability(self) -> float | None:
        if self._logit is None:
            return None
        return float(torch.sigmoid(self._logit.float().reshape(-1)[0]))


class _SegmenterTransforms:
    """SAM2Transforms with postprocess_masks (the upsampling to the image) left out, and the
    image's resize run on the model's device where video frames are resized there.

    SAM2ImagePredictor upsamples every candidate mask; segment() keeps one, so it upsamples that
    one alone, with the same transform: the same mask, a third of the work for a single click.
    sam2 makes a float copy of the whole image and resizes it on the CPU, then sends it up; on a
    GPU the uint8 image goes up instead and ToTensor's steps (CHW, float, / 255) and the same
    Resize and Normalize run there.
    """

    def __init__(self, transforms: Any, device: torch.device, on_device: bool | None) -> None:
        self._transforms = transforms
        self._device = device
        self._on_device = resizes_on_device(device) if on_device is None else on_device

    def __call__(self, image: np.ndarray) -> torch.Tensor:  # set_image checked it (check_frame)
        if not self._on_device:
            return self._transforms(image)
        x = uint8_on_device(image, self._device).permute(2, 0, 1).contiguous()
        return self._transforms.transforms(x.float().div(255))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transforms, name)

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: Any) -> torch.Tensor:
        return masks
