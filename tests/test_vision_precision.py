"""--precision: what auto picks and says, and how close bf16 masks stay to fp32 on the same weights.

The floors below come from benchmarks/precision.py (figures in benchmarks/RESULTS.md, Precision):
at 128 px the worst frame's mask IoU bf16 vs fp32 was 0.986 and the largest low-res logit
difference 0.008, over the synthetic clip and pans over three scikit-image photographs. Random
weights give large masks (57-98% of the frame), so every reference mask is checked to be neither
empty nor the whole frame: an IoU of two full masks would prove nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest

from streamer.services import load_vision_model
from streamer.settings import Settings
from tests.conftest import one_thread_sam2
from tests.sam2_reference import Click, photo_clip, synthetic_clip, tracker_agreement
from workers.masks import mask_iou
from workers.vision import ImageSegmenter, SAM2LoadError, StreamTracker, load_sam2
from workers.vision import precision as precision_module
from workers.vision.precision import resolve_precision

IMAGE_SIZE = 128
MIN_IOU = 0.97  # measured worst frame 0.986
MAX_LOGIT_DIFF = 0.03  # measured worst 0.008
A = Click(1, points=[(38.0, 34.0)], labels=[1])
B = Click(2, points=[(85.0, 60.0)], labels=[1])
C = Click(3, box=(20.0, 74.0, 70.0, 90.0))
PHOTO_CLICKS = [
    Click(1, points=[(64.0, 40.0)], labels=[1]),
    Click(2, points=[(30.0, 70.0)], labels=[1]),
]


@pytest.fixture
def cpu_features(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bool]]:
    """What torch.cpu reports; tests fill it in."""
    features: dict[str, bool] = {}
    monkeypatch.setattr(precision_module, "_cpu_capabilities", lambda: features)
    yield features


@pytest.mark.parametrize(
    "features, expected",
    [
        ({}, "fp32"),  # an AVX2 CPU such as this machine's: bf16 would be emulated
        ({"avx512_bf16": True}, "bf16"),  # AVX512-BF16
        ({"amx_bf16": True, "avx512_bf16": True}, "bf16"),  # Sapphire Rapids and later
    ],
)
def test_auto_picks_bf16_only_on_a_cpu_that_has_it(
    cpu_features: dict[str, bool], features: dict[str, bool], expected: str
) -> None:
    cpu_features.update(features)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == expected
    assert chosen.reason.startswith("auto: this CPU has")
    if expected == "fp32":
        assert "neither AMX-BF16 nor AVX512-BF16" in chosen.reason


def test_forced_precisions_are_honoured_and_bf16_without_hardware_says_so(
    cpu_features: dict[str, bool],
) -> None:
    assert resolve_precision("fp32", "cpu").name == "fp32"
    forced = resolve_precision("bf16", "cpu")
    assert forced.name == "bf16" and "slower than fp32" in forced.reason
    cpu_features["amx_bf16"] = True
    assert resolve_precision("fp32", "cpu").name == "fp32"  # fp32 wins even where bf16 is fast


def test_unknown_precision_is_refused_with_the_choices() -> None:
    with pytest.raises(SAM2LoadError, match="auto, fp32, bf16"):
        load_sam2(size="tiny", weights="random", device="cpu", image_size=64, precision="fp16")
    with pytest.raises(ValueError, match="fp16"):
        Settings(precision="fp16")


def test_start_up_logs_the_chosen_precision_and_why(
    cpu_features: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(weights="random", device="cpu", sam2_image_size=128, precision="auto")
    with caplog.at_level(logging.INFO, logger="fmu.services"):
        model = load_vision_model(settings)
    assert model.fmu_precision.name == "fp32"
    assert "SAM2 computes in fp32 (auto: this CPU has neither" in caplog.text
    assert "--precision" not in caplog.text  # the reason already names what was asked
    # trackers and segmenters follow the model's precision unless told otherwise
    assert StreamTracker(model).precision.name == "fp32"
    assert StreamTracker(model, precision="bf16").precision.name == "bf16"
    assert ImageSegmenter(model).precision.name == "fp32"


@pytest.fixture(scope="module")
def model() -> Iterator[object]:
    yield from one_thread_sam2(IMAGE_SIZE)


def _check(agreement: object) -> None:
    ious = np.array(agreement.ious)  # type: ignore[attr-defined]
    errors = np.array(agreement.logit_errors)  # type: ignore[attr-defined]
    fractions = np.array(agreement.frame_fractions)  # type: ignore[attr-defined]
    assert ((fractions > 0.0) & (fractions < 1.0)).all(), "a reference mask is empty or full"
    assert ious.min() >= MIN_IOU, f"worst bf16/fp32 mask IoU {ious.min():.4f}"
    assert errors.max() <= MAX_LOGIT_DIFF, f"largest logit difference {errors.max():.4f}"
    assert errors.max() > 0.0, "bf16 gave fp32's logits exactly: it was not applied"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bf16_tracking_stays_close_to_fp32_on_the_synthetic_clip(model: object) -> None:
    agreement = tracker_agreement(
        StreamTracker(model, precision="fp32"),
        StreamTracker(model, precision="bf16"),
        synthetic_clip(10),
        [A, B, C],
    )
    _check(agreement)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bf16_tracking_stays_close_to_fp32_on_a_photograph(model: object) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    reference, other = (
        StreamTracker(model, precision="fp32"),
        StreamTracker(model, precision="bf16"),
    )
    agreement = tracker_agreement(
        reference, other, photo_clip(skimage_data.astronaut(), 8), PHOTO_CLICKS
    )
    _check(agreement)
    # what leaves the tracker is the same kind of thing in either precision
    state = other.objects[1]
    assert state.mask.dtype == np.bool_ and state.low_res_logits.dtype == np.float32
    assert other.memory_sizes() == reference.memory_sizes()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_bf16_image_mode_stays_close_to_fp32(model: object, photo: str) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    image = getattr(skimage_data, photo)()
    height, width = image.shape[:2]
    results = []
    for precision in ("fp32", "bf16"):
        seg = ImageSegmenter(model, precision=precision)
        seg.set_image(image)
        mask, _ = seg.segment(points=[(width * 0.5, height * 0.4)], labels=[1])
        results.append((mask, seg.last_low_res_logits))
    (ref_mask, ref_logits), (mask, logits) = results
    assert 0.0 < ref_mask.mean() < 1.0
    assert mask_iou(ref_mask, mask) >= MIN_IOU
    assert 0.0 < float(np.abs(ref_logits - logits).max()) <= MAX_LOGIT_DIFF
