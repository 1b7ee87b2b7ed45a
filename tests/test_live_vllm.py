"""Live mode with a real vLLM server: an aiortc client clicks an object and gets its description.

The app runs under uvicorn in a thread with SAM2 tiny (random weights, 256 px) and the reasoner
the settings build for `--vlm-url` (the product's own wiring), pointed at the real server serving
the tiny random-weight Qwen2.5-VL. The text is meaningless; what is checked is that a click leads
to streamed description tokens and a verdict over the websocket, that chat answers, and that a
refusal from the server reaches the page as an error while the session goes on.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.conftest import LiveClient, ServerThread, connected, square_center
from tests.vllm_server import VLLMServer

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]
W, H = 160, 120


async def ask(client: LiveClient, oid: int, question: str, tries: int = 10) -> dict[str, Any]:
    """Send a chat question; its chat_done, or the error that answered it.

    With random SAM2 weights the mask can vanish from a frame, and a question then gets "not
    visible in the newest frame": wait for a frame that shows the object and ask again.
    """
    for _ in range(tries):
        mark = len(client.messages)
        await client.send({"type": "chat", "object_id": oid, "question": question})

        def reply() -> dict[str, Any] | None:
            for m in client.messages[mark:]:
                if m.get("type") == "chat_done" or (
                    m.get("type") == "error" and m.get("request") == "chat"
                ):
                    return m
            return None

        got = await client.wait_for(reply, timeout=120, what="an answer to the chat question")
        if got["type"] == "chat_done" or "not visible" not in got["message"]:
            return got
        await client.wait_message(
            "overlay",
            lambda m: any(o["id"] == oid and o["present"] for o in m["objects"]),
            after=len(client.messages),
            timeout=60,
        )
    raise AssertionError(f"object {oid} was never visible long enough to ask about it")


async def test_click_describes_and_chats_through_the_real_server(
    real_vllm: VLLMServer, sam2_tiny_random: Any, moving_shape: Any
) -> None:
    settings = Settings(
        weights="random",
        sam2_image_size=256,
        device="cpu",
        max_sessions=2,
        session_idle_timeout_s=120,
        vlm_url=real_vllm.base_url,
        vlm_model=real_vllm.model,
        verify_max_attempts=2,
    )
    reasoner, why_off = build_reasoner(settings)
    assert reasoner is not None, why_off
    # Random weights never stop early: shorter answers keep the test to seconds, not minutes.
    reasoner.max_tokens = 24
    reasoner.ground_max_tokens = 24
    app = create_app(settings, vision_model=sam2_tiny_random, reasoner=reasoner)
    with ServerThread(app) as server:
        track = moving_shape(W, H, fps=15)
        async with connected(server, track) as client:
            hello = await client.wait_message("hello", timeout=10)
            assert hello["descriptions"] is True, hello
            await client.wait_message("overlay", timeout=90)

            x, y = square_center(track.index, W, H)
            mark = len(client.messages)
            oid = await client.click_new_object(x, y, timeout=90)

            # The click starts a description: tokens stream from vLLM, then one verdict.
            await client.wait_message(
                "description_token", lambda m: m["object_id"] == oid, after=mark, timeout=120
            )
            verdict = await client.wait_message(
                "verdict", lambda m: m["object_id"] == oid, after=mark, timeout=180
            )
            assert verdict["verdict"] in ("verified", "unverified"), verdict
            tokens = [
                m["text"]
                for m in client.messages[mark:]
                if m.get("type") == "description_token" and m["object_id"] == oid
            ]
            assert len(tokens) > 1 and "".join(tokens).strip()
            assert not client.of_type("error"), client.of_type("error")

            # Chat over two turns.
            for question in ("What is it?", "And its colour?"):
                done = await ask(client, oid, question)
                assert done["type"] == "chat_done" and done["answer"].strip(), done

            # A question past --max-model-len (the protocol's 2000 characters, each 3 tokens for
            # this byte-level tokenizer): vLLM refuses it; the page gets an error that quotes the
            # reason, and the session goes on (tracking, then a normal chat).
            error = await ask(client, oid, ("猫は何色ですか？" * 250)[:2000])
            assert error["type"] == "error" and "context length" in error["message"], error
            assert not error["fatal"], error
            mark = len(client.messages)
            await client.wait_message("overlay", after=mark)
            done = await ask(client, oid, "Briefly?")
            assert done["type"] == "chat_done" and done["answer"].strip(), done
