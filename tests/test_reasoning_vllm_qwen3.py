"""The reasoning API through a real vLLM server serving tiny random-weight Qwen3-VL models.

Qwen3-VL differs from Qwen2.5-VL where it matters to us: 16 px patches (32 px grid), boxes in
0-1000 coordinates, and the *Thinking* variants, whose chat template opens the answer with <think>
and which are served with `--reasoning-parser qwen3`. Random weights: the tests check the wire, not
the words (see tests/test_reasoning_vllm.py). A random model never closes its </think> on purpose,
so a thinking answer is all thinking, up to max_tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.test_reasoning_vllm import H, W, collect, scene
from tests.vllm_server import VLLMServer, wire_chat
from workers.reasoning import (
    OpenAICompatibleBackend,
    Reasoner,
    TokenEvent,
    VerdictEvent,
    VLMBadResponse,
)
from workers.reasoning.backends import Thinking

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]


@pytest.fixture
async def qwen3(real_vllm_qwen3: VLLMServer) -> AsyncIterator[Reasoner]:
    backend = OpenAICompatibleBackend(real_vllm_qwen3.base_url, real_vllm_qwen3.model)
    yield Reasoner(backend, max_tokens=16, ground_max_tokens=24, max_attempts=2)
    await backend.aclose()


async def test_qwen3_describe_streams_text(qwen3: Reasoner) -> None:
    frame, mask = scene()
    pieces = await collect(qwen3.describe(frame, mask))
    assert len(pieces) > 1 and all(isinstance(p, str) and p for p in pieces), pieces


async def test_qwen3_ground_gives_boxes_inside_the_frame_or_none(qwen3: Reasoner) -> None:
    frame, _ = scene()
    for g in await qwen3.ground(frame, "the red box"):
        x0, y0, x1, y1 = g.box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H, g


async def test_qwen3_describe_verified_ends_with_one_verdict(qwen3: Reasoner) -> None:
    frame, mask = scene()
    events = await collect(qwen3.describe_verified(frame, mask))
    assert any(isinstance(e, TokenEvent) for e in events)
    assert isinstance(events[-1], VerdictEvent)
    assert sum(isinstance(e, VerdictEvent) for e in events) == 1


async def test_qwen3_describe_track_with_several_keyframes(qwen3: Reasoner) -> None:
    scenes = [scene(x) for x in (10, 50, 90)]
    pieces = await collect(qwen3.describe_track([f for f, _ in scenes], [m for _, m in scenes]))
    # random weights: how many pieces 16 tokens make depends on the bytes they decode to
    assert pieces and "".join(pieces).strip()


# -- the thinking model ------------------------------------------------------------------------


def _reasoning_of(chunks: list[dict]) -> tuple[str, str]:
    """(thinking, answer) text of a chat-completions stream; vLLM 0.32 names the thinking
    `reasoning`, older versions `reasoning_content`."""
    thinking, answer = [], []
    for chunk in chunks:
        for choice in chunk.get("choices", []):
            delta = choice.get("delta", {})
            thinking.append(delta.get("reasoning") or delta.get("reasoning_content") or "")
            answer.append(delta.get("content") or "")
    return "".join(thinking), "".join(answer)


async def test_thinking_model_streams_its_thinking_apart_from_the_answer(
    real_vllm_qwen3_thinking: VLLMServer,
) -> None:
    # vLLM's own wire, which the client must read: with --reasoning-parser the thinking comes as
    # its own delta field, never as content (here all of it is thinking: see the module doc).
    frame, mask = scene()
    backend = OpenAICompatibleBackend(
        real_vllm_qwen3_thinking.base_url, real_vllm_qwen3_thinking.model
    )
    reasoner = Reasoner(backend)
    assert (await reasoner.family()).name == "qwen3-vl-thinking"  # from the served name
    messages = reasoner.describe_messages(frame, mask)
    await backend.aclose()
    chunks = await wire_chat(
        real_vllm_qwen3_thinking, {"messages": messages, "max_tokens": 16, "temperature": 0}
    )
    thinking, answer = _reasoning_of(chunks)
    assert thinking.strip(), chunks[:3]
    assert thinking.strip() not in answer, (thinking, answer)


async def test_thinking_never_becomes_the_description(real_vllm_qwen3_thinking: VLLMServer) -> None:
    frame, mask = scene()
    backend = OpenAICompatibleBackend(
        real_vllm_qwen3_thinking.base_url, real_vllm_qwen3_thinking.model
    )
    try:
        # a thinking model samples even its first answer: a seed keeps the run reproducible
        reasoner = Reasoner(backend, max_tokens=24, ground_max_tokens=24, max_attempts=1, seed=0)
        await reasoner.family()  # the message builders below need it (the async calls ask)
        chunks = await wire_chat(
            real_vllm_qwen3_thinking,
            {
                "messages": reasoner.describe_messages(frame, mask),
                "max_tokens": 24,
                "temperature": 0,
            },
        )
        thinking, _ = _reasoning_of(chunks)
        assert thinking.strip()
        # A random model never closes its thinking: the whole budget (the answer's plus the
        # family's thinking allowance) goes to it, and the person is told so; none of it is
        # ever shown as a description.
        events: list = []
        with pytest.raises(VLMBadResponse, match="thought for its whole budget") as refused:
            async for event in reasoner.describe_verified(frame, mask):
                events.append(event)
        assert not [e for e in events if isinstance(e, (TokenEvent, VerdictEvent))], events
        assert thinking.strip()[:40] not in str(refused.value)
    finally:
        await backend.aclose()


async def test_a_long_thinking_phase_comes_as_many_reasoning_deltas(
    real_vllm_qwen3_thinking: VLLMServer,
) -> None:
    """1500 tokens of thinking come from vLLM's qwen3 reasoning parser as reasoning deltas, token
    by token, not withheld until `</think>` and sent as one: many Thinking pieces and no answer,
    each of which the backend counts as activity for its first-token deadline
    (tests/test_reasoning_openai.py::test_thinking_counts_as_activity_and_comes_as_thinking
    checks that rule with exact timings on a scripted server). When the pieces came is not
    asserted: this tiny model can finish its 1500 tokens before vLLM's API process has sent the
    first one (its prefill then took half the answer's time on a loaded CI-like run, and the
    server's own running-request count read 0 at the first piece), so timing says nothing here."""
    server = real_vllm_qwen3_thinking
    backend = OpenAICompatibleBackend(server.base_url, server.model, total_timeout_s=600.0)
    try:
        frame, mask = scene()
        reasoner = Reasoner(backend)
        await reasoner.family()
        came = [
            piece
            async for piece in backend.stream_chat(
                reasoner.describe_messages(frame, mask), max_tokens=1500
            )
        ]
    finally:
        await backend.aclose()
    # More than a handful, not ~1500: vLLM merges the deltas a slow reader has not taken yet.
    assert len(came) > 10 and all(isinstance(piece, Thinking) for piece in came)
    assert sum(len(piece.text) for piece in came) > 1000
