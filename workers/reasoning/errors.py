"""Errors a VLM backend raises: one base class, one subclass per thing a caller can act on."""

from __future__ import annotations

from typing import Literal

from workers.reasoning.families import DEFAULT_VLM_MODEL


def start_hint(model: str | None, *, serve_vlm: bool = False) -> str:
    """What to do when no VLM answers, for the configured --vlm-model (`model`), in every message
    that says so; `serve_vlm` where the command takes --serve-vlm (the server; eval and dataset
    do not)."""
    hint = (
        f"start one with `vllm serve {model or DEFAULT_VLM_MODEL}` and pass its URL as --vlm-url "
        "(http://HOST:8000/v1)"
    )
    return f"{hint}, or pass --serve-vlm and FMU Live starts it" if serve_vlm else hint


class VLMError(Exception):
    """Anything that went wrong talking to the vision-language model."""


class VLMUnavailable(VLMError):
    """No server answers at the URL (connection refused, DNS failure, nothing listening)."""

    def __init__(self, url: str, detail: str = "", *, model: str | None = None) -> None:
        self.url = url
        msg = f"no VLM server at {url}: {start_hint(model)}"
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
