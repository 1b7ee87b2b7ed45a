"""Reference runs of sam2's official predictors and synthetic clips, for equivalence and benchmarks.

The official SAM2VideoPredictor reads a folder of JPEG frames; clips are written there and read
back, so both predictors see the very same decoded pixels.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def synthetic_clip(
    num_frames: int, height: int = 96, width: int = 128, seed: int = 0
) -> list[np.ndarray]:
    """Moving shapes (a disc, a square, a bar) on a textured background: H x W x 3 uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = rng.integers(40, 90, size=(height, width, 3), dtype=np.uint8)
    frames = []
    for t in range(num_frames):
        frame = background.copy()
        phase = 2 * np.pi * t / max(num_frames, 1)
        cx = width * (0.3 + 0.15 * np.sin(phase))
        cy = height * (0.35 + 0.1 * np.cos(phase))
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.14 * min(height, width)) ** 2
        frame[disc] = (220, 60, 50)
        sx = int(width * (0.6 + 0.1 * np.cos(phase)))
        sy = int(height * (0.55 + 0.1 * np.sin(phase)))
        side = int(0.22 * min(height, width))
        frame[sy : sy + side, sx : sx + side] = (40, 200, 70)
        bx = int(width * 0.1 + (t * 1.5) % (width * 0.5))
        frame[int(height * 0.8) : int(height * 0.9), bx : bx + width // 5] = (60, 80, 230)
        frames.append(frame)
    return frames


def write_jpeg_folder(
    frames: Sequence[np.ndarray], folder: str | os.PathLike[str]
) -> list[np.ndarray]:
    """Write frames as <index>.jpg (what init_state reads); the decoded frames, to feed ours."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    decoded = []
    for i, frame in enumerate(frames):
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(frame).save(path, quality=95)
        decoded.append(np.array(Image.open(path).convert("RGB")))
    return decoded


def copy_jpeg_range(src: str | os.PathLike[str], dst: str | os.PathLike[str], start: int) -> None:
    """Renumber frames start.. of a JPEG folder into dst from 0, byte for byte (no re-encoding)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(src).glob("*.jpg")):
        index = int(path.stem)
        if index >= start:
            shutil.copyfile(path, dst / f"{index - start:05d}.jpg")


@dataclass(frozen=True)
class Click:
    """One object's prompt on its first frame, in frame pixels."""

    obj_id: int
    points: list[tuple[float, float]] | None = None
    labels: list[int] | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass
class ReferenceFrame:
    """Official outputs on one frame, per object id."""

    masks: dict[int, np.ndarray]  # H x W bool
    logits: dict[int, np.ndarray]  # low-res (image_size / 4) mask logits after hole filling


@torch.inference_mode()
def official_video(
    model: Any,
    jpeg_folder: str | os.PathLike[str],
    clicks: Sequence[Click],
    reverse: bool = False,
    start_frame: int = 0,
    max_frames: int | None = None,
) -> dict[int, ReferenceFrame]:
    """init_state + add_new_points_or_box on start_frame + propagate_in_video, by frame index."""
    state = model.init_state(str(jpeg_folder))
    for click in clicks:
        model.add_new_points_or_box(
            state,
            frame_idx=start_frame,
            obj_id=click.obj_id,
            points=np.asarray(click.points, dtype=np.float32) if click.points else None,
            labels=np.asarray(click.labels, dtype=np.int32) if click.points else None,
            box=np.asarray(click.box, dtype=np.float32) if click.box is not None else None,
        )
    results: dict[int, ReferenceFrame] = {}
    for frame_idx, obj_ids, video_res_masks in model.propagate_in_video(
        state, start_frame_idx=start_frame, max_frame_num_to_track=max_frames, reverse=reverse
    ):
        masks = (video_res_masks[:, 0] > 0.0).cpu().numpy()
        logits = {}
        for obj_id in obj_ids:
            per_obj = state["output_dict_per_obj"][state["obj_id_to_idx"][obj_id]]
            out = per_obj["cond_frame_outputs"].get(frame_idx) or per_obj[
                "non_cond_frame_outputs"
            ].get(frame_idx)
            logits[obj_id] = out["pred_masks"][0, 0].float().cpu().numpy()
        results[frame_idx] = ReferenceFrame(
            masks={obj_id: masks[i] for i, obj_id in enumerate(obj_ids)}, logits=logits
        )
    return results


def photo_clip(
    photo: np.ndarray, num_frames: int, height: int = 96, width: int = 128
) -> list[np.ndarray]:
    """A camera pan over a photograph: a window of 80% of its size sliding corner to corner,
    resized to height x width (H x W x 3 uint8 RGB). Real image statistics, known motion."""
    photo = np.asarray(photo)
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    ph, pw = photo.shape[:2]
    ch, cw = int(ph * 0.8), int(pw * 0.8)
    frames = []
    for t in range(num_frames):
        s = t / max(num_frames - 1, 1)
        y, x = round(s * (ph - ch)), round(s * (pw - cw))
        crop = Image.fromarray(np.ascontiguousarray(photo[y : y + ch, x : x + cw, :3]))
        frames.append(np.asarray(crop.resize((width, height), Image.BILINEAR)))
    return frames


@dataclass
class Agreement:
    """Per frame and object: mask IoU and largest low-res logit difference of two trackers."""

    ious: list[float]  # one per frame and object
    logit_errors: list[float]
    frame_fractions: list[float]  # the reference mask's share of the frame (0 or 1: trivial)


def tracker_agreement(
    reference: Any, other: Any, frames: Sequence[np.ndarray], clicks: Sequence[Click]
) -> Agreement:
    """Feed the same frames and clicks (all on the first frame) to two StreamTrackers."""
    from workers.masks import mask_iou

    result = Agreement([], [], [])
    for i, frame in enumerate(frames):
        states = []
        for tracker in (reference, other):
            tracker.step(frame)
            if i == 0:
                for click in clicks:
                    tracker.add_object(
                        points=click.points, labels=click.labels, box=click.box, obj_id=click.obj_id
                    )
            states.append(tracker.objects)
        for obj_id, ref in states[0].items():
            got = states[1][obj_id]
            result.ious.append(mask_iou(ref.mask, got.mask))
            result.logit_errors.append(float(np.abs(ref.low_res_logits - got.low_res_logits).max()))
            result.frame_fractions.append(float(ref.mask.mean()))
    return result
