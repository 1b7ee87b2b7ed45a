"""Spotlight exactness on small arrays whose right answer can be read off by eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from workers.reasoning import Spotlight, render_spotlight

W = 255  # outline value


def _frame(h: int, w: int, value: int = 200) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_background_half_object_untouched_outline_just_outside() -> None:
    frame = _frame(5, 6)
    mask = np.zeros((5, 6), dtype=bool)
    mask[2, 2] = True
    out = render_spotlight(frame, mask, small_object_fraction=0.0).image
    expected = np.array(
        [
            [100, 100, 100, 100, 100, 100],
            [100, W, W, W, 100, 100],
            [100, W, 200, W, 100, 100],
            [100, W, W, W, 100, 100],
            [100, 100, 100, 100, 100, 100],
        ],
        dtype=np.uint8,
    )
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_background_rounds_down_and_object_is_byte_identical() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:15, 8:20] = 7  # any nonzero value is "object"
    out = render_spotlight(frame, mask, small_object_fraction=0.0).image
    obj = mask != 0
    np.testing.assert_array_equal(out[obj], frame[obj])
    ring = np.zeros_like(obj)
    ring[4:16, 7:21] = True
    ring &= ~obj
    assert (out[ring] == 255).all()
    background = ~obj & ~ring
    np.testing.assert_array_equal(out[background], frame[background] // 2)
    # 255 -> 127, 1 -> 0: "pixel >> 1", rounding down
    odd = _frame(3, 3, 255)
    odd[0, 0] = 1
    one = np.zeros((3, 3), dtype=bool)
    one[2, 2] = True
    out_odd = render_spotlight(odd, one, small_object_fraction=0.0).image
    assert out_odd[0, 0].tolist() == [0, 0, 0]
    assert out_odd[2, 2].tolist() == [255, 255, 255]  # object, untouched


def test_outline_is_closed_around_diagonal_corners() -> None:
    mask = np.zeros((7, 7), dtype=bool)
    mask[2, 2] = mask[3, 3] = mask[4, 4] = True  # a diagonal: 8-adjacency closes the ring
    out = render_spotlight(_frame(7, 7), mask, small_object_fraction=0.0).image[..., 0]
    expected = np.array(
        [
            [100, 100, 100, 100, 100, 100, 100],
            [100, W, W, W, 100, 100, 100],
            [100, W, 200, W, W, 100, 100],
            [100, W, W, 200, W, W, 100],
            [100, 100, W, W, 200, W, 100],
            [100, 100, 100, W, W, W, 100],
            [100, 100, 100, 100, 100, 100, 100],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "corner",
    [
        (0, 0),  # top-left
        (0, 5),  # top-right
        (4, 0),  # bottom-left
        (4, 5),  # bottom-right
    ],
)
def test_mask_touching_the_border_outline_stops_there(corner: tuple[int, int]) -> None:
    mask = np.zeros((5, 6), dtype=bool)
    mask[corner] = True
    out = render_spotlight(_frame(5, 6), mask, small_object_fraction=0.0).image[..., 0]
    assert out[corner] == 200
    r, c = corner
    neighbours = {
        (r + dr, c + dc)
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
        if (dr or dc) and 0 <= r + dr < 5 and 0 <= c + dc < 6
    }
    assert len(neighbours) == 3  # a corner pixel has three in-frame neighbours
    for p in neighbours:
        assert out[p] == W
    rest = np.ones((5, 6), dtype=bool)
    rest[corner] = False
    for p in neighbours:
        rest[p] = False
    assert (out[rest] == 100).all()


def test_mask_covering_whole_frame_is_the_frame() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    out = render_spotlight(frame, np.ones((4, 4), dtype=bool))
    np.testing.assert_array_equal(out.image, frame)
    assert out.crop is None and out.crop_box is None


def test_input_frame_is_not_modified() -> None:
    frame = _frame(6, 6)
    before = frame.copy()
    mask = np.zeros((6, 6), dtype=bool)
    mask[2:4, 2:4] = True
    render_spotlight(frame, mask)
    np.testing.assert_array_equal(frame, before)


def test_empty_mask_raises_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="mask is empty"):
        render_spotlight(_frame(4, 4), np.zeros((4, 4), dtype=bool))


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 4, 3\)"):
        render_spotlight(_frame(4, 4), np.ones((4, 5), dtype=bool))


def test_bad_frame_is_rejected() -> None:
    with pytest.raises(ValueError, match="H x W x 3"):
        render_spotlight(np.zeros((4, 4), dtype=np.uint8), np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="uint8"):
        render_spotlight(np.zeros((4, 4, 3), dtype=np.float32), np.ones((4, 4), dtype=bool))


def test_one_pixel_mask_gets_a_zoomed_crop_with_context() -> None:
    frame = _frame(100, 120)
    mask = np.zeros((100, 120), dtype=bool)
    mask[50, 60] = True
    spot = render_spotlight(frame, mask, crop_size=128)
    assert isinstance(spot, Spotlight)
    assert spot.crop is not None and spot.crop_box is not None
    x0, y0, x1, y1 = spot.crop_box
    assert x0 <= 60 < x1 and y0 <= 50 < y1
    assert (x1 - x0, y1 - y0) == (32, 32)  # the minimum context square
    assert spot.crop.shape == (128, 128, 3) and spot.crop.dtype == np.uint8
    assert len(spot.images) == 2


def test_small_object_near_the_edge_keeps_its_context() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[0:4, 96:100] = True  # top-right corner, 16 px = 0.16% of the frame
    spot = render_spotlight(_frame(100, 100), mask)
    assert spot.crop_box == (68, 0, 100, 32)  # shifted into the frame, not cut


def test_crop_content_is_the_spotlit_region_upscaled() -> None:
    frame = _frame(64, 64)
    mask = np.zeros((64, 64), dtype=bool)
    mask[30:34, 30:34] = True
    spot = render_spotlight(frame, mask, crop_size=32)  # crop 32 px: no upscale, exact copy
    x0, y0, x1, y1 = spot.crop_box
    np.testing.assert_array_equal(spot.crop, spot.image[y0:y1, x0:x1])


def test_large_object_has_no_crop() -> None:
    mask = np.zeros((50, 50), dtype=bool)
    mask[10:40, 10:40] = True  # 36% of the frame
    spot = render_spotlight(_frame(50, 50), mask)
    assert spot.crop is None and spot.crop_box is None
    assert spot.images == [spot.image]


def test_threshold_is_strictly_below() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, 0:2] = True  # exactly 2% of 100 px
    assert render_spotlight(_frame(10, 10), mask).crop is None
    mask[0, 1] = False  # 1%
    assert render_spotlight(_frame(10, 10), mask).crop is not None


def _reference(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The rules written the slow, obvious way: dim, keep the object, whiten 8-neighbours."""
    padded = np.pad(mask, 1)
    grown = np.zeros_like(padded)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx] |= mask
    ring = grown[1:-1, 1:-1] & ~mask
    out = frame // 2
    out[mask] = frame[mask]
    out[ring] = 255
    return out


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    density=st.floats(0.0, 0.6),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_the_reference_on_random_masks(h: int, w: int, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = rng.random((h, w)) < density
    assume(mask.any())
    out = render_spotlight(frame, mask, small_object_fraction=0.0).image
    np.testing.assert_array_equal(out, _reference(frame, mask))


def test_non_contiguous_views_give_the_same_result() -> None:
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 30), dtype=bool)
    mask[5:15, 10:20] = True
    bgr_view, mask_view = frame[..., ::-1], mask.T  # views with odd strides
    got = render_spotlight(bgr_view, mask_view, small_object_fraction=0.0).image
    want = render_spotlight(
        np.ascontiguousarray(bgr_view), np.ascontiguousarray(mask_view), small_object_fraction=0.0
    ).image
    np.testing.assert_array_equal(got, want)


def test_import_does_not_pull_in_torch() -> None:
    import subprocess
    import sys

    code = "import sys, workers.reasoning; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "False"
