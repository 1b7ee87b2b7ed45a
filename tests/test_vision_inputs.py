"""Frames into the model: on a CPU exactly as sam2's own loader makes them; on a GPU resized there,
within a level of PIL's pixels, and tracking the same objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import one_thread_sam2
from tests.sam2_reference import Click, photo_clip
from workers.masks import mask_iou
from workers.vision import StreamTracker
from workers.vision import inputs as inputs_module
from workers.vision import tracker as tracker_module
from workers.vision.inputs import device_resize, video_frame_tensor

skimage_data = pytest.importorskip("skimage.data")
CPU = torch.device("cpu")


def _noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [256, 1024])
def test_a_cpu_frame_is_what_sam2s_loader_makes_of_the_same_picture(
    tmp_path: Path, size: int
) -> None:
    from sam2.utils.misc import _load_img_as_tensor

    frame = skimage_data.astronaut()[40:400, 0:500]  # a view, 360 x 500
    Image.fromarray(np.ascontiguousarray(frame)).save(tmp_path / "0.png")  # lossless
    theirs, height, width = _load_img_as_tensor(str(tmp_path / "0.png"), size)
    theirs = theirs.float()  # load_video_frames stores it in a float32 tensor, then normalises
    theirs -= torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
    theirs /= torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
    ours = video_frame_tensor(frame, size, CPU)
    assert (height, width) == frame.shape[:2]
    assert ours.shape == (1, 3, size, size)
    assert torch.equal(ours[0], theirs)


def test_a_frame_resized_on_the_cpu_goes_to_the_models_device() -> None:
    """A device that resizes on the CPU (MPS: only CUDA resizes on the device) still gets its
    input there; a meta tensor stands for it here."""
    frame = _noise(36, 64)
    assert video_frame_tensor(frame, 64, torch.device("meta")).device.type == "meta"


@pytest.mark.parametrize(
    "picture, size, most_off",
    [
        ("astronaut", 1024, 1e-3),  # 512 px up to 1024
        ("coffee", 256, 1e-3),  # 400 x 600 down to 256
        ("noise", 1024, 0.02),  # every pixel an edge: the worst case for clipping between passes
        ("noise", 256, 1e-3),
    ],
)
def test_resizing_on_the_device_is_pils_resize_within_a_level(
    picture: str, size: int, most_off: float
) -> None:
    frame = _noise(360, 640) if picture == "noise" else getattr(skimage_data, picture)()
    pil = np.asarray(Image.fromarray(frame).resize((size, size))).astype(np.int16)
    ours = device_resize(frame, size, CPU)
    assert ours.dtype == torch.uint8 and ours.shape == (size, size, 3)
    off = np.abs(ours.numpy().astype(np.int16) - pil)
    assert (off > 1).mean() <= most_off, f"{(off > 1).mean():.4%} of values more than a level off"
    assert off.mean() < 0.5
    # the rest of the input is made the same way on either path
    on_device = video_frame_tensor(frame, size, CPU, resize_on_device=True)
    assert on_device.shape == (1, 3, size, size) and on_device.is_contiguous()
    assert (on_device - video_frame_tensor(frame, size, CPU)).abs().max() < 0.5  # 29 levels


@pytest.fixture(scope="module")
def model() -> Iterator[Any]:
    yield from one_thread_sam2(128)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tracking_with_frames_resized_on_the_device_follows_the_same_objects(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = photo_clip(skimage_data.astronaut(), 8)
    clicks = [Click(1, points=[(64.0, 40.0)], labels=[1]), Click(2, points=[(30.0, 70.0)])]

    def track() -> list[dict[int, Any]]:
        tracker, states = StreamTracker(model), []
        for i, frame in enumerate(frames):
            tracker.step(frame)
            if i == 0:
                for click in clicks:
                    tracker.add_object(
                        points=click.points, labels=click.labels, obj_id=click.obj_id
                    )
            states.append(tracker.objects)
        return states

    reference = track()
    monkeypatch.setattr(  # as on a GPU, on this CPU
        tracker_module,
        "video_frame_tensor",
        lambda frame, size, device: video_frame_tensor(frame, size, device, resize_on_device=True),
    )
    resized_on_device = track()
    ious, logit_errors = [], []
    for ref, got in zip(reference, resized_on_device, strict=True):
        for obj_id, state in ref.items():
            assert 0.0 < state.mask.mean() < 1.0, "a reference mask is empty or full"
            ious.append(mask_iou(state.mask, got[obj_id].mask))
            logit_errors.append(np.abs(state.low_res_logits - got[obj_id].low_res_logits).max())
    assert min(ious) >= 0.97, f"worst mask IoU {min(ious):.4f}"
    assert max(logit_errors) > 0.0, "the same logits: the device resize was not used"


def test_an_image_sent_up_as_uint8_is_sam2s_image_input_and_segments_the_same(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image mode on a GPU sends the uint8 image up and runs sam2's resize and normalisation
    there (on_device, as on a GPU, here on the CPU): the same operations, so on one device the
    same input, bit for bit, and the same mask and scores for a click."""
    from sam2.utils.transforms import SAM2Transforms

    from workers.vision import ImageSegmenter
    from workers.vision import image as image_module

    sent_up: list[tuple[int, ...]] = []

    def uint8_on_device(image: np.ndarray, device: torch.device) -> torch.Tensor:
        sent_up.append(image.shape)
        return inputs_module.uint8_on_device(image, device)

    monkeypatch.setattr(image_module, "uint8_on_device", uint8_on_device)
    image = skimage_data.coffee()[:300, :500]  # a view, 300 x 500
    theirs = SAM2Transforms(model.image_size, mask_threshold=0.0)(image)
    on_device = ImageSegmenter(model, on_device=True)
    assert torch.equal(on_device._predictor._transforms(image), theirs)
    results = []
    for seg in (ImageSegmenter(model, on_device=False), on_device):
        seg.set_image(image)
        mask, score = seg.segment(points=[(250, 120)])
        results.append((mask, score, seg.last_object_score))
    (mask, score, presence), (mask_up, score_up, presence_up) = results
    assert 0.0 < mask.mean() < 1.0, "the reference mask is empty or full"
    assert np.array_equal(mask, mask_up) and (score, presence) == (score_up, presence_up)
    assert sent_up == [(300, 500, 3)] * 2, "the image was not sent up as uint8 (or not only then)"
