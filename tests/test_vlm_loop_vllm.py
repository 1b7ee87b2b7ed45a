"""Checked Find's yes/no and auto-refine's next click over the wire of a real vLLM server (the tiny
random-weight Qwen-VL the real_vllm fixture serves): the requests are accepted as built (images,
prompt, sampling) and the answers, junk as they are from random weights, are read without error:
a verdict or None, and a click, done, or 'unclear' with the model's words."""

from __future__ import annotations

import numpy as np
import pytest

from tests.vllm_server import VLLMServer
from workers.reasoning import OpenAICompatibleBackend, Reasoner

pytestmark = pytest.mark.timeout(600)


async def test_check_and_next_click_over_a_real_vllm(real_vllm: VLLMServer) -> None:
    server = real_vllm
    frame = np.full((120, 160, 3), 90, np.uint8)
    frame[40:80, 50:90] = (230, 20, 20)
    mask = np.zeros((120, 160), bool)
    mask[40:80, 50:90] = True
    backend = OpenAICompatibleBackend(server.base_url, server.model)
    reasoner = Reasoner(backend)
    try:
        check = await reasoner.check_match(frame, mask, "a red square")
        step = await reasoner.next_click(frame, mask, "a red square")
    finally:
        await backend.aclose()
    assert check.match in (True, False, None) and isinstance(check.answer, str)
    assert step.action in ("positive", "negative", "done", "unclear")
    if step.action in ("positive", "negative"):
        assert step.point is not None
        assert 0 <= step.point[0] < 160 and 0 <= step.point[1] < 120
    else:
        assert step.point is None


async def test_find_all_classification_over_a_real_vllm(real_vllm: VLLMServer) -> None:
    """Find-all's batched request (several Spotlights, one question) is accepted by vLLM and
    its answer, however junk, is read as one verdict or None per region."""
    server = real_vllm
    frame = np.full((120, 160, 3), 90, np.uint8)
    frame[40:80, 50:90] = (230, 20, 20)
    masks = [np.zeros((120, 160), bool) for _ in range(3)]
    masks[0][40:80, 50:90] = True
    masks[1][0:30, 0:40] = True
    masks[2][90:120, 100:160] = True
    backend = OpenAICompatibleBackend(server.base_url, server.model)
    reasoner = Reasoner(backend)
    try:
        answers = await reasoner.classify_regions(frame, masks, "a red square")
    finally:
        await backend.aclose()
    assert len(answers.matches) == 3 and isinstance(answers.answer, str)
    assert all(m in (True, False, None) for m in answers.matches)
