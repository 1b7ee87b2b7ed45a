"""A VLMBackend wrapper that times each request's first token and can make requests stateless.

"Stateless" puts a fresh nonce before everything else in the request (ahead of the images), so no
prefix cache on the server (vLLM's automatic prefix caching) can reuse an earlier request's work;
"cached" sends the request unchanged, after an identical one has warmed the cache. Time to first
token is measured from the call to the first text piece, as the service's client sees it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from workers.reasoning.families import GREEDY, Sampling


def with_nonce(messages: list[dict[str, Any]], nonce: str) -> list[dict[str, Any]]:
    """The messages with `nonce` as the first text of the first message (a new list)."""
    out = [dict(m) for m in messages]
    first = out[0]
    note = f"[request {nonce}]"
    content = first.get("content")
    if isinstance(content, str):
        first["content"] = f"{note} {content}"
    else:
        first["content"] = [{"type": "text", "text": note}, *(content or [])]
    return out


class MeteredBackend:
    """Passes requests to `inner`; records each one's time to first token in `ttft_ms`."""

    def __init__(self, inner: Any, *, stateless: bool = False) -> None:
        self.inner = inner
        self.stateless = stateless
        self.ttft_ms: list[float | None] = []  # None: the answer was empty

    def __getattr__(self, name: str) -> Any:
        # model, resolve_model, health, ... are the inner backend's own
        return getattr(self.inner, name)

    async def stream_chat(
        self, messages: list[dict[str, Any]], *, max_tokens: int = 512, sampling: Sampling = GREEDY
    ) -> AsyncIterator[Any]:
        if self.stateless:
            messages = with_nonce(messages, uuid.uuid4().hex)
        start = time.perf_counter()
        first: float | None = None
        try:
            async with aclosing(
                self.inner.stream_chat(messages, max_tokens=max_tokens, sampling=sampling)
            ) as pieces:
                async for piece in pieces:
                    if first is None:
                        first = (time.perf_counter() - start) * 1000.0
                    yield piece
        finally:
            self.ttft_ms.append(first)

    async def aclose(self) -> None:
        await self.inner.aclose()
