"""Yes/no verdicts (checked Find) and next-click answers (auto-refine): robust parsing (hypothesis),
both coordinate conventions, and what the Reasoner sends for them (a scripted server)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.openai_server import ScriptedVLMServer
from workers.reasoning import OpenAICompatibleBackend, Reasoner
from workers.reasoning.answers import (
    Done,
    RawClick,
    from_frame_point,
    parse_click,
    parse_region_answers,
    parse_yes_no,
    to_frame_point,
)
from workers.reasoning.images import decode_data_url

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BEFORE = ["", "Sure! ", "Looking at the outlined region: ", "<answer>"]
AFTER = ["", ".", " It is clearly visible.", "\nLet me know if you need more."]


def _fence(draw: st.DrawFn, body: str) -> str:
    if draw(st.booleans()):
        body = f"```{draw(st.sampled_from(['json', '', 'JSON']))}\n{body}\n```"
    return draw(st.sampled_from(BEFORE)) + body + draw(st.sampled_from(AFTER))


@SETTINGS
@given(data=st.data(), yes=st.booleans())
def test_yes_no_survives_fences_prose_and_json(data: Any, yes: bool) -> None:
    word = data.draw(st.sampled_from(["yes", "Yes", "YES"] if yes else ["no", "No", "NO"]))
    form = data.draw(st.sampled_from(["word", "json_str", "json_bool"]))
    body = {
        "word": word,
        "json_str": json.dumps({"answer": word}),
        "json_bool": json.dumps({"match": yes}),
    }[form]
    assert parse_yes_no(_fence(data.draw, body)) is yes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No, it is a bowl.", False),  # the reason after the verdict does not count
        ("The answer is yes", True),  # prose before it
        ("Nothing like it; not a cup.", None),  # "no" only inside other words
        ("I cannot tell from this picture.", None),  # neither
        ("", None),  # empty
        ("Ye", None),  # cut off by the token limit
        ('```json\n{"answer": ', None),  # truncated JSON with no word
        ('{"answer": "no"}', False),  # JSON string
        # the verdict's key, not the first word of the reason beside it, nor prose after it
        ('{"reason": "no handle, but a cup", "answer": "yes"} That is my answer.', True),
    ],
)
def test_yes_no_table(text: str, expected: bool | None) -> None:
    assert parse_yes_no(text) is expected


@st.composite
def clicks(draw: st.DrawFn) -> tuple[tuple[int, int], tuple[int, int], str, str]:
    w, h = draw(st.integers(32, 4000)), draw(st.integers(32, 4000))
    x, y = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
    return (
        (w, h),
        (x, y),
        draw(st.sampled_from(["positive", "negative"])),
        draw(st.sampled_from(["absolute", "relative1000"])),
    )


@SETTINGS
@given(data=st.data(), c=clicks(), image_side=st.sampled_from([448, 768]))
def test_click_round_trip_frame_to_model_text_and_back(data: Any, c: Any, image_side: int) -> None:
    (w, h), (x, y), kind, convention = c
    image_size = (image_side, max(1, round(image_side * h / w)))
    sent = from_frame_point((x, y), convention=convention, image_size=image_size, frame_size=(w, h))
    body = json.dumps({"action": kind, "point_2d": list(sent)})
    parsed = parse_click(_fence(data.draw, body))
    assert parsed == RawClick((float(sent[0]), float(sent[1])), kind)  # type: ignore[arg-type]
    point = to_frame_point(
        parsed.point, convention=convention, image_size=image_size, frame_size=(w, h)
    )
    assert point is not None
    # Back within one model grid cell of where it was.
    cell_x = w / (image_size[0] if convention == "absolute" else 1000)
    cell_y = h / (image_size[1] if convention == "absolute" else 1000)
    assert abs(point[0] - x) <= cell_x and abs(point[1] - y) <= cell_y
    assert 0 <= point[0] < w and 0 <= point[1] < h


@SETTINGS
@given(data=st.data(), cut=st.integers(1, 60))
def test_a_truncated_click_is_a_click_or_nothing_never_a_wrong_one(data: Any, cut: int) -> None:
    full = '{"action": "negative", "point_2d": [123, 45]} and then some more words'
    parsed = parse_click(full[:cut])
    assert parsed in (None, RawClick((123.0, 45.0), "negative"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"action": "done"}', Done()),  # the plain form
        ("Done.", Done()),  # a word
        ('```json\n{"action": "done"}\n```', Done()),  # fenced
        ('{"action": "positive", "point_2d": [10, 20]}', RawClick((10.0, 20.0), "positive")),
        ('{"label": 0, "point": [5, 6]}', RawClick((5.0, 6.0), "negative")),  # SAM's labels
        ("{'action': 'positive', 'point_2d': [7, 8]", RawClick((7.0, 8.0), "positive")),  # quotes
        ('Click here: {"point_2d": [10, 20]}', None),  # no action: not guessed
        ('{"action": "positive", "point_2d": [10]}', None),  # half a point
        # the kind in the model's own words
        ('{"action": "add", "point_2d": [3, 4]}', RawClick((3.0, 4.0), "positive")),
        ('[{"action": "Negative click", "point_2d": [3, 4]}]', RawClick((3.0, 4.0), "negative")),
        ('{"label": "background", "point_2d": [3, 4]}', RawClick((3.0, 4.0), "negative")),
        ('{"action": "exclude", "point_2d": [3, 4]', RawClick((3.0, 4.0), "negative")),  # cut
        ('{"label": "cup", "point_2d": [3, 4]}', None),  # a label that is no kind: not guessed
        ("The mask looks mostly fine but I am not sure", None),  # prose
        ("", None),  # empty
    ],
)
def test_click_table(text: str, expected: Any) -> None:
    assert parse_click(text) == expected


def test_a_point_outside_the_image_is_no_click() -> None:
    args = {"image_size": (448, 336), "frame_size": (640, 480)}
    assert to_frame_point((500, 10), convention="absolute", **args) is None
    assert to_frame_point((10, 1001), convention="relative1000", **args) is None
    assert to_frame_point((1000, 1000), convention="relative1000", **args) == (639.5, 479.5)


# -- what the Reasoner sends and returns -----------------------------------------------------

H, W = 120, 160


def _scene() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:H, 0:W]
    frame = np.stack([xs * 255 // (W - 1), ys * 255 // (H - 1), np.full_like(xs, 90)], -1)
    mask = np.zeros((H, W), dtype=bool)
    mask[40:80, 50:90] = True
    return frame.astype(np.uint8), mask


def _images(body: dict[str, Any]) -> list[np.ndarray]:
    return [
        decode_data_url(p["image_url"]["url"])
        for p in body["messages"][-1]["content"]
        if p.get("type") == "image_url"
    ]


async def test_check_match_shows_the_spotlight_with_the_phrase() -> None:
    frame, mask = _scene()
    with ScriptedVLMServer(answer=["No, it is a red square."]) as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, "Qwen/Qwen2.5-VL-3B-Instruct"))
        check = await reasoner.check_match(frame, mask, "a blue cup")
        body = srv.requests[-1]
        await reasoner.backend.aclose()
    assert check.match is False and check.answer == "No, it is a red square."
    assert '"a blue cup"' in body["messages"][-1]["content"][-1]["text"]
    expected, _ = reasoner.spotlight_parts(frame, mask)
    sent = [p for p in body["messages"][-1]["content"] if p.get("type") == "image_url"]
    assert sent == expected  # exactly the candidate's Spotlight


@pytest.mark.parametrize(
    "family, answer, expected",
    [
        # Qwen2.5-VL: pixels of the image it was sent (the frame as sent: 168x112 at grid 28)
        ("qwen2.5-vl", '{"action": "negative", "point_2d": [84, 56]}', (80, 60)),
        # Qwen3-VL: 0..1000 on both axes
        ("qwen3-vl", '{"action": "positive", "point_2d": [250, 500]}', (40, 60)),
    ],
)
async def test_next_click_is_in_frame_pixels_in_the_familys_convention(
    family: str, answer: str, expected: tuple[float, float]
) -> None:
    frame, mask = _scene()
    with ScriptedVLMServer(answer=[answer]) as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, "m"), family=family)
        step = await reasoner.next_click(frame, mask, "the red square", [("positive", (1, 2))])
        body = srv.requests[-1]
        await reasoner.backend.aclose()
    assert step.point == pytest.approx(expected, abs=1.0)
    spot, original = _images(body)  # the current mask's Spotlight, then the original frame
    assert spot.shape == original.shape and (spot != original).any()
    text = body["messages"][-1]["content"][-1]["text"]
    assert '"the red square"' in text and "positive at [1, 2]" in text


async def test_next_click_junk_is_unclear_with_the_words_kept() -> None:
    frame, mask = _scene()
    with ScriptedVLMServer(answer=["It looks like a nice square!"]) as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, "qwen2.5-vl"))
        step = await reasoner.next_click(frame, mask)
        await reasoner.backend.aclose()
    assert step.action == "unclear" and step.point is None
    assert step.answer == "It looks like a nice square!"


# --- find-all: a yes/no per region ------------------------------------------------------------


@SETTINGS
@given(data=st.data(), verdicts=st.lists(st.booleans(), min_size=1, max_size=8))
def test_region_answers_survive_fences_prose_and_json(data: Any, verdicts: list[bool]) -> None:
    words = [data.draw(st.sampled_from(["yes", "Yes"] if v else ["no", "No"])) for v in verdicts]
    # A reason after each verdict holds the other word: only the verdict counts.
    reasoned = [
        f"{w}, {'though no handle shows' if v else 'not a cup'}"
        for w, v in zip(words, verdicts, strict=True)
    ]
    form = data.draw(
        st.sampled_from(
            ["object", "reasoned", "keyed", "list", "bools", "numbered", "bold", "words"]
        )
    )
    body = {
        "object": json.dumps({"answers": words}),
        "reasoned": json.dumps({"answers": reasoned}),
        "keyed": json.dumps({str(i + 1): w for i, w in enumerate(words)}),
        "list": json.dumps(words),
        "bools": json.dumps(verdicts),
        "numbered": ", ".join(f"{i + 1}: {w}" for i, w in enumerate(words)),
        "bold": "\n".join(f"**Image {i + 1}**: {w}" for i, w in enumerate(words)),
        "words": ", ".join(words),
    }[form]
    assert parse_region_answers(_fence(data.draw, body), len(verdicts)) == verdicts


@SETTINGS
@given(verdicts=st.lists(st.booleans(), min_size=1, max_size=8), cut=st.integers(0, 200))
def test_a_truncated_region_answer_keeps_the_verdicts_written_before_the_cut(
    verdicts: list[bool], cut: int
) -> None:
    full = json.dumps({"answers": ["yes" if v else "no" for v in verdicts]})
    text = full[:cut]
    got = parse_region_answers(text, len(verdicts))
    assert len(got) == len(verdicts)
    # Each verdict whose closing quote was written is read right; none is ever made up.
    closed = text.count('"') // 2 - 1  # the key's quotes come first
    for i, v in enumerate(verdicts):
        if i < closed:
            assert got[i] is v
        assert got[i] in (v, None)


@SETTINGS
@given(text=st.text(max_size=300), n=st.integers(0, 10))
def test_region_answers_never_raise_and_answer_every_region(text: str, n: int) -> None:
    got = parse_region_answers(text, n)
    assert len(got) == n and all(v in (True, False, None) for v in got)
