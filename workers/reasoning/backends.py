"""The one async interface every VLM backend speaks (OpenAI chat messages in, text pieces out)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class VLMBackend(Protocol):
    """A vision-language model behind an OpenAI-style streaming chat call.

    messages use the OpenAI chat format; an image part is
    ``{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}``.
    stream_chat is an async generator: close it (``contextlib.aclosing``) when you stop early, so
    its in-flight slot is released at once.
    """

    def stream_chat(
        self, messages: list[dict[str, Any]], *, max_tokens: int = 512, temperature: float = 0.0
    ) -> AsyncIterator[str]: ...

    async def health(self) -> dict[str, Any]:
        """{"reachable": bool, "detail": str, "model": str | None}; never raises."""
        ...

    async def aclose(self) -> None: ...
