"""Errors a VLM backend raises: one base class, one subclass per thing a caller can act on."""

from __future__ import annotations

from typing import Literal

START_HINT = "start one with `vllm serve Qwen/Qwen2.5-VL-3B-Instruct` or pass --vlm-url"


class VLMError(Exception):
    """Anything that went wrong talking to the vision-language model."""


class VLMUnavailable(VLMError):
    """No server answers at the URL (connection refused, DNS failure, nothing listening)."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        msg = f"no VLM server at {url}: {START_HINT}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class VLMBusy(VLMError):
    """Too many requests in flight already; raised at once instead of queueing."""


class VLMTimeout(VLMError):
    """A deadline passed: connecting, waiting for the first token, or the whole answer."""

    def __init__(self, phase: Literal["connect", "first_token", "total"], seconds: float, url: str):
        self.phase = phase
        self.seconds = seconds
        what = {
            "connect": "connecting to",
            "first_token": "waiting for the first token from",
            "total": "waiting for the whole answer from",
        }[phase]
        super().__init__(
            f"timed out after {seconds:g} s {what} the VLM at {url}; the server may be overloaded "
            "or the model still loading: retry, or raise the --vlm-*-timeout settings"
        )


class VLMBadResponse(VLMError):
    """The server answered, but not with a usable chat-completions stream (non-2xx, garbage)."""

    def __init__(self, message: str, *, status: int | None = None, snippet: str = "") -> None:
        self.status = status
        self.snippet = snippet
        super().__init__(f"{message}: {snippet!r}" if snippet else message)


class VLMMisconfigured(VLMError):
    """The service's VLM settings do not fit the model it reaches (say, an unknown family)."""
