"""The reasoning API through a real vLLM server (PyPI's CPU build) serving a tiny random-weight Qwen2.5-VL.

What this catches that the scripted server cannot: vLLM's own chat template handling, image
processing and token limits, its real SSE stream, and its real refusals. The weights are random,
so the text is meaningless: the tests assert on the wire (text arrives in streamed pieces, verdict
events arrive, refusals become VLMError subclasses that quote the server's reason, and the same
backend keeps working afterwards), never on what the text says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from tests.vllm_server import LIMIT_IMAGES, VLLMServer
from workers.reasoning import (
    OpenAICompatibleBackend,
    Reasoner,
    TokenEvent,
    VerdictEvent,
    VLMError,
    VLMUnavailable,
)
from workers.reasoning.families import Sampling

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]  # the first test waits for start-up

W, H = 160, 120


def scene(x: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A red box on a dark grey frame, and its mask."""
    frame = np.full((H, W, 3), 40, dtype=np.uint8)
    frame[40:80, x : x + 50] = (220, 40, 40)
    mask = np.zeros((H, W), dtype=bool)
    mask[40:80, x : x + 50] = True
    return frame, mask


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


@pytest.fixture
async def backend(real_vllm: VLLMServer) -> AsyncIterator[OpenAICompatibleBackend]:
    client = OpenAICompatibleBackend(real_vllm.base_url, real_vllm.model)
    yield client
    await client.aclose()


@pytest.fixture
def reasoner(backend: OpenAICompatibleBackend) -> Reasoner:
    # Short answers: random weights never end one early (tests/tiny_vlm.py), so max_tokens is
    # the length of every answer.
    return Reasoner(backend, max_tokens=16, ground_max_tokens=24, max_attempts=2)


async def test_describe_streams_text_from_the_real_server(reasoner: Reasoner) -> None:
    frame, mask = scene()
    pieces = await collect(reasoner.describe(frame, mask))
    assert len(pieces) > 1, pieces  # streamed, not one blob at the end
    assert all(isinstance(p, str) and p for p in pieces)


async def test_chat_over_several_turns(reasoner: Reasoner) -> None:
    frame, mask = scene()
    history: list[dict[str, str]] = []
    for question in ("What is it?", "What colour is it?", "Is it moving?"):
        answer = "".join(await collect(reasoner.chat(frame, mask, history, question)))
        assert answer.strip(), f"no answer to {question!r} after {len(history) // 2} turns"
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    assert len(history) == 6


async def test_ground_gives_boxes_inside_the_frame_or_none(reasoner: Reasoner) -> None:
    frame, _ = scene()
    boxes = await reasoner.ground(frame, "the red box")
    # Random weights rarely write valid JSON: [] is the usual answer, and it is not an error.
    for g in boxes:
        x0, y0, x1, y1 = g.box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H, g


async def test_describe_verified_streams_each_attempt_then_one_verdict(reasoner: Reasoner) -> None:
    frame, mask = scene()
    events = await collect(reasoner.describe_verified(frame, mask))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    verdicts = [e for e in events if isinstance(e, VerdictEvent)]
    assert tokens and len(verdicts) == 1 and events[-1] is verdicts[0], events
    verdict = verdicts[0]
    assert verdict.verdict in ("verified", "unverified") and 0.0 <= verdict.iou <= 1.0
    attempts = sorted({t.attempt for t in tokens})
    assert attempts == list(range(1, verdict.attempts + 1)), (attempts, verdict)
    if verdict.verdict == "unverified":  # the usual outcome of random text
        assert verdict.attempts == reasoner.max_attempts
    # The text kept is one attempt's streamed text.
    texts = {a: "".join(t.text for t in tokens if t.attempt == a).strip() for a in attempts}
    assert verdict.description in texts.values()


async def test_two_answers_sampled_at_a_temperature_differ(
    backend: OpenAICompatibleBackend,
) -> None:
    # What a verification retry relies on: the same request sampled as a retry is (temperature,
    # top_p, top_k and a seed of its own, all sent) gives another answer, although the tiny model
    # ships Qwen2.5-VL's generation_config.json (top_k=1), which vLLM applies to whatever a
    # request leaves out. (Retries also change the prompt; this isolates the sampling.)
    frame, mask = scene()
    reasoner = Reasoner(backend)
    family = await reasoner.family()
    assert family.name == "qwen2.5-vl"
    messages = reasoner.describe_messages(frame, mask)

    async def answer(seed: int) -> str:
        r = family.retry_sampling
        sampling = Sampling(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, seed=seed)
        return "".join(
            await collect(backend.stream_chat(messages, max_tokens=16, sampling=sampling))
        )

    first, other, again = await answer(1), await answer(2), await answer(1)
    assert first != other, (first, other)
    assert first == again  # a retry is reproducible from its seed
    greedy = ["".join(await collect(backend.stream_chat(messages, max_tokens=16))) for _ in "ab"]
    assert greedy[0] == greedy[1]  # the first attempt stays the model's one best answer


async def test_describe_track_with_several_keyframes(reasoner: Reasoner) -> None:
    scenes = [scene(x) for x in (10, 40, 70, 100)]
    pieces = await collect(reasoner.describe_track([f for f, _ in scenes], [m for _, m in scenes]))
    assert len(pieces) > 1 and "".join(pieces).strip()


