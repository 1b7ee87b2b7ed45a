"""Mask and box geometry on small arrays whose answers can be checked by eye."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as coco_mask

from workers.masks import (
    box_iou,
    clip_box,
    mask_iou,
    mask_to_box,
    resize_nearest,
    rle_decode,
    rle_encode,
    scale_box,
)


def test_rle_is_column_major_and_starts_with_zeros() -> None:
    mask = np.array([[0, 1], [1, 1]], dtype=bool)  # columns: [0, 1] then [1, 1]
    rle = rle_encode(mask)
    assert rle["size"] == [2, 2]
    assert rle["counts"] == "13"  # one 0, then three 1s, in COCO's character coding
    full = rle_encode(np.ones((2, 3), dtype=bool))
    assert rle_decode(full).all()  # a leading empty run of zeros, then six 1s


def test_rle_decodes_list_counts_like_pycocotools_uncompressed_form() -> None:
    # column-major 0,1 | 1,0 | 0,0: one zero, two ones, three zeros
    mask = rle_decode({"size": [2, 3], "counts": [1, 2, 3]})
    assert mask.tolist() == [[False, True, False], [True, False, False]]


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_rle_round_trips_any_mask_and_is_cocos_own(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    assert np.array_equal(rle_decode(rle), mask)
    # The decode is ours (numpy): it reads what pycocotools writes, and pycocotools reads ours.
    theirs = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    assert np.array_equal(rle_decode(theirs), mask)
    assert np.array_equal(coco_mask.decode(rle).astype(bool), mask)


def test_long_runs_round_trip() -> None:
    # Runs far past one 5-bit group and deltas that go negative exercise the sign handling.
    mask = np.zeros((720, 1280), dtype=bool)
    mask[100:600, 200:1100] = True
    mask[0, 0] = True
    assert np.array_equal(rle_decode(rle_encode(mask)), mask)


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"size": [2, 2], "counts": [1, 1]}, "runs cover 2 pixels, size 2x2 needs 4"),
        ({"size": [2, 2], "counts": "1"}, "runs cover 1 pixels"),  # short: pycocotools reads on
        ({"counts": "13"}, "must have size"),
        ({"size": [2, 2], "counts": "1S"}, "truncated"),  # ends inside a continued count
        ({"size": [2, 2], "counts": "1\x7f"}, "outside COCO's range"),
        ({"size": [2, 2], "counts": "13\u00e9"}, "outside COCO's range"),
        ({"size": [2, 2], "counts": "0" + "`" * 9 + "0"}, "too long for any image"),
        ({"size": [-2, -2], "counts": "4"}, "size -2x-2 is no image's"),
        ({"size": [10**6, 10**6], "counts": "0"}, "is no image's"),  # refused before any work
        ({"size": [2, 2], "counts": [10**30, 4 - 10**30]}, "include a negative one"),
        ({"size": [1, 1], "counts": [10**30]}, "cover 1000000000000000000000000000000 pixels"),
        ({"size": [2, 2], "counts": [1, 2.5, 0.5]}, "list of whole numbers"),
        ({"size": [2, 2], "counts": None}, "list of whole numbers"),
    ],
)
def test_bad_rle_is_refused_clearly(bad: dict, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        rle_decode(bad)  # type: ignore[arg-type]


def test_mask_box_is_exclusive_and_empty_mask_has_none() -> None:
    one = np.zeros((5, 6), dtype=bool)
    one[2, 3] = True
    assert mask_to_box(one) == (3.0, 2.0, 4.0, 3.0)  # one pixel: area 1
    assert mask_to_box(np.zeros((5, 6), dtype=bool)) is None
    with pytest.raises(ValueError, match="2-D"):
        mask_to_box(np.zeros((5, 6, 3), dtype=bool))


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),  # identical
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges only
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),  # half overlap
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # both empty
    ],
)
def test_box_iou(a: tuple, b: tuple, iou: float) -> None:
    assert box_iou(a, b) == pytest.approx(iou)


def test_mask_iou_and_shape_check() -> None:
    a = np.zeros((4, 4), dtype=bool)
    b = np.zeros((4, 4), dtype=bool)
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        mask_iou(a, np.zeros((3, 3), dtype=bool))


def test_scale_and_clip_box() -> None:
    assert scale_box((10, 20, 30, 40), (100, 200), (200, 100)) == (20, 10, 60, 20)
    assert clip_box((-5, 50, 120, -3), 100, 40) == (0.0, 0.0, 100.0, 40.0)


def test_resize_nearest_keeps_each_pixel_where_it_was() -> None:
    small = np.array([[1, 0, 0], [0, 0, 1]], dtype=bool)  # 3 wide, 2 high
    big = resize_nearest(small, 6, 4)
    assert big.shape == (4, 6)
    assert big[:2, :2].all() and big[2:, 4:].all() and big.sum() == 8
    assert np.array_equal(resize_nearest(big, 3, 2), small)  # and back
    assert resize_nearest(small, 3, 2) is small
