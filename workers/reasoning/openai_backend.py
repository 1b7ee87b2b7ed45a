"""VLM backend for any OpenAI-compatible server (vLLM, SGLang, ...), on the `openai` client.

The wire (SSE parsing, error bodies, request shapes) is the `openai` package's; what is ours is
the policy around it, because a live service needs it and the client does not have it:
- Deadlines per phase: connect (httpx), first activity and whole answer (asyncio, from the
  request's start). A thinking model's reasoning deltas count as activity: the first-token
  deadline is about a server that says nothing, not about a model that thinks first.
- Retries live here and only here (the client's own are off): a connect error or a 5xx before any
  piece was streamed is retried `retries` times; nothing is retried once a piece reached the
  caller (it would repeat text).
- At most `max_in_flight` requests run at once; one more raises VLMBusy at once, it never queues,
  so a slow model shows up as "busy" to the person instead of as growing lag.
- Sampling parameters are always sent explicitly (see families.Sampling).
- Health asks GET /models only. A server can list its models and still fail every chat (a 5xx,
  a web page instead of a chat stream): a chat request's such failure is remembered until one
  streams, health says it, and only then asks one tiny chat, at most every CHAT_PROBE_EVERY_S,
  to see it work again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai

from workers.reasoning.backends import ModelInfo, Piece, Thinking
from workers.reasoning.errors import (
    VLMBadResponse,
    VLMBusy,
    VLMError,
    VLMTimeout,
    VLMUnavailable,
)
from workers.reasoning.families import GREEDY, Sampling
from workers.words import plural

# What a server without a GET /models route answers it (some OpenAI-compatible servers): requests
# then go to the configured --vlm-model.
NO_MODEL_LIST = (404, 405)

_SNIPPET = 200
# While chat requests fail, a health check asks one this small at most this often (never else).
CHAT_PROBE_EVERY_S = 30.0
CHAT_PROBE_TIMEOUT_S = 3.0  # within Services' 5 s for a whole health check
_PROBE = [{"role": "user", "content": "Say OK."}]
_REFUSAL = 1000  # a server's refusal is shown whole (vLLM's end with what to do), up to this
# vLLM streams reasoning as `reasoning` (newer) or `reasoning_content` (older, and DeepSeek's API).
_REASONING_FIELDS = ("reasoning", "reasoning_content")


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own words from an error response (vLLM: {"error": {"message": ...}}), whole:
    its refusals end with what to do ("Please reduce the length of the input prompt.")."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(message, str) and message:
            return _shorten(message)
    try:
        return _shorten(exc.response.text)
    except Exception:  # the body was streamed and is gone
        return _shorten(str(exc))


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= _REFUSAL:
        return text
    return text[:_REFUSAL].rsplit(" ", 1)[0] + " ..."


def sampling_params(sampling: Sampling) -> tuple[dict[str, Any], dict[str, Any]]:
    """(OpenAI arguments, extra body) for a Sampling: every parameter sent, none left to defaults.

    top_k is not an OpenAI parameter: it goes in the extra body, and only when it cuts anything
    (a hosted OpenAI model would refuse the unknown field).
    """
    args: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p}
    if sampling.seed is not None:
        args["seed"] = sampling.seed
    extra = {"top_k": sampling.top_k} if sampling.top_k > 0 else {}
    return args, extra


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
        self.last_finish_reason: str | None = None  # of the latest completed answer
        self._client: openai.AsyncOpenAI | None = None
        self._model_lock: asyncio.Lock | None = None
        self._served: dict[str, str] = {}  # served id -> root, from the latest /models
        # The latest chat request's failure where the server answered but no chat came of it (a
        # 5xx after the retries, an answer that is no chat stream), until an answer comes through:
        # GET /models can be fine while every chat fails, and health() says so from this.
        self.chat_failure: str | None = None
        self._chat_probed_at = 0.0  # monotonic time of the latest chat request, probe or not

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
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
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url,
                # vLLM without --api-key accepts anything; the client insists on a value.
                api_key=self.api_key or "EMPTY",
                max_retries=0,
                timeout=timeout,
                http_client=httpx.AsyncClient(timeout=timeout, limits=limits),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _list_models(self) -> dict[str, str]:
        """{served id: root} from GET /models; the root is the id where a server gives none."""
        try:
            async with asyncio.timeout(self.connect_timeout_s + self.first_token_timeout_s):
                page = await self.client.models.list()
        except TimeoutError as exc:
            raise VLMTimeout("first_token", self.first_token_timeout_s, self.base_url) from exc
        except openai.APITimeoutError as exc:
            raise VLMTimeout("connect", self.connect_timeout_s, self.base_url) from exc
        except openai.APIConnectionError as exc:
            raise VLMUnavailable(self.base_url, _cause(exc), model=self.model) from exc
        except openai.APIStatusError as exc:
            # Without --vlm-model the name to send is the one it lists: one that lists none needs it.
            unnamed = exc.status_code in NO_MODEL_LIST and not self.model
            raise VLMBadResponse(
                f"GET {self.base_url}/models answered {exc.status_code}"
                + ("; pass --vlm-model (this server does not list its models)" if unnamed else ""),
                status=exc.status_code,
                snippet=_server_message(exc),
            ) from exc
        except (ValueError, TypeError) as exc:
            raise VLMBadResponse(f"GET {self.base_url}/models did not list models") from exc
        served: dict[str, str] = {}
        for item in getattr(page, "data", None) or []:
            model_id = getattr(item, "id", None)
            if isinstance(model_id, str) and model_id:
                root = getattr(item, "root", None)
                served[model_id] = root if isinstance(root, str) and root else model_id
        if not served:
            raise VLMBadResponse(f"GET {self.base_url}/models lists no models; pass --vlm-model")
        self._served = served
        return served

    async def resolve_model(self) -> str:
        """The model name to send: the configured one, else the first one /models lists."""
        if self.model:
            return self.model
        if self._model_lock is None:
            self._model_lock = asyncio.Lock()
        async with self._model_lock:
            if not self.model:
                self.model = next(iter(await self._list_models()))
        return self.model

    async def model_info(self) -> ModelInfo:
        try:
            served = await self._list_models()
        except VLMBadResponse as exc:
            if not (self.model and exc.status in NO_MODEL_LIST):
                raise
            served = {}  # no /models route: the configured name alone tells the family
        name = self.model or next(iter(served))
        root = served.get(name)
        return ModelInfo(name, (root,) if root else ())

    async def health(self) -> dict[str, Any]:
        """Whether the server answers (`reachable`: a connection and an HTTP answer), and whether
        it serves the configured model (`model_served` False when it answers but cannot)."""
        try:
            served = await self._list_models()
        except VLMBadResponse as exc:
            # It answered, so it is up; only its model list is no use. Without a /models route
            # (404/405: some OpenAI-compatible servers) requests go to the model named; refused
            # (401/403), failing (5xx) or listing nothing, requests would fail too: say why.
            health = {"reachable": True, "detail": str(exc), "model": self.model}
            if exc.status in (401, 403):
                health["detail"] += ": check --vlm-api-key"
            if not (self.model and exc.status in NO_MODEL_LIST):
                health["model_served"] = False
            return health
        except VLMError as exc:
            return {"reachable": False, "detail": str(exc), "model": self.model}
        ids = list(served)
        model = self.model or ids[0]
        if self.chat_failure is not None:
            await self._probe_chat()
        if self.chat_failure is not None:
            return {
                "reachable": True,
                "model_served": False,
                "model": model,
                "detail": f"it lists its models, but its chat requests fail: {self.chat_failure}",
            }
        detail = f"{plural(len(ids), 'model')} served: {', '.join(ids[:5])}"
        health: dict[str, Any] = {"reachable": True, "detail": detail, "model": model}
        if self.model and self.model not in served:
            # The server is up but every request would get a 404: say so, and what to pass.
            health["model_served"] = False
            health["detail"] = (
                f"{detail}; the configured model {self.model!r} is not among them: pass "
                "--vlm-model with one of them"
            )
        return health

    async def _probe_chat(self) -> None:
        """Ask the smallest chat request, at most every CHAT_PROBE_EVERY_S and only while the
        latest one failed, so a server that recovers is seen as working again (the page keeps
        the VLM's controls off while health says it fails). Its outcome is what it records."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._chat_probed_at < CHAT_PROBE_EVERY_S:
            return
        try:
            async with (
                asyncio.timeout(CHAT_PROBE_TIMEOUT_S),
                contextlib.aclosing(self.stream_chat(_PROBE, max_tokens=1)) as pieces,
            ):
                async for _ in pieces:
                    pass
        except (VLMError, TimeoutError):
            pass  # still failing (recorded by stream_chat), busy, or slow: asked again later

    # -- streaming -----------------------------------------------------------------------------

    async def _open(self, request: dict[str, Any], deadline: float) -> Any:
        """Send the request and return the open stream, retrying where that is safe."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            retryable: VLMError
            try:
                async with asyncio.timeout_at(deadline):
                    return await self.client.chat.completions.create(**request)
            except TimeoutError:
                raise VLMTimeout("first_token", self.first_token_timeout_s, self.base_url) from None
            except openai.APITimeoutError:
                retryable = VLMTimeout("connect", self.connect_timeout_s, self.base_url)
            except openai.APIConnectionError as exc:
                retryable = VLMUnavailable(self.base_url, _cause(exc), model=self.model)
            except openai.RateLimitError:
                raise VLMBusy(
                    f"the VLM at {self.base_url} is busy (429); try again shortly"
                ) from None
            except openai.APIStatusError as exc:
                what = "refused the request" if exc.status_code < 500 else "failed"
                retryable = VLMBadResponse(
                    f"the VLM at {self.base_url} {what} ({exc.status_code}): "
                    f"{_server_message(exc)}",
                    status=exc.status_code,
                )
                if exc.status_code < 500:
                    raise retryable from None  # a 4xx will not get better by asking again
            if attempt >= self.retries or loop.time() + self.retry_backoff_s >= deadline:
                raise retryable
            attempt += 1
            await asyncio.sleep(self.retry_backoff_s * attempt)

    async def stream_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 512,
        sampling: Sampling = GREEDY,
    ) -> AsyncIterator[Piece]:
        """Yield the answer's text pieces, and its reasoning as Thinking, as the server streams."""
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
            args, extra = sampling_params(sampling)
            request: dict[str, Any] = {
                "model": await self.resolve_model(),
                "messages": messages,
                "max_tokens": max_tokens,
                "stream": True,
                **args,
            }
            if extra:
                request["extra_body"] = extra
            self._chat_probed_at = loop.time()
            try:
                stream = await self._open(request, first_deadline)
                await self._check_chat_stream(stream)
            except VLMBadResponse as exc:
                # The server answered, and no chat stream came of it: a 5xx after the retries, a
                # web page. Remembered until a chat streams again; a 4xx is about this request.
                if exc.status is not None and not 400 <= exc.status < 500:
                    self.chat_failure = str(exc)
                raise
            self.chat_failure = (
                None  # a chat stream came: chats work (what it says is the caller's)
            )
            async for piece in self._pieces(stream, first_deadline, total_deadline):
                yield piece
        finally:
            self.in_flight -= 1

    async def _check_chat_stream(self, stream: Any) -> None:
        """Refuse an answer that is not a chat stream (a web page, a proxy's error page: HTTP
        200 all the same), saying what came back instead."""
        response = stream.response
        kind = response.headers.get("content-type", "")
        if kind.split(";")[0].strip() == "text/event-stream":
            return
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                head = await anext(response.aiter_bytes(), b"")
        except (TimeoutError, httpx.HTTPError):
            head = b""
        finally:
            await stream.close()
        raise VLMBadResponse(
            f"the VLM at {self.base_url} did not answer as an OpenAI-compatible server: HTTP "
            f"{response.status_code} with {kind or 'no content type'} instead of a chat stream; "
            "is --vlm-url the server's /v1 address?",
            status=response.status_code,
            snippet=_shorten(head.decode("utf-8", "replace"))[:_SNIPPET],
        )

    async def _pieces(
        self, stream: Any, first_deadline: float, total_deadline: float
    ) -> AsyncIterator[Piece]:
        """Read chunks; each read gets the deadline of its phase (never a yield inside a timeout
        scope: the caller's own awaits between pieces must not be cancelled by ours)."""
        sent = seen = 0  # pieces passed on; chunks read
        answered = False  # any answer text (not reasoning) among them
        finish: str | None = None
        chunks = stream.__aiter__()
        try:
            while True:
                try:
                    async with asyncio.timeout_at(first_deadline if sent == 0 else total_deadline):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if sent == 0:
                        raise VLMTimeout(
                            "first_token", self.first_token_timeout_s, self.base_url
                        ) from None
                    raise VLMTimeout("total", self.total_timeout_s, self.base_url) from None
                except openai.APIError as exc:  # an error event inside the stream
                    raise VLMBadResponse(
                        f"the VLM at {self.base_url} reported an error mid-stream",
                        snippet=str(getattr(exc, "message", exc))[:_SNIPPET],
                    ) from exc
                except httpx.HTTPError as exc:
                    raise VLMBadResponse(
                        f"the VLM at {self.base_url} dropped the connection after {sent} pieces",
                        snippet=str(exc)[:_SNIPPET],
                    ) from exc
                except ValueError as exc:  # a chunk that is not JSON
                    raise VLMBadResponse(
                        f"the VLM stream from {self.base_url} has a malformed chunk",
                        snippet=str(exc)[:_SNIPPET],
                    ) from exc
                seen += 1
                for piece in self._chunk_pieces(chunk):
                    if isinstance(piece, _Finish):
                        finish = piece.reason
                        continue
                    sent += 1
                    answered = answered or isinstance(piece, str)
                    yield piece
        finally:
            await stream.close()
        if seen == 0:
            raise VLMBadResponse(
                f"the VLM at {self.base_url} did not answer as an OpenAI-compatible server: its "
                "event stream held no chat chunk (no `data:` line); is --vlm-url the server's /v1 "
                "address?"
            )
        if finish is None:
            raise VLMBadResponse(
                f"the VLM stream from {self.base_url} ended before the answer did, after "
                f"{sent} pieces"
            )
        self.last_finish_reason = finish
        if sent and not answered and finish != "length":
            # The model stopped of itself, and all it wrote came as reasoning: not a spent budget
            # (Reasoner says that one) but the server's reasoning parser never saw it end.
            raise VLMBadResponse(
                f"the VLM at {self.base_url} stopped ({finish!r}, not out of tokens) with all it "
                "wrote sent as reasoning and no answer: the model never closed its thinking, or "
                "the server's --reasoning-parser did not see where it did; serve the model with "
                "its own family's parser (qwen3 for Qwen3-VL), or with none"
            )

    def _chunk_pieces(self, chunk: Any) -> list[Any]:
        choices = getattr(chunk, "choices", None)
        if not isinstance(choices, list):
            raise VLMBadResponse(
                f"the VLM stream from {self.base_url} sent a chunk without choices",
                snippet=repr(chunk)[:_SNIPPET],
            )
        if not choices:
            return []  # the usage-only chunk at the end (stream_options.include_usage)
        choice = choices[0]
        delta = getattr(choice, "delta", None)
        out: list[Any] = []
        if delta is not None:
            for field in _REASONING_FIELDS:
                reasoning = getattr(delta, field, None)
                if isinstance(reasoning, str) and reasoning:
                    out.append(Thinking(reasoning))
                    break
            content = getattr(delta, "content", None)
            if content is not None and not isinstance(content, str):
                raise VLMBadResponse(
                    f"the VLM stream from {self.base_url} sent content that is not text",
                    snippet=repr(content)[:_SNIPPET],
                )
            if content:
                out.append(content)
        reason = getattr(choice, "finish_reason", None)
        if reason:
            out.append(_Finish(str(reason)))
        return out


class _Finish:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{type(cause).__name__}: {cause}" if cause else type(exc).__name__
