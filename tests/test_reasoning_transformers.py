"""The in-process transformers backend on a tiny Qwen2.5-VL built here from a config (no download).

Random weights: the text is gibberish, but it is the real Qwen2.5-VL code path: chat template,
image processor, vision tower, generate with a streamer, pieces through the VLMBackend interface.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.tiny_vlm import IN_PROCESS, build  # noqa: E402
from workers.reasoning import (  # noqa: E402
    Reasoner,
    TransformersBackend,
    VLMBackend,
    VLMBusy,
    VLMError,
)
from workers.reasoning.images import data_url, encode_jpeg  # noqa: E402


@pytest.fixture(scope="module")
def tiny_qwen() -> tuple[Any, Any]:
    return build(IN_PROCESS)


def _image_message(text: str = "describe the highlighted object") -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(84, 112, 3), dtype=np.uint8)
    part = {"type": "image_url", "image_url": {"url": data_url(encode_jpeg(image))}}
    return [{"role": "user", "content": [part, {"type": "text", "text": text}]}]


async def test_images_in_streamed_text_out(tiny_qwen) -> None:
    backend = TransformersBackend.from_pretrained_objects(*tiny_qwen, name="tiny-qwen2.5-vl")
    assert isinstance(backend, VLMBackend)
    async with aclosing(backend.stream_chat(_image_message(), max_tokens=12)) as stream:
        pieces = [p async for p in stream]
    assert pieces and all(isinstance(p, str) and p for p in pieces)
    prompt = backend.last_prompt
    assert prompt is not None
    assert "<|vision_start|><|image_pad|><|vision_end|>describe the highlighted object" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    health = await backend.health()
    assert health["reachable"] is True and health["model"] == "tiny-qwen2.5-vl"
    await backend.aclose()


async def test_image_tokens_expand_to_the_vision_grid(tiny_qwen) -> None:
    model, processor = tiny_qwen
    backend = TransformersBackend.from_pretrained_objects(model, processor)
    inputs = await asyncio.get_running_loop().run_in_executor(
        None, backend._inputs, _image_message()
    )
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    n_pad = int((inputs["input_ids"] == image_pad).sum())
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert n_pad == t * h * w // 4 > 0  # one token per 2x2 merged patch of the 84x112 image
    await backend.aclose()


async def test_second_request_while_generating_is_busy(tiny_qwen) -> None:
    backend = TransformersBackend.from_pretrained_objects(*tiny_qwen)
    async with aclosing(backend.stream_chat(_image_message(), max_tokens=40)) as first:
        got_one = await anext(first)
        assert got_one
        with pytest.raises(VLMBusy, match="one at a time"):
            async with aclosing(backend.stream_chat(_image_message(), max_tokens=4)) as second:
                await anext(second)
    # stopping early stops generate; the slot comes back once the model thread is done
    async with aclosing(backend.stream_chat(_image_message(), max_tokens=4)) as third:
        assert [p async for p in third]
    await backend.aclose()


async def test_reasoner_describe_through_the_in_process_backend(tiny_qwen) -> None:
    backend = TransformersBackend.from_pretrained_objects(*tiny_qwen, name="tiny-qwen2.5-vl")
    reasoner = Reasoner(backend, max_side=112, max_tokens=8)
    frame = np.full((90, 120, 3), 120, dtype=np.uint8)
    mask = np.zeros((90, 120), dtype=bool)
    mask[30:60, 40:80] = True
    text = "".join([p async for p in reasoner.describe(frame, mask)])
    assert text
    assert backend.last_prompt.count("<|image_pad|>") == 1  # large object: no zoom crop
    await backend.aclose()


@pytest.mark.parametrize(
    ("folder", "says"),
    [
        ("", "holds no loadable model.*--vlm-url"),
        # a path that is not there is not a hub id to `hf download`
        ("missing", r"there is no folder '.*missing': pass a local checkpoint folder.*--vlm-url"),
    ],
)
async def test_a_folder_without_a_model_says_what_to_do(tmp_path, folder: str, says: str) -> None:
    backend = TransformersBackend(str(tmp_path / folder), device="cpu")
    with pytest.raises(VLMError, match=says) as raised:
        async with aclosing(backend.stream_chat(_image_message(), max_tokens=2)) as stream:
            await anext(stream)
    assert "hf download" not in str(raised.value)
    await backend.aclose()


def test_the_stop_criterion_answers_on_the_device_of_the_ids() -> None:
    # transformers ORs the criterion's answer with its own flags on the model's device; a CPU
    # answer against CUDA ids failed on the first token. The meta device stands in for CUDA here.
    import threading

    from workers.reasoning.transformers_backend import stop_flag_criterion

    stop = threading.Event()
    criterion = stop_flag_criterion(stop)
    ids = torch.zeros((2, 5), dtype=torch.long, device="meta")
    answer = criterion(ids, None)
    assert answer.device == ids.device and answer.shape == (2,)
    cpu_ids = torch.zeros((1, 3), dtype=torch.long)
    assert not bool(criterion(cpu_ids, None)[0])
    stop.set()
    assert bool(criterion(cpu_ids, None)[0])


async def test_sampled_answers_follow_their_seed(tiny_qwen) -> None:
    from workers.reasoning.families import Sampling

    backend = TransformersBackend.from_pretrained_objects(*tiny_qwen, name="tiny-qwen2.5-vl")

    async def answer(seed: int) -> str:
        sampling = Sampling(temperature=1.0, top_p=1.0, top_k=0, seed=seed)
        async with aclosing(
            backend.stream_chat(_image_message(), max_tokens=16, sampling=sampling)
        ) as stream:
            return "".join([p async for p in stream])

    first, again, other = await answer(1), await answer(1), await answer(2)
    await backend.aclose()
    assert first == again  # a retry can be reproduced from its seed
    assert first != other  # and two seeds are two different answers
