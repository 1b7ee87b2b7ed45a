"""In-process VLM backend on transformers (Qwen2.5-VL / Qwen3-VL): slow on CPU, works offline.

It speaks the same interface as the HTTP backend: OpenAI chat messages in (images as base64 data
URLs), text pieces out. All model work (loading, preprocessing, generate) runs on one worker thread;
pieces cross back to the event loop through an asyncio queue.

One generate at a time: a second request while a caller is still reading an answer raises VLMBusy
at once (the HTTP backend's in-flight contract with a limit of one), because two generates on one
model only slow each other down and queueing would hide that as lag. The one bounded wait: when
the previous caller stopped reading early, generation is told to stop at the next token, and a new
request waits up to `stop_wait_s` for that before it is refused.

torch and transformers are imported only when a model is loaded or built.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from workers.reasoning.backends import ModelInfo
from workers.reasoning.errors import VLMBadResponse, VLMBusy, VLMError
from workers.reasoning.families import GREEDY, Sampling
from workers.reasoning.images import decode_data_url

_END = object()


def to_hf_conversation(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """OpenAI chat messages -> (transformers chat conversation, PIL images in order)."""
    from PIL import Image

    conversation: list[dict[str, Any]] = []
    images: list[Any] = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if isinstance(content, str):
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
                elif kind == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    image = Image.fromarray(decode_data_url(url))
                    images.append(image)
                    parts.append({"type": "image", "image": image})
                else:
                    raise ValueError(f"messages[{i}] has a content part of unknown type {kind!r}")
        else:
            raise ValueError(f"messages[{i}] content must be a string or a list of parts")
        conversation.append({"role": role, "content": parts})
    return conversation, images


def stop_flag_criterion(stop: threading.Event) -> Any:
    """A transformers StoppingCriteria that ends generation once `stop` is set.

    Its answer lives on the device of the ids it is given: transformers ORs it with its own
    per-sequence flags there, and a CPU tensor against CUDA ones fails on the first token.
    """
    import torch
    from transformers import StoppingCriteria

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            return torch.full(
                (input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return _Stop()


def generate_kwargs(sampling: Sampling) -> dict[str, Any]:
    """transformers generate() arguments for a Sampling, every one explicit (the checkpoint's
    generation_config would fill in what we leave out, as vLLM's does)."""
    if sampling.greedy:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {
        "do_sample": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k or None,
    }


class TransformersBackend:
    """A transformers image-text-to-text model behind the VLMBackend interface."""

    def __init__(
        self,
        model_id_or_path: str,
        *,
        device: str = "auto",
        dtype: Any = None,
        stop_wait_s: float = 5.0,
    ) -> None:
        self.model = model_id_or_path  # the name; Reasoner reads it to pick box coordinates
        self.device = device
        self.dtype = dtype
        self.stop_wait_s = stop_wait_s
        self.last_prompt: str | None = None  # the rendered chat prompt of the latest request
        self._hf_model: Any = None
        self._processor: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlm")
        self._attached = False  # a caller is reading an answer right now
        self._running: Future[None] | None = None  # the latest generate on the model thread

    @classmethod
    def from_pretrained_objects(
        cls, model: Any, processor: Any, *, name: str = "in-memory"
    ) -> TransformersBackend:
        """Wrap an already-built (model, processor) pair (tests build a tiny one from a config)."""
        backend = cls(name, device=str(getattr(model, "device", "cpu")))
        backend._hf_model, backend._processor = model, processor
        return backend

    # -- model thread ------------------------------------------------------------------------

    def _load(self) -> None:
        if self._hf_model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self.dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        try:
            processor = AutoProcessor.from_pretrained(self.model)
            model = AutoModelForImageTextToText.from_pretrained(self.model, dtype=dtype)
        except (OSError, ValueError) as exc:
            if os.path.isdir(self.model):
                what = (
                    f"the folder {self.model!r} holds no loadable model (it needs the config, "
                    "weights and processor files of a Hugging Face checkpoint)"
                )
            elif self.model.startswith(("/", ".", "~")):  # a path, not a hub id to download
                what = f"there is no folder {self.model!r}: pass a local checkpoint folder"
            else:
                what = (
                    f"download it first (`hf download {self.model}`) or pass a local checkpoint "
                    "folder with --vlm-model"
                )
            raise VLMError(
                f"could not load the VLM {self.model!r} in-process ({exc}); {what}, or use a "
                "VLM server with --vlm-url"
            ) from exc
        self._hf_model, self._processor = model.to(device).eval(), processor
        self.device = device

    def _inputs(self, messages: list[dict[str, Any]]) -> Any:
        conversation, images = to_hf_conversation(messages)
        prompt = self._processor.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        self.last_prompt = prompt
        inputs = self._processor(text=[prompt], images=images or None, return_tensors="pt")
        return inputs.to(self._hf_model.device)

    def _generate(
        self,
        messages: list[dict[str, Any]],
        emit: Any,
        stop: threading.Event,
        max_tokens: int,
        sampling: Sampling,
    ) -> None:
        import torch
        from transformers import StoppingCriteriaList, TextStreamer

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    emit(text)

        try:
            self._load()
            inputs = self._inputs(messages)
            streamer = _Streamer(
                self._processor.tokenizer, skip_prompt=True, skip_special_tokens=True
            )
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)  # this thread is the only one generating
            with torch.inference_mode():
                self._hf_model.generate(
                    **inputs,
                    max_new_tokens=max_tokens,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([stop_flag_criterion(stop)]),
                    **generate_kwargs(sampling),
                )
        except BaseException as exc:  # reported to the caller through the queue
            emit(exc)
        finally:
            emit(_END)

    # -- VLMBackend ------------------------------------------------------------------------------

    async def stream_chat(
        self, messages: list[dict[str, Any]], *, max_tokens: int = 512, sampling: Sampling = GREEDY
    ) -> AsyncIterator[str]:
        if self._attached:
            raise VLMBusy(
                f"the in-process VLM {self.model!r} is generating already (one at a time); "
                "try again when it finishes"
            )
        self._attached = True
        try:
            await self._previous_stopped()
        except BaseException:
            self._attached = False
            raise
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's loop is gone; nobody is listening any more
                pass

        try:
            self._running = self._executor.submit(
                self._generate, messages, emit, stop, max_tokens, sampling
            )
        except BaseException:
            self._attached = False
            raise
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, VLMError):
                    raise item
                if isinstance(item, BaseException):
                    raise VLMBadResponse(
                        f"the in-process VLM {self.model!r} failed: {type(item).__name__}: {item}"
                    ) from item
                yield item
        finally:
            stop.set()  # the caller left early or the answer ended: either way, stop generating
            self._attached = False

    async def _previous_stopped(self) -> None:
        """Wait (bounded) for an abandoned generate to notice its stop flag."""
        running = self._running
        if running is None or running.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), self.stop_wait_s)
        except TimeoutError:
            raise VLMBusy(
                f"the in-process VLM {self.model!r} is still stopping the previous answer; "
                "try again in a moment"
            ) from None
        except Exception:
            pass  # its error went to its own caller

    async def model_info(self) -> ModelInfo:
        # The family is told by the name or, for a local folder, by its config.json.
        name_or_path = getattr(getattr(self._hf_model, "config", None), "_name_or_path", None)
        aliases = (name_or_path,) if isinstance(name_or_path, str) and name_or_path else ()
        return ModelInfo(self.model, aliases)

    async def health(self) -> dict[str, Any]:
        loaded = self._hf_model is not None
        detail = f"in-process on {self.device}" if loaded else "in-process, loads on first request"
        return {"reachable": True, "detail": detail, "model": self.model}

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
