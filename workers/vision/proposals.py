"""Region proposals for find-all: SAM2's own automatic mask generator, on features already computed.

sam2's SAM2AutomaticMaskGenerator encodes the image itself (predictor.set_image) and then decodes
a grid of single-point prompts. Every mode here has the frame's features already (the image
segmenter's cached embedding, the live tracker's newest frame), so the generator is handed a
predictor whose features are set from those: the grid's decoder passes, its filters (predicted
IoU, stability, box NMS) and its mask records are sam2's, the encode is not repeated.

The grid is small (ProposalGrid.points_per_side, 4 x 4 by default) and only the best
`max_proposals` masks are kept (by predicted IoU times stability), since every one of them becomes
a VLM request's region.

The generator's masks are made at a working size (longest side `work_side`, 256 by default), not
the frame's: sam2 run-length encodes and copies every grid mask at the size it is given, which at
720p cost over a minute per frame on a CPU (most of it in MaskData.cat's deepcopy of the RLEs).
The decoder's own masks are 256 x 256 anyway; the kept proposals are scaled up to the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Proposal:
    """One region the generator proposes: its mask, box (x0, y0, x1, y1 frame pixels, x1/y1
    exclusive), SAM2's predicted IoU and the mask's stability score."""

    mask: np.ndarray
    box: tuple[float, float, float, float]
    predicted_iou: float
    stability: float

    @property
    def quality(self) -> float:
        return self.predicted_iou * self.stability


@dataclass(frozen=True)
class ProposalGrid:
    """Which proposals the generator makes and keeps: a points_per_side x points_per_side grid of
    single-point prompts, masks with SAM2's predicted IoU at least `min_iou` and stability at
    least `min_stability` (sam2's pred_iou_thresh and stability_score_thresh), the best
    `max_proposals` of them. Find-all's are the service's --find-all-* settings."""

    points_per_side: int = 4
    max_proposals: int = 12
    min_iou: float = 0.7
    min_stability: float = 0.85

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.max_proposals < 1:
            raise ValueError(
                f"points_per_side and max_proposals must be at least 1, got "
                f"{self.points_per_side} and {self.max_proposals}"
            )


def features_from_backbone(model: Any, backbone_out: dict[str, Any]) -> dict[str, Any]:
    """SAM2ImagePredictor's `_features` from a backbone output (encode_image / forward_image),
    as its set_image computes them after the encode; the feature sizes follow model.image_size."""
    _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats = [*vision_feats[:-1], vision_feats[-1] + model.no_mem_embed]
    side = model.image_size
    sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
    feats = [
        feat.permute(1, 2, 0).reshape(1, -1, *size)
        for feat, size in zip(vision_feats[::-1], sizes[::-1], strict=True)
    ][::-1]
    return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}


class _CachedPredictor:
    """A SAM2ImagePredictor whose set_image keeps the features it was given instead of encoding.

    The generator calls set_image(crop) and reset_predictor() around its grid; with one crop (the
    whole frame) the crop is the frame the features were computed on."""

    def __init__(self, predictor: Any, features: dict[str, Any], frame_hw: tuple[int, int]):
        self._predictor = predictor
        self._features = features
        self._frame_hw = frame_hw

    def set_image(self, image: np.ndarray) -> None:
        if tuple(image.shape[:2]) != self._frame_hw:
            raise ValueError(
                f"the cached features are of a {self._frame_hw} frame, not {image.shape[:2]}"
            )
        p = self._predictor
        p._orig_hw = [self._frame_hw]
        p._features = self._features
        p._is_image_set = True

    def reset_predictor(self) -> None:
        self._predictor.reset_predictor()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)


def propose_regions(
    model: Any,
    frame: np.ndarray,
    features: dict[str, Any],
    grid: ProposalGrid,
    *,
    points_per_batch: int = 64,
    work_side: int = 256,
) -> list[Proposal]:
    """The grid's best regions of the frame (H x W x 3), best first, decoded on `features`
    (features_from_backbone, or an image predictor's own `_features`). Vision thread only, in
    the caller's compute mode."""
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    gen = SAM2AutomaticMaskGenerator(
        model,
        points_per_side=grid.points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=grid.min_iou,
        stability_score_thresh=grid.min_stability,
        output_mode="binary_mask",
    )
    side = model.image_size  # sam2's predictor hard-codes the 1024-input sizes
    gen.predictor._bb_feat_sizes = [(side // 4, side // 4), (side // 8, side // 8)]
    fh, fw = frame.shape[:2]
    k = min(1.0, work_side / max(fh, fw))
    wh, ww = max(1, round(fh * k)), max(1, round(fw * k))
    gen.predictor = _CachedPredictor(gen.predictor, features, (wh, ww))  # type: ignore[assignment]
    # The generator reads only the image's shape (it crops it and hands the crop to set_image).
    canvas = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (wh, ww, 3))
    with torch.inference_mode():  # the caller sets the precision (its segmenter's or tracker's)
        records = gen.generate(canvas)
    records = [r for r in records if r["bbox"][2] > 0 and r["bbox"][3] > 0]
    records.sort(key=lambda r: r["predicted_iou"] * r["stability_score"], reverse=True)
    rows = np.minimum(np.arange(fh) * wh // fh, wh - 1)
    cols = np.minimum(np.arange(fw) * ww // fw, ww - 1)
    sx, sy = fw / ww, fh / wh
    out = []
    for r in records[: grid.max_proposals]:
        mask = np.asarray(r["segmentation"], dtype=bool)[rows][:, cols]
        x, y, w, h = (float(v) for v in r["bbox"])
        box = (x * sx, y * sy, min(fw, (x + w + 1.0) * sx), min(fh, (y + h + 1.0) * sy))
        out.append(Proposal(mask, box, float(r["predicted_iou"]), float(r["stability_score"])))
    return out
