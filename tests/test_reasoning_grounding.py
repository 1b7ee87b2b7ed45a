"""Grounding answers -> frame boxes: robust parsing, both coordinate conventions (hypothesis)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from workers.masks import box_iou
from workers.reasoning import GroundedBox, parse_grounding
from workers.reasoning.grounding import from_frame_box, parse_raw_boxes
from workers.reasoning.images import fitted_size

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def frames_and_boxes(draw: st.DrawFn) -> tuple[tuple[int, int], list[tuple[int, int, int, int]]]:
    w = draw(st.integers(32, 4000))
    h = draw(st.integers(32, 4000))
    boxes = []
    for _ in range(draw(st.integers(1, 4))):
        x0 = draw(st.integers(0, w - 2))
        y0 = draw(st.integers(0, h - 2))
        x1 = draw(st.integers(x0 + 1, w))
        y1 = draw(st.integers(y0 + 1, h))
        boxes.append((x0, y0, x1, y1))
    return (w, h), boxes


def _wrap(draw: st.DrawFn, objects: list[dict]) -> str:
    """Text the way models write it: fences or not, prose around, single object unlisted."""
    payload: object = objects[0] if len(objects) == 1 and draw(st.booleans()) else objects
    body = json.dumps(payload, indent=draw(st.sampled_from([None, 2, 4])))
    if draw(st.booleans()):
        body = f"```{draw(st.sampled_from(['json', '', 'JSON']))}\n{body}\n```"
    before = draw(st.sampled_from(["", "Sure! Here are the boxes:\n", "The object is at "]))
    after = draw(st.sampled_from(["", "\nLet me know if you need more.", " (approximately)"]))
    return before + body + after


@SETTINGS
@given(
    data=st.data(),
    fb=frames_and_boxes(),
    convention=st.sampled_from(["absolute", "relative1000"]),
    max_side=st.sampled_from([448, 768, 1024]),
)
def test_round_trip_frame_box_to_model_text_and_back(data, fb, convention, max_side) -> None:
    (w, h), boxes = fb
    image_size = fitted_size(w, h, max_side)
    model_boxes = [
        from_frame_box(b, convention=convention, image_size=image_size, frame_size=(w, h))
        for b in boxes
    ]
    # A box thinner than the model's coordinate grid rounds to nothing: nothing to recover there.
    assume(all(m[2] > m[0] and m[3] > m[1] for m in model_boxes))
    # Boxes this alike are one object written twice, kept once (the test below).
    assume(all(box_iou(a, b) < 0.85 for a, b in itertools.combinations(model_boxes, 2)))
    objects = [{"bbox_2d": list(m), "label": f"obj{i}"} for i, m in enumerate(model_boxes)]
    text = _wrap(data.draw, objects)
    parsed = parse_grounding(text, image_size=image_size, frame_size=(w, h), coords=convention)
    grid = (1000, 1000) if convention == "relative1000" else image_size
    tol_x, tol_y = 0.5 * w / grid[0] + 1e-6, 0.5 * h / grid[1] + 1e-6
    assert [g.label for g in parsed] == [o["label"] for o in objects]
    for got, want in zip(parsed, boxes, strict=True):
        assert isinstance(got, GroundedBox) and got.score is None
        assert abs(got.box[0] - want[0]) <= tol_x and abs(got.box[2] - want[2]) <= tol_x
        assert abs(got.box[1] - want[1]) <= tol_y and abs(got.box[3] - want[3]) <= tol_y
        assert 0 <= got.box[0] < got.box[2] <= w and 0 <= got.box[1] < got.box[3] <= h


@SETTINGS
@given(st.text(max_size=400))
def test_junk_never_raises(text: str) -> None:
    assert isinstance(parse_raw_boxes(text), list)
    boxes = parse_grounding(text, image_size=(756, 420), frame_size=(1280, 720))
    for g in boxes:
        x0, y0, x1, y1 = g.box
        assert 0 <= x0 < x1 <= 1280 and 0 <= y0 < y1 <= 720


@SETTINGS
@given(st.lists(st.tuples(*[st.integers(0, 999)] * 4), min_size=1, max_size=5), st.data())
def test_truncation_keeps_every_complete_box(
    raw: list[tuple[int, ...]], data: st.DataObject
) -> None:
    objects = [{"bbox_2d": list(b), "label": "a"} for b in raw]
    text = json.dumps(objects)
    cut = data.draw(st.integers(0, len(text)))
    truncated = text[:cut]
    complete = sum(1 for i in range(len(objects)) if len(json.dumps(objects[: i + 1])) - 1 <= cut)
    got = parse_raw_boxes(truncated)
    # every box written out in full before the cut is found, in order (a box whose numbers are
    # complete but whose label was cut off may also be salvaged)
    assert [tuple(int(v) for v in g.coords) for g in got[:complete]] == raw[:complete]
    assert len(got) - complete in (0, 1)


@SETTINGS
@given(st.integers(1, 8000), st.integers(1, 8000), st.sampled_from([448, 768, 1024, 1280]))
def test_fitted_size_is_on_qwens_grid(w: int, h: int, max_side: int) -> None:
    fw, fh = fitted_size(w, h, max_side)
    assert fw % 28 == 0 and fh % 28 == 0
    assert 56 <= fw <= max_side and 56 <= fh <= max_side
    if max(w, h) <= max_side:
        assert abs(fw - w) <= 28 or fw == 56  # never scaled up past rounding / the minimum
        assert abs(fh - h) <= 28 or fh == 56


@pytest.mark.parametrize(
    "text, expected",
    [
        # fenced list with prose around
        (
            'Sure!\n```json\n[{"bbox_2d": [10, 20, 30, 40], "label": "cup"}]\n```\nDone.',
            [((10, 20, 30, 40), "cup")],
        ),
        # single object, no list
        ('{"bbox_2d": [1, 2, 3, 4], "label": "a"}', [((1, 2, 3, 4), "a")]),
        # several boxes
        (
            '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}]',
            [((1, 2, 3, 4), "a"), ((5, 6, 7, 8), "b")],
        ),
        # truncated mid-second-object: the first survives
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6', [((1, 2, 3, 4), "a")]),
        # Python-style quotes and a trailing comma
        ("[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'},]", [((1, 2, 3, 4), "a")]),
        # nested under a key, corner-pair form
        ('{"objects": [{"bbox": [[1, 2], [3, 4]], "label": "q"}]}', [((1, 2, 3, 4), "q")]),
        # Qwen2-VL special-token form, as the transformers backend could keep it
        (
            "<|object_ref_start|>cup<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>",
            [((1, 2, 3, 4), "cup")],
        ),
        # the same with the special tokens stripped, as vLLM sends it
        ("cup(1,2),(3,4)", [((1, 2, 3, 4), "cup")]),
        (
            "the cup (10, 20), (300, 400) and a mug (5,6),(7,8)",
            [((10, 20, 300, 400), "the cup"), ((5, 6, 7, 8), "and a mug")],
        ),
        # a bare list of four numbers
        ("The box is [10, 20, 30, 40].", [((10, 20, 30, 40), "")]),
        # none
        ("[]", []),
        ("```json\n[]\n```", []),
        ("I could not find it.", []),
        ('{"bbox_2d": "somewhere"}', []),
    ],
)
def test_parse_raw_boxes_cases(text: str, expected: list) -> None:
    got = [(tuple(int(v) for v in b.coords), b.label) for b in parse_raw_boxes(text)]
    assert got == expected


def test_scores_are_kept_and_empty_boxes_dropped() -> None:
    text = '[{"bbox_2d": [0, 0, 50, 50], "label": "a", "score": 0.9}, {"bbox_2d": [5, 5, 5, 9]}]'
    (box,) = parse_grounding(text, image_size=(100, 100), frame_size=(200, 100))
    assert box == GroundedBox((0.0, 0.0, 100.0, 50.0), "a", 0.9)


@pytest.mark.parametrize(
    "boxes, kept",
    [
        # Qwen looping on one object until its budget runs out: one object to track, not four
        ([[10, 10, 50, 50]] * 4, [(10, 10, 50, 50)]),
        # the same object again a pixel off, then another object
        ([[10, 10, 50, 50], [11, 10, 50, 51], [60, 10, 90, 50]], [(10, 10, 50, 50), (60, 10, 90, 50)]),
        # a cup inside the box of the tray it stands on: two objects, both kept
        ([[0, 0, 100, 100], [20, 20, 60, 60]], [(0, 0, 100, 100), (20, 20, 60, 60)]),
    ],
)  # fmt: skip
def test_an_object_written_twice_is_one_box(boxes: list, kept: list) -> None:
    text = json.dumps([{"bbox_2d": b, "label": "cup"} for b in boxes])
    got = parse_grounding(text, image_size=(100, 100), frame_size=(100, 100))
    assert [g.box for g in got] == [tuple(float(v) for v in k) for k in kept]


def test_coordinates_outside_the_image_are_clamped() -> None:
    text = '[{"bbox_2d": [-10, -5, 1200, 990], "label": "a"}]'
    (box,) = parse_grounding(
        text, image_size=(1000, 1000), frame_size=(640, 480), coords="relative1000"
    )
    assert box.box == (0.0, 0.0, 640.0, 475.2)
