"""VLM backend for any OpenAI-compatible server (vLLM, SGLang, ...): streaming chat over httpx.

Deadlines: connect (httpx), first token and total (asyncio, measured from the request's start).
Retries live here and only here: a connect error or a 5xx answer before any token was streamed is
retried `retries` times; nothing is retried once a token reached the caller (it would repeat text).
At most `max_in_flight` requests run at once; one more raises VLMBusy at once, it never queues,
so a slow model shows up as "busy" to the person instead of as growing lag.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from workers.reasoning.errors import (
    VLMBadResponse,
    VLMBusy,
    VLMError,
    VLMTimeout,
    VLMUnavailable,
)

_SNIPPET = 200
DONE = object()  # sentinel: the stream's `data: [DONE]`


def parse_sse_line(line: str) -> str | object | None:
    """One SSE line of a chat-completions stream -> a text piece, DONE, or None (nothing to show).

    Raises VLMBadResponse on anything that is not the OpenAI chunk format.
    """
    line = line.strip()
    if not line or line.startswith(":"):
        return None  # blank separator or SSE comment (keep-alive)
    if not line.startswith("data:"):
        if line.split(":", 1)[0] in ("event", "id", "retry"):
            return None
        raise VLMBadResponse("VLM stream has a line that is not SSE", snippet=line[:_SNIPPET])
    payload = line[5:].strip()
    if payload == "[DONE]":
        return DONE
    try:
        chunk = json.loads(payload)
    except ValueError:
        raise VLMBadResponse(
            "VLM stream has a malformed chunk", snippet=payload[:_SNIPPET]
        ) from None
    if not isinstance(chunk, dict):
        raise VLMBadResponse("VLM stream chunk is not a JSON object", snippet=payload[:_SNIPPET])
    if "error" in chunk or chunk.get("object") == "error":
        raise VLMBadResponse("VLM server reported an error mid-stream", snippet=payload[:_SNIPPET])
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise VLMBadResponse("VLM stream chunk has no choices", snippet=payload[:_SNIPPET])
    if not choices:
        return None  # the usage-only chunk at the end (stream_options.include_usage)
    first = choices[0]
    delta = first.get("delta") if isinstance(first, dict) else None
    if not isinstance(delta, dict):
        raise VLMBadResponse("VLM stream chunk has no delta", snippet=payload[:_SNIPPET])
    content = delta.get("content")
    if content is None:
        return None
    if not isinstance(content, str):
        raise VLMBadResponse("VLM stream delta content is not text", snippet=payload[:_SNIPPET])
    return content or None


class OpenAICompatibleBackend:
    """Streaming chat against `{base_url}/chat/completions`; `model=None` asks /models once."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 3.0,
        first_token_timeout_s: float = 30.0,
        total_timeout_s: float = 120.0,
        max_in_flight: int = 4,
        retries: int = 1,
        retry_backoff_s: float = 0.2,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.connect_timeout_s = connect_timeout_s
        self.first_token_timeout_s = first_token_timeout_s
        self.total_timeout_s = total_timeout_s
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.in_flight = 0
        self._client: httpx.AsyncClient | None = None
        self._model_lock: asyncio.Lock | None = None

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            # read=None: the first-token and total deadlines are ours (asyncio), per phase.
            timeout = httpx.Timeout(
                connect=self.connect_timeout_s,
                read=None,
                write=self.first_token_timeout_s,
                pool=self.connect_timeout_s,
            )
            limits = httpx.Limits(
                max_connections=self.max_in_flight + 2, max_keepalive_connections=self.max_in_flight
            )
            self._client = httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def resolve_model(self) -> str:
        """The model name to send: the configured one, else the first one /models lists."""
        if self.model:
            return self.model
        if self._model_lock is None:
            self._model_lock = asyncio.Lock()
        async with self._model_lock:
            if not self.model:
                self.model = (await self._list_models())[0]
        return self.model

    async def _list_models(self) -> list[str]:
        url = f"{self.base_url}/models"
        try:
            response = await asyncio.wait_for(
                self.client.get(url), self.connect_timeout_s + self.first_token_timeout_s
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, OSError) as exc:
            raise VLMUnavailable(self.base_url, type(exc).__name__) from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise VLMTimeout("first_token", self.first_token_timeout_s, self.base_url) from exc
        if response.status_code // 100 != 2:
            raise VLMBadResponse(
                f"GET {url} answered {response.status_code}",
                status=response.status_code,
                snippet=response.text[:_SNIPPET],
            )
        try:
            ids = [m["id"] for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise VLMBadResponse(
                f"GET {url} did not list models", snippet=response.text[:_SNIPPET]
            ) from None
        if not ids or not all(isinstance(i, str) for i in ids):
            raise VLMBadResponse(f"GET {url} lists no models; pass the model name explicitly")
        return ids

    async def health(self) -> dict[str, Any]:
        try:
            ids = await self._list_models()
        except VLMError as exc:
            return {"reachable": False, "detail": str(exc), "model": self.model}
        model = self.model or ids[0]
        detail = f"{len(ids)} model(s) served: {', '.join(ids[:5])}"
        if self.model and self.model not in ids:
            detail += f"; configured model {self.model!r} is not among them"
        return {"reachable": True, "detail": detail, "model": model}

    # -- streaming -----------------------------------------------------------------------------

    async def _open(self, body: dict[str, Any], deadline: float) -> httpx.Response:
        """Send the request and return a 2xx streaming response, retrying where that is safe."""
        loop = asyncio.get_running_loop()
        url = f"{self.base_url}/chat/completions"
        attempt = 0
        while True:
            retryable: VLMError
            try:
                async with asyncio.timeout_at(deadline):
                    request = self.client.build_request("POST", url, json=body)
                    response = await self.client.send(request, stream=True)
            except TimeoutError:
                raise VLMTimeout("first_token", self.first_token_timeout_s, self.base_url) from None
            except httpx.ConnectTimeout:
                retryable = VLMTimeout("connect", self.connect_timeout_s, self.base_url)
            except (httpx.ConnectError, httpx.RemoteProtocolError, OSError) as exc:
                retryable = VLMUnavailable(self.base_url, f"{type(exc).__name__}: {exc}")
            else:
                status = response.status_code
                if status // 100 == 2:
                    return response
                try:
                    async with asyncio.timeout_at(deadline):
                        text = (await response.aread()).decode("utf-8", "replace")
                except TimeoutError:
                    text = ""
                finally:
                    await response.aclose()
                if status == 429:
                    raise VLMBusy(f"the VLM at {self.base_url} is busy (429); try again shortly")
                retryable = VLMBadResponse(
                    f"the VLM at {self.base_url} answered {status}",
                    status=status,
                    snippet=text[:_SNIPPET],
                )
                if status < 500:
                    raise retryable  # a 4xx will not get better by asking again
            if attempt >= self.retries or loop.time() + self.retry_backoff_s >= deadline:
                raise retryable
            attempt += 1
            await asyncio.sleep(self.retry_backoff_s * attempt)

    async def stream_chat(
        self, messages: list[dict[str, Any]], *, max_tokens: int = 512, temperature: float = 0.0
    ) -> AsyncIterator[str]:
        """Yield the answer's text pieces as the server streams them."""
        if self.in_flight >= self.max_in_flight:
            raise VLMBusy(
                f"{self.in_flight} VLM requests already in flight (limit {self.max_in_flight}); "
                "try again when one finishes"
            )
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            total_deadline = start + self.total_timeout_s
            first_deadline = min(start + self.first_token_timeout_s, total_deadline)
            body = {
                "model": await self.resolve_model(),
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "stream": True,
            }
            response = await self._open(body, first_deadline)
            async for piece in self._pieces(response, first_deadline, total_deadline):
                yield piece
        finally:
            self.in_flight -= 1

    @staticmethod
    async def _drain(lines: AsyncIterator[str], deadline: float) -> None:
        # Read to the body's end after [DONE] (normally nothing is left): a response closed
        # unread takes its connection with it, and a new TCP connect per request costs more
        # than everything else we do for a request.
        try:
            async with asyncio.timeout_at(deadline):
                async for _ in lines:
                    pass
        except (TimeoutError, httpx.HTTPError):
            pass

    async def _pieces(
        self, response: httpx.Response, first_deadline: float, total_deadline: float
    ) -> AsyncIterator[str]:
        """Parse the SSE body; each read gets the deadline of its phase (never a yield inside a
        timeout scope: the caller's own awaits between pieces must not be cancelled by ours)."""
        sent = 0
        done = False
        try:
            lines = response.aiter_lines()
            while True:
                phase = "first_token" if sent == 0 else "total"
                try:
                    async with asyncio.timeout_at(first_deadline if sent == 0 else total_deadline):
                        line = await anext(lines)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    seconds = self.first_token_timeout_s if sent == 0 else self.total_timeout_s
                    raise VLMTimeout(phase, seconds, self.base_url) from None  # type: ignore[arg-type]
                except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
                    raise VLMBadResponse(
                        f"the VLM at {self.base_url} dropped the connection after {sent} pieces",
                        snippet=str(exc),
                    ) from exc
                piece = parse_sse_line(line)
                if piece is DONE:
                    done = True
                    await self._drain(lines, total_deadline)
                    break
                if piece:
                    sent += 1
                    yield piece  # type: ignore[misc]
        finally:
            await response.aclose()
        if not done:
            raise VLMBadResponse(
                f"the VLM stream from {self.base_url} ended without [DONE] after {sent} pieces"
            )