async def test_more_images_than_the_server_allows_is_a_clear_error(reasoner: Reasoner) -> None:
    scenes = [scene(10 + 10 * i) for i in range(LIMIT_IMAGES + 1)]
    with pytest.raises(VLMError, match=f"At most {LIMIT_IMAGES} image"):
        await collect(reasoner.describe_track([f for f, _ in scenes], [m for _, m in scenes]))
    # The same backend goes on working.
    frame, mask = scene()
    assert await collect(reasoner.describe(frame, mask))


async def test_a_prompt_past_max_model_len_is_a_clear_error(reasoner: Reasoner) -> None:
    frame, mask = scene()
    question = "Tell me about it. " * 2000  # ~8000 tokens against --max-model-len 4096
    with pytest.raises(VLMError, match="maximum context length"):
        await collect(reasoner.chat(frame, mask, [], question))
    assert await collect(reasoner.chat(frame, mask, [], "And now, briefly?"))


async def test_a_refusal_reads_as_the_servers_whole_sentence(reasoner: Reasoner) -> None:
    frame, mask = scene()
    with pytest.raises(VLMError) as refused:
        await collect(reasoner.chat(frame, mask, [], "Tell me about it. " * 2000))
    message = str(refused.value)
    assert "{" not in message, message  # no JSON body (nor its Python repr)
    assert "Please reduce the length of the input prompt." in message, message


async def test_an_unknown_model_name_is_a_clear_error(real_vllm: VLLMServer) -> None:
    backend = OpenAICompatibleBackend(real_vllm.base_url, "no-such-model")
    try:
        health = await backend.health()
        assert health["reachable"] is True
        assert "no-such-model" in health["detail"] and real_vllm.model in health["detail"]
        frame, mask = scene()
        with pytest.raises(VLMError, match="no-such-model"):
            await collect(Reasoner(backend, max_tokens=8).describe(frame, mask))
    finally:
        await backend.aclose()


async def _metric(server: VLLMServer, name: str) -> float:
    """The sum of one of vLLM's Prometheus series (over its engines)."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(server.base_url.removesuffix("/v1") + "/metrics")).text
    lines = [
        ln for ln in text.splitlines() if ln.startswith(name + "{") or ln.startswith(name + " ")
    ]
    assert lines, f"vLLM's /metrics has no {name}"
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


async def _generating(server: VLLMServer) -> bool:
    """Whether the server is generating an answer now: tokens are still being generated. (Its
    num_requests_running gauge alone said so for an answer already sent whole: vLLM sets it at
    each engine step, and no step comes after the last one to set it back to 0.)"""
    before = await _metric(server, "vllm:generation_tokens_total")
    await asyncio.sleep(0.3)
    return await _metric(server, "vllm:generation_tokens_total") > before


async def _describe_killed_mid_answer(
    server: VLLMServer, reasoner: Reasoner
) -> tuple[list[str], VLMError | None, bool]:
    """Describe, and SIGKILL the server once the first piece has come while the server is still
    generating the answer: (the pieces, the error, whether it was killed). On a loaded machine
    vLLM's API process can send a whole answer in one burst at its end: then it is not killed."""
    frame, mask = scene()
    got: list[str] = []
    killed = False
    try:
        async for piece in reasoner.describe(frame, mask):
            got.append(piece)
            if len(got) == 1 and await _generating(server):
                server.kill()
                killed = True
    except VLMError as exc:
        return got, exc, killed
    return got, None, killed


async def test_server_killed_mid_stream_then_started_again(
    real_vllm: VLLMServer, backend: OpenAICompatibleBackend
) -> None:
    """A server that dies mid-answer (a piece came, the rest was being generated) is a
    VLMError that is not "no server"; while it is down, "no server"; started again, the same
    backend answers. (Killed after the 3rd piece, it failed under the full suite's load: the
    answer had all come before the 3rd piece was read; then no kill is mid-answer, and the test
    says so as a skip.)"""
    # As long an answer as the model's context allows (vLLM cuts max_tokens to what is left):
    # a small picture leaves the most.
    reasoner = Reasoner(backend, max_tokens=4000, max_side=224)
    for _ in range(3):  # until a describe is caught mid-answer
        got, dropped, killed = await _describe_killed_mid_answer(real_vllm, reasoner)
        if killed and dropped is not None:
            break
        # Not killed, or killed just as the answer ended (all of it already sent): it answered
        # whole; the server is started again where it was killed, and the next describe tried.
        assert dropped is None, dropped
        if killed:
            real_vllm.start()
    else:
        # Seen in the full suite on 2 cores: what this tests could not be set up, said as a skip.
        pytest.skip(
            "vLLM sent each of 3 answers whole before its first piece came (a loaded machine)"
        )
    assert got and isinstance(dropped, VLMError), (got, dropped)
    assert not isinstance(dropped, VLMUnavailable), dropped  # it was there, then went
    assert str(dropped)
    frame, mask = scene()

    # While it is down: a clear "no server" error, not a hang.
    short = Reasoner(backend, max_tokens=8)
    with pytest.raises(VLMUnavailable, match="no VLM server"):
        await collect(short.describe(frame, mask))

    # Started again on the same port: the same backend describes again, no restart of ours.
    real_vllm.start()
    assert await collect(short.describe(frame, mask))
