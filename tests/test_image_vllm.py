"""Image mode with a real vLLM server: describe and chat stream over HTTP (NDJSON), and removing an
object mid-answer ends its request at the server (the answer runs as the object's task,
http/claim.py): the image's VLM share is free and the server answers the next object.

SAM2 tiny on random weights and the tiny random-weight Qwen2.5-VL (tests/vllm_server.py): the
words are meaningless; the wire, the server's streaming and its handling of a request cut off
mid-answer are real.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.test_image_api import served, uploaded
from tests.vllm_server import VLLMServer

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


async def stream(c: Any, url: str, body: dict[str, Any] | None = None, **on: Any) -> list[dict]:
    """The NDJSON answer's events; `on[type]` (an asyncio.Event) is set at the first of its type."""
    events: list[dict] = []
    async with c.stream("POST", url, json=body, timeout=300) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line:
                events.append(json.loads(line))
                if events[-1]["type"] in on:
                    on[events[-1]["type"]].set()
    return events


async def test_describe_chat_and_a_remove_mid_answer_over_the_real_server(
    real_vllm: VLLMServer, sam2_tiny_random: Any, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        weights="random",
        device="cpu",
        vlm_url=real_vllm.base_url,
        vlm_model=real_vllm.model,
        verify_max_attempts=1,
        vlm_max_in_flight_per_session=1,  # the one removed holds all of the image's share
    )
    reasoner, why_off = build_reasoner(settings)
    assert reasoner is not None, why_off
    reasoner.max_tokens = 24  # random weights never stop early: short answers keep it to seconds
    reasoner.ground_max_tokens = 24
    app = create_app(settings, vision_model=sam2_tiny_random, reasoner=reasoner, load_vision=False)
    async with served(app) as (_, c):
        iid, clicks = await uploaded(c)
        first = (await c.post(clicks, json={"x": 70, "y": 60})).json()["object"]["id"]
        url = f"/api/images/{iid}/objects"

        # Described: tokens from vLLM, then one verdict; then a chat turn.
        described = await stream(c, f"{url}/{first}/describe")
        kinds = [e["type"] for e in described]
        assert kinds[0] == "description_start" and "description_token" in kinds, kinds
        assert kinds.count("verdict") == 1, kinds
        chat = await stream(c, f"{url}/{first}/chat", {"question": "What colour is it?"})
        assert chat[-1]["type"] == "chat_done" and chat[-1]["answer"].strip(), chat[-1]

        # Asked again with room for a long answer, and removed at its first word.
        reasoner.max_tokens = 2000
        talking = asyncio.Event()
        again = asyncio.ensure_future(
            stream(c, f"{url}/{first}/describe", description_token=talking)
        )
        await asyncio.wait_for(talking.wait(), 300)
        assert (await c.delete(f"{url}/{first}")).status_code == 200
        cut = await asyncio.wait_for(again, 30)  # ended with its object, not with the answer
        assert "verdict" not in [e["type"] for e in cut]

        # The share is free and the server answers the next object.
        reasoner.max_tokens = 24
        second = (await c.post(clicks, json={"x": 20, "y": 20})).json()["object"]["id"]
        after = await stream(c, f"{url}/{second}/describe")
        assert [e["type"] for e in after].count("verdict") == 1, after
