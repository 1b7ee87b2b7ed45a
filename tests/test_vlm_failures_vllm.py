"""A real vLLM server (PyPI's CPU build, a tiny random-weight Qwen2.5-VL) takes what the health
check asks while chat requests fail: the smallest chat, text only, one token. With it answered,
the VLM shows as working again (tests/test_vlm_failures.py has the failing side)."""

from __future__ import annotations

import pytest

from tests.vllm_server import VLLMServer
from workers.reasoning import OpenAICompatibleBackend
from workers.reasoning import openai_backend as openai_module

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]  # the first test waits for start-up


async def test_a_server_that_answers_again_is_seen_working(
    real_vllm: VLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = OpenAICompatibleBackend(real_vllm.base_url, real_vllm.model)
    try:
        # What a chat request the server failed leaves behind (a real vLLM does not fail on cue).
        backend.chat_failure = f"the VLM at {real_vllm.base_url} failed (500): engine died"
        monkeypatch.setattr(openai_module, "CHAT_PROBE_EVERY_S", 0.0)
        health = await backend.health()
        assert health["reachable"] is True and "model_served" not in health, health
        assert backend.chat_failure is None
    finally:
        await backend.aclose()
