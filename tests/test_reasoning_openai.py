"""The OpenAI-compatible backend against a local server that streams vLLM's wire format."""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import aclosing

import numpy as np
import pytest

from tests.fakes.openai_server import ScriptedVLMServer, free_port, split_pieces
from workers.reasoning import (
    OpenAICompatibleBackend,
    Reasoner,
    VLMBadResponse,
    VLMBusy,
    VLMTimeout,
    VLMUnavailable,
    render_spotlight,
)
from workers.reasoning.backends import Thinking
from workers.reasoning.families import Sampling
from workers.reasoning.images import decode_data_url, fit_image

ANSWER = "A red ceramic mug with a chipped handle, standing on a wooden desk."
USER = [{"role": "user", "content": "describe it"}]


async def _collect(backend: OpenAICompatibleBackend, messages=USER, **kw) -> list[str]:
    async with aclosing(backend.stream_chat(messages, **kw)) as pieces:
        return [p async for p in pieces]


async def _until(cond, timeout: float = 5.0) -> None:
    """Wait for a condition the server reports (no fixed sleeps standing in for ordering)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def test_tokens_stream_in_order_and_model_comes_from_models_endpoint() -> None:
    with ScriptedVLMServer(answer=ANSWER) as srv:
        backend = OpenAICompatibleBackend(srv.url, model=None)
        try:
            sampling = Sampling(temperature=0.3, top_p=0.9, top_k=5, seed=7)
            pieces = await _collect(backend, max_tokens=64, sampling=sampling)
        finally:
            await backend.aclose()
    assert pieces == split_pieces(ANSWER)
    assert "".join(pieces) == ANSWER
    (body,) = srv.requests
    assert body["model"] == srv.model  # model=None asked GET /v1/models
    assert body["stream"] is True and body["max_tokens"] == 64
    # every sampling parameter is sent, so the server's generation-config defaults cannot apply
    assert (body["temperature"], body["top_p"], body["top_k"], body["seed"]) == (0.3, 0.9, 5, 7)
    assert body["messages"] == USER


async def test_greedy_requests_say_so_explicitly() -> None:
    with ScriptedVLMServer(answer=ANSWER) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m")
        await _collect(backend)
        await backend.aclose()
    (body,) = srv.requests
    assert body["temperature"] == 0.0 and body["top_p"] == 1.0
    assert "top_k" not in body  # not an OpenAI field: sent only when it cuts anything


async def test_slow_first_token_times_out_quickly() -> None:
    with ScriptedVLMServer(answer=ANSWER, first_token_delay_s=5.0) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m", first_token_timeout_s=0.3)
        with pytest.raises(VLMTimeout) as info:
            await _collect(backend)
        await backend.aclose()
    assert info.value.phase == "first_token" and "first token" in str(info.value)
    assert len(srv.requests) == 1  # a timeout is not retried


async def test_total_timeout_after_tokens_started() -> None:
    with ScriptedVLMServer(answer=ANSWER, token_delay_s=0.2) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m", total_timeout_s=0.5)
        got: list[str] = []
        with pytest.raises(VLMTimeout) as info:
            async with aclosing(backend.stream_chat(USER)) as pieces:
                async for p in pieces:
                    got.append(p)
        await backend.aclose()
    assert info.value.phase == "total"
    assert 1 <= len(got) < len(split_pieces(ANSWER))


async def test_server_down_is_unavailable_with_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAICompatibleBackend(url, "m", retry_backoff_s=0.01)
    with pytest.raises(VLMUnavailable) as info:
        await _collect(backend)
    message = str(info.value)
    assert f"no VLM server at {url}" in message
    assert "`vllm serve m`" in message and "--vlm-url" in message  # the model it was given
    health = await backend.health()
    assert health["reachable"] is False and "no VLM server" in health["detail"]
    await backend.aclose()


@pytest.mark.parametrize(
    ("script", "error", "streamed"),
    [
        pytest.param({"malformed_after": 2}, "malformed chunk", 2, id="malformed-chunk"),
        pytest.param(
            {"cut_after": 3}, "ended before the answer did, after 3 pieces", 3, id="cut-short"
        ),
    ],
)
async def test_a_broken_stream_is_bad_response_after_its_pieces_and_not_retried(
    script: dict[str, int], error: str, streamed: int
) -> None:
    with ScriptedVLMServer(answer=ANSWER, **script) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m")
        got: list[str] = []
        with pytest.raises(VLMBadResponse, match=error):
            async with aclosing(backend.stream_chat(USER)) as pieces:
                async for p in pieces:
                    got.append(p)
        await backend.aclose()
    assert got == split_pieces(ANSWER)[:streamed]
    assert len(srv.requests) == 1  # tokens were streamed: never retried


async def test_garbage_body_is_bad_response() -> None:
    with ScriptedVLMServer(garbage_body=True) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m")
        with pytest.raises(VLMBadResponse, match="did not answer as an OpenAI-compatible server"):
            await _collect(backend)
        await backend.aclose()


async def test_503_is_retried_once_then_bad_response_with_status() -> None:
    with ScriptedVLMServer(status_code=503) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m", retries=1, retry_backoff_s=0.01)
        with pytest.raises(VLMBadResponse) as info:
            await _collect(backend)
        await backend.aclose()
    assert info.value.status == 503 and "503" in str(info.value)
    assert "scripted failure" in str(info.value)  # a snippet of the body
    assert srv.statuses == [503, 503]  # one retry, in this one layer


async def test_503_once_then_success_on_retry() -> None:
    with ScriptedVLMServer(answer=ANSWER, status_code=503, fail_times=1) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m", retry_backoff_s=0.01)
        assert "".join(await _collect(backend)) == ANSWER
        await backend.aclose()
    assert srv.statuses == [503, 200]


async def test_4xx_is_not_retried() -> None:
    with ScriptedVLMServer(status_code=400) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m", retry_backoff_s=0.01)
        with pytest.raises(VLMBadResponse) as info:
            await _collect(backend)
        await backend.aclose()
    assert info.value.status == 400 and srv.statuses == [400]


async def test_too_many_in_flight_is_busy_at_once_while_others_finish() -> None:
    with ScriptedVLMServer(answer=ANSWER, first_token_delay_s=0.5) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m", max_in_flight=2)
        running = [asyncio.create_task(_collect(backend)) for _ in range(2)]
        await _until(lambda: srv.in_flight == 2)
        with pytest.raises(VLMBusy, match="limit 2"):
            await _collect(backend)
        assert len(srv.requests) == 2  # refused here, never queued on the server
        results = await asyncio.gather(*running)
        assert all("".join(r) == ANSWER for r in results)
        assert "".join(await _collect(backend)) == ANSWER  # slots are back
        await backend.aclose()
    assert srv.max_concurrent == 2 and len(srv.requests) == 3


async def test_stopping_early_frees_the_slot() -> None:
    with ScriptedVLMServer(answer=ANSWER, token_delay_s=0.05) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m", max_in_flight=1)
        async with aclosing(backend.stream_chat(USER)) as pieces:
            async for _ in pieces:
                break
        assert backend.in_flight == 0
        assert "".join(await _collect(backend)) == ANSWER
        await backend.aclose()


FRAME = np.full((120, 160, 3), 100, np.uint8)
MASK = np.zeros((120, 160), bool)
MASK[30:90, 40:120] = True
STREAMS = {
    "describe": lambda r: r.describe(FRAME, MASK),
    "describe_verified": lambda r: r.describe_verified(FRAME, MASK),
    "chat": lambda r: r.chat(FRAME, MASK, [], "what is it made of?"),
    "describe_track": lambda r: r.describe_track([FRAME, FRAME], [MASK, MASK]),
    "describe_track_verified": lambda r: r.describe_track_verified([FRAME, FRAME], [MASK, MASK]),
}


@pytest.mark.parametrize("kind", list(STREAMS))
async def test_a_stopped_description_or_answer_frees_its_slot_at_once(kind: str) -> None:
    """Removing an object mid-description (or leaving) closes the reasoner's stream: the request
    to the server ends then, not when the garbage collector gets to it, so the next one at
    --vlm-max-in-flight 1 is not told "busy"."""
    with ScriptedVLMServer(answer=ANSWER, token_delay_s=0.05) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m", max_in_flight=1)
        reasoner = Reasoner(backend, family="qwen2.5-vl")
        async with aclosing(STREAMS[kind](reasoner)) as events:
            async for _ in events:
                break
        assert backend.in_flight == 0
        assert "".join(await _collect(backend)) == ANSWER
        await _until(lambda: srv.cancelled == 1)  # the server saw the stopped request end
        await backend.aclose()


async def test_health_reports_model() -> None:
    with ScriptedVLMServer(model="Qwen/Qwen2.5-VL-3B-Instruct") as srv:
        backend = OpenAICompatibleBackend(srv.url, None)
        health = await backend.health()
        await backend.aclose()
    assert health == {
        "reachable": True,
        "detail": "1 model served: Qwen/Qwen2.5-VL-3B-Instruct",
        "model": "Qwen/Qwen2.5-VL-3B-Instruct",
    }


async def test_images_arrive_as_data_urls_of_the_resized_spotlight() -> None:
    ys, xs = np.mgrid[0:720, 0:1280]
    # smooth gradients: JPEG keeps them close, so the decoded image can be compared pixelwise
    frame = np.stack([xs * 255 // 1279, ys * 255 // 719, (xs + ys) * 255 // 1998], -1).astype(
        np.uint8
    )
    mask = np.zeros((720, 1280), dtype=bool)
    mask[300:340, 600:660] = True  # small: a zoom crop goes too
    with ScriptedVLMServer(answer=ANSWER) as srv:
        reasoner = Reasoner(
            OpenAICompatibleBackend(srv.url, "m"), max_side=768, family="qwen2.5-vl"
        )
        text = "".join([p async for p in reasoner.describe(frame, mask)])
        await reasoner.backend.aclose()
    assert text == ANSWER
    (body,) = srv.requests
    parts = body["messages"][0]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    spot = render_spotlight(frame, mask)
    full = decode_data_url(urls[0])
    expected = fit_image(spot.image, 768)
    assert full.shape == expected.shape == (420, 756, 3)  # multiples of 28, longest side <= 768
    assert np.abs(full.astype(int) - expected.astype(int)).mean() < 2  # JPEG, quality 90
    crop = decode_data_url(urls[1])
    assert crop.shape == fit_image(spot.crop, 768).shape
    assert parts[-1]["type"] == "text" and "zoomed-in" in parts[-1]["text"]


async def test_thinking_counts_as_activity_and_comes_as_thinking() -> None:
    # vLLM with --reasoning-parser: reasoning deltas first (either field name), then the answer.
    # Content arrives only after the first-token deadline; the reasoning before it keeps it alive.
    reasoning = [{"reasoning": "Let me look."}, {"reasoning_content": " It is red."}] * 3
    with ScriptedVLMServer(answer=[[*reasoning, "A red", " mug."]], token_delay_s=0.15) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m", first_token_timeout_s=0.4)
        pieces = await _collect(backend)
        await backend.aclose()
    thinking = [p.text for p in pieces if isinstance(p, Thinking)]
    assert thinking == ["Let me look.", " It is red."] * 3
    assert [p for p in pieces if isinstance(p, str)] == ["A red", " mug."]


async def test_an_error_event_mid_stream_is_bad_response_with_the_servers_words() -> None:
    with ScriptedVLMServer(answer=ANSWER, error_after=2) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m")
        with pytest.raises(VLMBadResponse, match="mid-stream") as info:
            await _collect(backend)
        await backend.aclose()
    assert "scripted engine failure" in str(info.value)
    assert len(srv.requests) == 1


async def test_one_connection_serves_consecutive_requests() -> None:
    # A response closed before its body ended takes its connection with it; a TCP connect per
    # request cost more than everything else we do for one.
    with ScriptedVLMServer(answer=ANSWER) as srv:
        backend = OpenAICompatibleBackend(srv.url, "m")
        for _ in range(3):
            assert "".join(await _collect(backend)) == ANSWER
        await backend.aclose()
    assert len(srv.client_ports) == 3 and len(set(srv.client_ports)) == 1


async def test_connect_timeout_when_the_server_accepts_nothing() -> None:
    # A listener with a full accept queue: Linux drops further SYNs, so connect() hangs.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    backend = OpenAICompatibleBackend(
        f"http://127.0.0.1:{port}/v1", "m", connect_timeout_s=0.2, retry_backoff_s=0.01
    )
    try:
        with pytest.raises(VLMTimeout) as info:
            await _collect(backend)
    finally:
        await backend.aclose()
        for s in [*fillers, listener]:
            s.close()
    assert info.value.phase == "connect" and "connecting to" in str(info.value)


@pytest.mark.parametrize(
    "status, model, served, said",
    [
        (404, "m", None, "answered 404"),  # no /models route: requests go to the model named
        (404, None, False, "pass --vlm-model"),  # ... and with no model named, nothing to ask
        (401, "m", False, "check --vlm-api-key"),  # refused: every request would be
        (500, "m", False, "answered 500"),  # failing
    ],
)
async def test_a_server_whose_model_list_fails_answers_all_the_same(
    status: int, model: str | None, served: bool | None, said: str
) -> None:
    """It answered: it is up (not "does not answer", which disables the page's VLM controls), and
    whether it can serve the model says what is wrong."""
    with ScriptedVLMServer(models_status_code=status) as srv:
        backend = OpenAICompatibleBackend(srv.url, model)
        health = await backend.health()
        await backend.aclose()
    assert health["reachable"] is True
    assert health.get("model_served") is served
    assert said in health["detail"]


async def test_a_server_without_a_model_list_describes_with_the_model_named() -> None:
    """No GET /models (404): the family is told by the configured name, and descriptions work."""
    name = "Qwen/Qwen2.5-VL-3B-Instruct"
    with ScriptedVLMServer(answer="A red cup.", model=name, models_status_code=404) as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, name))
        frame = np.zeros((120, 160, 3), np.uint8)
        mask = np.zeros((120, 160), bool)
        mask[40:80, 50:110] = True
        text = "".join([p async for p in reasoner.describe(frame, mask)])
        status = await reasoner.family_status()
        await reasoner.backend.aclose()
    assert text == "A red cup."
    assert status["family"] == "qwen2.5-vl"
    assert [b["model"] for b in srv.requests] == [name]
