"""StreamTracker and ImageSegmenter against sam2's official predictors on the same random weights.

Random weights give meaningless masks, so besides mask IoU every frame's low-res logits are
compared numerically, and every reference mask must be neither empty nor full.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import one_thread_sam2
from tests.sam2_reference import (
    Click,
    ReferenceFrame,
    copy_jpeg_range,
    official_video,
    synthetic_clip,
    write_jpeg_folder,
)
from workers.masks import mask_iou
from workers.vision import ImageSegmenter, StreamTracker

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

IMAGE_SIZE = 128  # SAM2 needs a multiple of 32; small keeps the suite within minutes on 2 cores
NUM_FRAMES = 60
LATE_FRAME = 20  # object C is added here
# Prompts on the synthetic clip: the disc, the square, and a box around the moving bar.
A = Click(1, points=[(38.0, 34.0)], labels=[1])
B = Click(2, points=[(85.0, 60.0)], labels=[1])
C = Click(3, box=(20.0, 74.0, 70.0, 90.0))
MIN_IOU = 0.99
MAX_LOGIT_DIFF = 1e-3  # cached keys and batched attention reorder float sums


@pytest.fixture(scope="module")
def model() -> Iterator[object]:
    yield from one_thread_sam2(IMAGE_SIZE)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("clip")
    return folder, write_jpeg_folder(synthetic_clip(NUM_FRAMES), folder)


@pytest.fixture(scope="module")
def official_ab(model: object, clip: tuple[Path, list[np.ndarray]]) -> dict[int, ReferenceFrame]:
    return official_video(model, clip[0], [A, B])


@pytest.fixture(scope="module")
def ours_abc(model: object, clip: tuple[Path, list[np.ndarray]]) -> list[dict]:
    """Ours, A and B clicked on frame 0, C on LATE_FRAME (batched with them once shapes match)."""
    tracker = StreamTracker(model)
    per_frame = []
    for i, frame in enumerate(clip[1]):
        tracker.step(frame)
        for click in (A, B) if i == 0 else (C,) if i == LATE_FRAME else ():
            tracker.add_object(click.points, click.labels, click.box, obj_id=click.obj_id)
        per_frame.append(tracker.objects)
    return per_frame


def assert_matches(ours: dict, ref: ReferenceFrame, obj_id: int, where: str) -> None:
    theirs = ref.masks[obj_id]
    assert 0 < theirs.sum() < theirs.size, f"{where}: reference mask is trivial, test is void"
    iou = mask_iou(ours[obj_id].mask, theirs)
    diff = float(np.abs(ours[obj_id].low_res_logits - ref.logits[obj_id]).max())
    assert iou >= MIN_IOU, f"{where}: mask IoU {iou:.4f}"
    assert diff <= MAX_LOGIT_DIFF, f"{where}: logits differ by {diff:.2e}"


def test_one_object_matches_official(model: object, clip: tuple, official_ab: dict) -> None:
    # the official predictor runs objects one by one, so A's reference is the same without B
    assert not model.non_overlap_masks
    tracker = StreamTracker(model)
    for i, frame in enumerate(clip[1]):
        tracker.step(frame)
        if i == 0:
            tracker.add_object(A.points, A.labels, obj_id=A.obj_id)
        assert_matches(tracker.objects, official_ab[i], A.obj_id, f"frame {i}")


def test_several_objects_match_official(ours_abc: list, official_ab: dict) -> None:
    for i, objects in enumerate(ours_abc):
        for click in (A, B):
            assert_matches(
                objects, official_ab[i], click.obj_id, f"frame {i} object {click.obj_id}"
            )


def test_object_added_later_matches_official_from_its_frame(
    model: object, clip: tuple, ours_abc: list, tmp_path: Path
) -> None:
    # the official reference: the clip from LATE_FRAME on, clicked on its first frame
    copy_jpeg_range(clip[0], tmp_path, start=LATE_FRAME)
    ref = official_video(model, tmp_path, [C])
    for i in range(LATE_FRAME, NUM_FRAMES):
        assert_matches(ours_abc[i], ref[i - LATE_FRAME], C.obj_id, f"frame {i}")


def test_refine_on_the_click_frame_matches_official(model: object, clip: tuple) -> None:
    frames = 15
    negative = (30.0, 20.0)
    state = model.init_state(str(clip[0]))
    model.add_new_points_or_box(state, 0, 1, points=np.array(A.points), labels=np.array([1]))
    # official clicks replace the frame's points: send both, as a client re-sending all clicks
    model.add_new_points_or_box(
        state, 0, 1, points=np.array([*A.points, negative]), labels=np.array([1, 0])
    )
    tracker = StreamTracker(model)
    for frame_idx, _, video_masks in model.propagate_in_video(state, max_frame_num_to_track=frames):
        tracker.step(clip[1][frame_idx])
        if frame_idx == 0:
            obj = tracker.add_object(A.points, A.labels)
            tracker.refine(obj, points=[negative], labels=[0])
        out = state["output_dict_per_obj"][0]
        stored = (
            out["cond_frame_outputs"].get(frame_idx) or out["non_cond_frame_outputs"][frame_idx]
        )
        ref = ReferenceFrame(
            masks={1: (video_masks[0, 0] > 0).numpy()},
            logits={1: stored["pred_masks"][0, 0].numpy()},
        )
        assert_matches(tracker.objects, ref, obj, f"frame {frame_idx}")


def test_correction_mid_stream_matches_official(
    model: object, clip: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A background click on frame 10 after tracking there. Our default makes it a conditioning
    # frame, which is the official predictor with add_all_frames_to_correct_as_cond=True (with
    # False, its next propagation would recompute frame 10 without the click).
    monkeypatch.setattr(model, "add_all_frames_to_correct_as_cond", True)
    corrected, last, negative = 10, 25, (50.0, 45.0)
    state = model.init_state(str(clip[0]))
    model.add_new_points_or_box(state, 0, 1, points=np.array(A.points), labels=np.array([1]))
    refs: dict[int, ReferenceFrame] = {}

    def record(run: Iterator) -> None:
        for frame_idx, _, video_masks in run:
            out = state["output_dict_per_obj"][0]
            stored = out["cond_frame_outputs"].get(frame_idx)
            stored = stored or out["non_cond_frame_outputs"][frame_idx]
            refs[frame_idx] = ReferenceFrame(
                masks={1: (video_masks[0, 0] > 0).numpy()},
                logits={1: stored["pred_masks"][0, 0].numpy()},
            )

    record(model.propagate_in_video(state, max_frame_num_to_track=corrected))  # frames 0..10
    model.add_new_points_or_box(state, corrected, 1, points=np.array([negative]), labels=[0])
    # frame 10 again (now the corrected, conditioning output), then on
    record(
        model.propagate_in_video(
            state, start_frame_idx=corrected, max_frame_num_to_track=last - corrected
        )
    )
    tracker = StreamTracker(model)
    for i in range(last + 1):
        tracker.step(clip[1][i])
        if i == 0:
            obj = tracker.add_object(A.points, A.labels)
        if i == corrected:
            tracker.refine(obj, points=[negative], labels=[0])
        assert_matches(tracker.objects, refs[i], obj, f"frame {i}")
    assert tracker.memory_sizes()[obj][0] == 2  # frames 0 and 10 condition the object


def test_reverse_tracking_matches_official(model: object, clip: tuple) -> None:
    start, frames = 40, 25
    ref = official_video(model, clip[0], [B], reverse=True, start_frame=start, max_frames=frames)
    tracker = StreamTracker(model, reverse=True)
    for step, frame_idx in enumerate(range(start, start - frames - 1, -1)):
        result = tracker.step(clip[1][frame_idx])
        assert result.frame_index == step  # indices count frames in feeding order
        if step == 0:
            tracker.add_object(B.points, B.labels, obj_id=B.obj_id)
        assert_matches(tracker.objects, ref[frame_idx], B.obj_id, f"frame {frame_idx}")


@pytest.mark.parametrize(
    "points, labels, box",
    [
        ([(38.0, 34.0)], [1], None),  # one click: best of three candidates
        ([(38.0, 34.0), (60.0, 20.0)], [1, 0], None),  # two clicks: one mask
        ([(40.0, 30.0)], [1], (20.0, 15.0, 60.0, 55.0)),  # a box and a click
        (None, None, (70.0, 45.0, 110.0, 85.0)),  # a box alone
    ],
)
def test_image_segmenter_matches_sam2_image_predictor(
    model: object, clip: tuple, points: list | None, labels: list | None, box: tuple | None
) -> None:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = clip[1][7]
    official = SAM2ImagePredictor(model)
    side = IMAGE_SIZE
    official._bb_feat_sizes = [(side // 4,) * 2, (side // 8,) * 2, (side // 16,) * 2]
    official.set_image(image)
    num_prompts = len(points or []) + (2 if box is not None else 0)
    masks, scores, logits = official.predict(
        point_coords=np.array(points) if points else None,
        point_labels=np.array(labels) if points else None,
        box=np.array(box) if box is not None else None,
        multimask_output=num_prompts <= 1,
    )
    best = int(np.argmax(scores))

    seg = ImageSegmenter(model)
    seg.set_image(image)
    mask, score = seg.segment(points=points, labels=labels, box=box)
    assert 0 < masks[best].sum() < masks[best].size, "reference mask is trivial, test is void"
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    assert mask_iou(mask, masks[best] > 0) >= MIN_IOU
    assert score == pytest.approx(float(scores[best]), abs=1e-5)
    assert np.abs(seg.last_low_res_logits - logits[best]).max() <= MAX_LOGIT_DIFF
