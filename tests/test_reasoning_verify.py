"""Verification and grounding against scripted model answers (a local OpenAI-compatible server)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tests.fakes.openai_server import ScriptedVLMServer
from workers.masks import box_iou, mask_to_box
from workers.reasoning import (
    GroundedBox,
    OpenAICompatibleBackend,
    Reasoner,
    TokenEvent,
    VerdictEvent,
    VLMError,
)
from workers.reasoning.grounding import from_frame_box
from workers.reasoning.images import decode_data_url, fit_image

H, W = 480, 640
CUP = (400.0, 200.0, 480.0, 300.0)  # the mask's box, frame pixels
CAR = (20.0, 20.0, 120.0, 80.0)  # somewhere else entirely


def _scene() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:H, 0:W]
    frame = np.stack([xs * 255 // (W - 1), ys * 255 // (H - 1), np.full_like(xs, 90)], -1)
    frame = frame.astype(np.uint8)
    mask = np.zeros((H, W), dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in CUP)
    mask[y0:y1, x0:x1] = True
    return frame, mask


def _text(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else content[-1]["text"]


def _is_ground(body: dict[str, Any]) -> bool:
    return _text(body).startswith("Locate")


def _image_size(body: dict[str, Any]) -> tuple[int, int]:
    url = body["messages"][-1]["content"][0]["image_url"]["url"]
    h, w = decode_data_url(url).shape[:2]
    return (w, h)


class ScriptedModel:
    """Descriptions in order; a description mentioning "cup" grounds on the cup, else elsewhere."""

    def __init__(
        self,
        descriptions: list[str],
        wrong_boxes: list[tuple[float, ...]] | None = None,
        relative: bool = False,
    ) -> None:
        self.descriptions = descriptions
        self.wrong_boxes = wrong_boxes or [CAR]
        self.relative = relative
        self.describes = 0
        self.grounds = 0

    def __call__(self, body: dict[str, Any]) -> str:
        if not _is_ground(body):
            text = self.descriptions[min(self.describes, len(self.descriptions) - 1)]
            self.describes += 1
            return text
        self.grounds += 1
        phrase = _text(body)
        box = (
            CUP if "cup" in phrase else self.wrong_boxes[(self.grounds - 1) % len(self.wrong_boxes)]
        )
        coords = "relative1000" if self.relative else "absolute"
        model_box = from_frame_box(
            box, convention=coords, image_size=_image_size(body), frame_size=(W, H)
        )
        return (
            "Here it is:\n```json\n" + json.dumps([{"bbox_2d": model_box, "label": "x"}]) + "\n```"
        )


async def _describe(
    answer: Any, model: str = "qwen2.5-vl", **options: Any
) -> tuple[list[Any], list[dict[str, Any]]]:
    """describe_verified of _scene()'s cup with a Reasoner of `model` (and `options`) against a
    scripted VLM server giving `answer`: the events, and the request bodies the server got."""
    frame, mask = _scene()
    with ScriptedVLMServer(answer=answer) as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, model), **options)
        events = [e async for e in reasoner.describe_verified(frame, mask)]
        await reasoner.backend.aclose()
    return events, srv.requests


async def test_verified_on_the_first_attempt_grounds_on_the_original_frame() -> None:
    model = ScriptedModel(["A red cup on the table."])
    events, requests = await _describe(model, "Qwen/Qwen2.5-VL-3B-Instruct")
    *tokens, verdict = events
    assert all(isinstance(t, TokenEvent) and t.attempt == 1 for t in tokens)
    assert "".join(t.text for t in tokens) == "A red cup on the table."
    assert isinstance(verdict, VerdictEvent)
    assert verdict.verdict == "verified" and verdict.attempts == 1
    assert verdict.description == "A red cup on the table."
    assert verdict.iou > 0.95 and box_iou(verdict.box, CUP) > 0.95
    describe_req, ground_req = requests
    assert describe_req["temperature"] == 0.0
    assert "A red cup on the table." in _text(ground_req)
    # grounding saw the original frame, not the spotlit one (which would give the answer away)
    frame, _ = _scene()
    sent = decode_data_url(ground_req["messages"][-1]["content"][0]["image_url"]["url"])
    assert np.abs(sent.astype(int) - fit_image(frame, 768).astype(int)).mean() < 2
    spotlit = decode_data_url(describe_req["messages"][-1]["content"][0]["image_url"]["url"])
    assert np.abs(spotlit.astype(int) - sent.astype(int)).mean() > 10


async def test_hallucination_is_regenerated_and_verified_on_attempt_two() -> None:
    model = ScriptedModel(["A blue car parked outside.", "A red cup on the table."])
    events, requests = await _describe(model, max_attempts=3)
    verdict = events[-1]
    assert verdict.verdict == "verified" and verdict.attempts == 2
    assert verdict.description == "A red cup on the table."
    assert {t.attempt for t in events[:-1]} == {1, 2}
    second = "".join(t.text for t in events[:-1] if t.attempt == 2)
    assert second == "A red cup on the table."
    describes = [b for b in requests if not _is_ground(b)]
    assert len(describes) == 2 and len(requests) == 4
    # sample, with every parameter explicit, so the server's generation config (Qwen2.5-VL ships
    # top_k=1) cannot turn the retry back into the same greedy answer
    assert describes[0]["temperature"] == 0.0
    retry = describes[1]
    assert retry["temperature"] == 0.7 and retry["top_p"] == 0.8 and retry["top_k"] == 20
    assert isinstance(retry["seed"], int)
    retry_prompt = _text(describes[1])
    assert "look again" in retry_prompt and "A blue car parked outside." in retry_prompt


async def test_never_verified_reports_the_best_attempt_and_its_iou() -> None:
    # Wrong boxes with IoU with CUP of about 0.0, 0.33 and 0.175: attempt 2 is the best.
    wrong = [CAR, (400.0, 200.0, 480.0, 233.0), (400.0, 200.0, 414.0, 300.0)]
    model = ScriptedModel(["A blue car.", "A green bottle.", "A yellow ball."], wrong_boxes=wrong)
    events, requests = await _describe(model, max_attempts=3)
    verdict = events[-1]
    assert verdict.verdict == "unverified" and verdict.attempts == 3
    assert verdict.description == "A green bottle."
    assert verdict.iou == pytest.approx(box_iou(wrong[1], CUP), abs=0.02)
    assert len(requests) == 6


async def test_each_retry_has_a_seed_of_its_own() -> None:
    model = ScriptedModel(["A blue car.", "A green bottle.", "A yellow ball."])
    _, requests = await _describe(model, "Qwen/Qwen3-VL-8B-Instruct", max_attempts=3, seed=10)
    describes = [b for b in requests if not _is_ground(b)]
    assert [d.get("seed") for d in describes] == [None, 12, 13]
    assert all(d["top_k"] == 20 for d in describes[1:])


async def test_junk_grounding_answer_is_unverified_with_iou_zero() -> None:
    def answer(body: dict[str, Any]) -> str:
        return "I cannot see that {{{ [" if _is_ground(body) else "A red cup."

    events, _ = await _describe(answer, "qwen2.5-vl-test", max_attempts=2)
    assert events[-1] == VerdictEvent(
        "A red cup.", "unverified", 0.0, 2, None, tried=("A red cup.", "A red cup.")
    )


@pytest.mark.parametrize(
    "model_name, relative",
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", False),  # absolute pixels of the image it was sent
        ("Qwen/Qwen3-VL-8B-Instruct", True),  # 0..1000 relative
    ],
)
async def test_find_returns_boxes_in_frame_pixels(model_name: str, relative: bool) -> None:
    frame, _ = _scene()
    model = ScriptedModel(["unused"], relative=relative)
    with ScriptedVLMServer(answer=model, model=model_name) as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None))  # name from /v1/models
        boxes = await reasoner.ground(frame, "the red cup")
        await reasoner.backend.aclose()
    (found,) = boxes
    assert isinstance(found, GroundedBox) and found.label == "x"
    # within the rounding of the model's integer coordinates
    assert all(abs(a - b) <= 1.5 for a, b in zip(found.box, CUP, strict=True))
    prompt = _text(srv.requests[0])
    assert "the red cup" in prompt
    assert ("0 to 1000" in prompt) == relative


async def test_find_with_no_match_is_an_empty_list() -> None:
    frame, _ = _scene()
    with ScriptedVLMServer(answer="[]") as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, "qwen2.5-vl-test"))
        assert await reasoner.ground(frame, "a unicorn") == []
        await reasoner.backend.aclose()


async def test_track_verified_on_the_last_keyframe() -> None:
    frame, mask = _scene()
    first_mask = np.zeros_like(mask)
    first_mask[10:50, 10:50] = True  # the object was elsewhere at the start
    model = ScriptedModel(["A red cup slides to the right."])
    with ScriptedVLMServer(answer=model) as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, "qwen2.5-vl-test"))
        events = [
            e async for e in reasoner.describe_track_verified([frame, frame], [first_mask, mask])
        ]
        await reasoner.backend.aclose()
    verdict = events[-1]
    assert verdict.verdict == "verified" and box_iou(verdict.box, mask_to_box(mask)) > 0.95
    track_req = srv.requests[0]
    images = [p for p in track_req["messages"][0]["content"] if p["type"] == "image_url"]
    assert len(images) == 2 and "keyframes" in _text(track_req)


async def test_chat_sends_images_once_then_history_then_question() -> None:
    frame, mask = _scene()
    history = [
        {"role": "assistant", "content": "A red cup."},
        {"role": "user", "content": "Is it full?"},
        {"role": "assistant", "content": "It looks empty."},
    ]
    with ScriptedVLMServer(answer="Ceramic, probably.") as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, "qwen2.5-vl-test"))
        answer = "".join(
            [p async for p in reasoner.chat(frame, mask, history, "What is it made of?")]
        )
        await reasoner.backend.aclose()
    assert answer == "Ceramic, probably."
    messages = srv.requests[0]["messages"]
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert "highlighted" in messages[0]["content"]
    assert messages[1]["content"][0]["type"] == "image_url"
    assert messages[-1]["content"] == "What is it made of?"
    assert all(isinstance(m["content"], str) for m in messages[2:])


async def test_bad_history_is_rejected_before_any_request() -> None:
    frame, mask = _scene()
    with ScriptedVLMServer() as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, "qwen2.5-vl-test"))
        with pytest.raises(ValueError, match=r"history\[0\]"):
            async for _ in reasoner.chat(frame, mask, [{"role": "tool", "content": "x"}], "q"):
                pass
        await reasoner.backend.aclose()
    assert srv.requests == []


class FailingModel(ScriptedModel):
    """ScriptedModel whose describe request number `fail_describe` (1-based), or whose grounding
    request number `fail_ground`, fails with a server error (every time it is retried)."""

    def __init__(
        self, descriptions: list[str], fail_describe: int = 0, fail_ground: int = 0
    ) -> None:
        super().__init__(descriptions)
        self.fail_describe, self.fail_ground = fail_describe, fail_ground

    def __call__(self, body: dict[str, Any]) -> str:
        if _is_ground(body) and self.grounds + 1 == self.fail_ground:
            raise RuntimeError("scripted engine failure")  # the server answers 500
        if not _is_ground(body) and self.describes + 1 == self.fail_describe:
            raise RuntimeError("scripted engine failure")
        return super().__call__(body)


@pytest.mark.parametrize(
    "descriptions, failing, description, attempts",
    [
        # attempt 1 grounds elsewhere; attempt 2's request fails: attempt 1 is kept
        (["A blue car.", "A red cup."], {"fail_describe": 2}, "A blue car.", 2),
        # attempt 1's own grounding fails: its finished description is kept
        (["A red cup."], {"fail_ground": 1}, "A red cup.", 1),
        # attempt 2's grounding fails: attempt 1 (IoU about 0) is still the best
        (["A blue car.", "A red cup."], {"fail_ground": 2}, "A blue car.", 2),
    ],
)
async def test_a_later_failure_keeps_the_finished_description_unverified(
    descriptions: list[str], failing: dict[str, int], description: str, attempts: int
) -> None:
    events, _ = await _describe(FailingModel(descriptions, **failing), max_attempts=3)
    verdict = events[-1]
    assert isinstance(verdict, VerdictEvent)
    assert verdict.verdict == "unverified" and verdict.description == description
    assert verdict.attempts == attempts
    if failing == {"fail_ground": 1}:
        assert verdict.iou is None  # the description kept was never checked: no IoU
    else:
        assert verdict.iou is not None and verdict.iou < 0.05  # checked, and it missed
    assert "failed" in verdict.note  # what went wrong, for the log


async def test_a_failure_before_any_description_is_finished_is_raised() -> None:
    model = FailingModel(["A red cup."], fail_describe=1)
    with pytest.raises(VLMError):
        await _describe(model, max_attempts=3)


async def test_describing_an_empty_mask_is_an_error_event_and_the_object_stays() -> None:
    # The object's mask is empty where it is described (it left the frame): the person is told,
    # the object stays, and no request goes to the VLM.
    from streamer.objects import vlm
    from streamer.objects.events import ErrorMessage
    from streamer.objects.table import ObjectTable

    frame, _ = _scene()
    empty = np.zeros(frame.shape[:2], bool)
    table = ObjectTable(4, "image")
    oid = table.add("click").id
    with ScriptedVLMServer(answer="A red cup.") as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None))
        stream = reasoner.describe_verified(frame, empty)  # refused as the stream runs
        events = [e async for e in vlm.describe(table, oid, stream, frame_index=0)]
        track = reasoner.describe_track_verified([frame], [empty])
        events += [e async for e in vlm.describe(table, oid, track, frame_index=0)]
        await reasoner.backend.aclose()
    errors = [e for e in events if isinstance(e, ErrorMessage)]
    assert len(errors) == 2 and all("mask is empty" in e.message for e in errors)
    assert oid in table and srv.requests == []
