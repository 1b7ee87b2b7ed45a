"""A scripted OpenAI-compatible chat-completions server for tests: streams vLLM's SSE wire format.

Usage::

    with ScriptedVLMServer(answer="a red cup") as srv:
        client = OpenAICompatibleBackend(srv.url, model=None)  # srv.url == "http://127.0.0.1:PORT/v1"
        ...
    srv.requests  # parsed JSON bodies of every chat request, in arrival order

`answer` is a string, a list of strings (one per request, the last one repeated), or a callable that
receives the parsed request JSON and returns the text to stream (a str is split into word pieces; a
list of str is streamed piece by piece exactly as given; a dict in that list is sent as the chunk's
whole delta, e.g. {"reasoning": "..."} as vLLM's reasoning parser sends a thinking model's
reasoning). Fault knobs: first_token_delay_s, token_delay_s, status_code (+ fail_times: only the
first N chat requests fail), malformed_after (after N good content chunks a broken `data:` line is
sent), error_after (after N chunks vLLM's mid-stream error event), cut_after (after N chunks the
body just ends, no finish_reason, no [DONE]), garbage_body (a 200 without SSE), finish_reason
("stop" unless told: "length" as when max_tokens ran out).

The server runs uvicorn in a background thread on 127.0.0.1 with a free port. Scripted answers
belong in tests only: nothing in the application imports this module.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Answer = str | Sequence[str] | Callable[[dict[str, Any]], Any]

_WORD_PIECES = re.compile(r"\s*\S+|\s+")


def split_pieces(text: str) -> list[str]:
    """Split text the way a tokenizer roughly would: word pieces with their leading spaces."""
    return _WORD_PIECES.findall(text) or [""]


def free_port() -> int:
    """A port nothing listens on right now (for 'server down' tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serving(
    server: uvicorn.Server, thread: threading.Thread, what: str, timeout_s: float
) -> None:
    """Start `thread`, which runs `server`, and wait until the server is serving; raise if the
    thread dies or `timeout_s` passes first."""
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout_s:g} s")
        time.sleep(0.005)


class ScriptedVLMServer:
    """An OpenAI-compatible server whose answers come from the test; a context manager."""

    def __init__(
        self,
        answer: Answer = "ok",
        *,
        model: str = "Qwen/Qwen2.5-VL-3B-Instruct",  # the service's default --vlm-model
        first_token_delay_s: float = 0.0,
        token_delay_s: float = 0.0,
        status_code: int = 200,
        fail_times: int | None = None,
        malformed_after: int | None = None,
        error_after: int | None = None,
        cut_after: int | None = None,
        garbage_body: bool = False,
        models_status_code: int = 200,
        finish_reason: str = "stop",
        port: int = 0,
    ) -> None:
        self.answer = answer
        self.model = model
        self.first_token_delay_s = first_token_delay_s
        self.token_delay_s = token_delay_s
        self.status_code = status_code
        self.fail_times = fail_times
        self.malformed_after = malformed_after
        self.error_after = error_after
        self.cut_after = cut_after
        self.garbage_body = garbage_body
        self.models_status_code = models_status_code
        self.finish_reason = finish_reason
        self.root: str | None = None  # vLLM's `root` in /v1/models (the real path behind an alias)

        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # status sent for each chat request, in order
        self.client_ports: list[int] = []  # the client's port per chat request (connection reuse)
        self.server_time_s: list[
            float
        ] = []  # handler time per chat request (incl. scripted delays)
        self.in_flight = 0
        self.max_concurrent = 0
        self.completed = 0
        self.cancelled = 0  # streams the client walked away from

        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port = port  # 0: a free one, chosen at start

    @classmethod
    def zero_latency(
        cls, answer: Answer = "a red ceramic mug on a wooden desk", **kw: Any
    ) -> ScriptedVLMServer:
        """No scripted delays at all: what is left is HTTP + SSE cost (for benchmarks)."""
        return cls(answer=answer, first_token_delay_s=0.0, token_delay_s=0.0, **kw)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ScriptedVLMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # proto=IPPROTO_TCP, as getaddrinfo would give: asyncio only sets TCP_NODELAY on
        # sockets that say they are TCP, and without it Nagle holds each SSE chunk until the
        # client's delayed ACK (~40 ms per request on a reused connection).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(
            self._app(),
            log_level="warning",
            lifespan="off",
            loop="asyncio",
            timeout_graceful_shutdown=1,
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        start_serving(self._server, self._thread, "ScriptedVLMServer", timeout_s=10)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    # -- the app -----------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/_stats", self._stats, methods=["GET"]),
            ]
        )

    async def _health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def _stats(self, request: Request) -> Response:
        # For a client in another process (the benchmark): what the server itself spent.
        with self._lock:
            return JSONResponse(
                {
                    "requests": len(self.requests),
                    "server_time_s": list(self.server_time_s),
                    "max_concurrent": self.max_concurrent,
                }
            )

    async def _models(self, request: Request) -> Response:
        if self.models_status_code != 200:
            return JSONResponse({"error": "scripted failure"}, status_code=self.models_status_code)
        body = {
            "object": "list",
            "data": [
                {
                    "id": self.model,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": self.root or self.model,
                    "parent": None,
                    "max_model_len": 32768,
                }
            ],
        }
        return JSONResponse(body)

    def _next_answer(self, body: dict[str, Any], index: int) -> Any:
        a = self.answer
        if callable(a):
            return a(body)
        if isinstance(a, str):
            return a
        items = list(a)
        if not items:
            return ""
        return items[min(index, len(items) - 1)]

    async def _chat(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"message": "body is not JSON"}}, status_code=400)
        with self._lock:
            index = len(self.requests)
            self.requests.append(body)
            self.client_ports.append(request.client.port if request.client else 0)
            failing = self.status_code != 200 and (
                self.fail_times is None or index < self.fail_times
            )
            status = self.status_code if failing else 200
            self.statuses.append(status)
        if failing:
            return JSONResponse(
                {
                    "object": "error",
                    "message": "scripted failure",
                    "type": "ServiceUnavailable",
                    "code": status,
                },
                status_code=status,
            )

        text_or_pieces = self._next_answer(body, index)
        if inspect.isawaitable(text_or_pieces):
            text_or_pieces = await text_or_pieces
        pieces = (
            split_pieces(text_or_pieces)
            if isinstance(text_or_pieces, str)
            else list(text_or_pieces)
        )
        model = body.get("model") or self.model

        if self.garbage_body:
            return Response("<html>502 Bad Gateway</html>", media_type="text/event-stream")
        if not body.get("stream", False):
            return await self._non_streaming(model, pieces, started)
        return StreamingResponse(
            self._stream(model, pieces, body, started), media_type="text/event-stream"
        )

    async def _non_streaming(self, model: str, pieces: list[str], started: float) -> Response:
        self._enter()
        try:
            if self.first_token_delay_s:
                await asyncio.sleep(self.first_token_delay_s)
            text = "".join(pieces)
            body = {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": 1,
                    "completion_tokens": len(pieces),
                    "total_tokens": 1 + len(pieces),
                },
            }
            return JSONResponse(body)
        finally:
            self._leave(started, completed=True)

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self.in_flight)

    def _leave(self, started: float, *, completed: bool) -> None:
        with self._lock:
            self.in_flight -= 1
            self.server_time_s.append(time.perf_counter() - started)
            if completed:
                self.completed += 1
            else:
                self.cancelled += 1

    async def _stream(
        self, model: str, pieces: list[str], body: dict[str, Any], started: float
    ) -> AsyncIterator[bytes]:
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

        self._enter()
        completed = False
        try:
            if self.first_token_delay_s:
                await asyncio.sleep(self.first_token_delay_s)
            # vLLM opens with a role-only delta, then one chunk per detokenized piece.
            yield chunk({"role": "assistant", "content": ""})
            for i, piece in enumerate(pieces):
                if self.malformed_after is not None and i >= self.malformed_after:
                    yield b'data: {"id": "broken", "choices": [{"delta": {"content": "x\n\n'
                    completed = True
                    return
                if self.error_after is not None and i >= self.error_after:
                    error = {"message": "scripted engine failure", "type": "InternalServerError"}
                    yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
                    completed = True
                    return
                if self.cut_after is not None and i >= self.cut_after:
                    completed = True
                    return
                if i and self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                yield chunk(piece if isinstance(piece, dict) else {"content": piece})
            yield chunk({}, finish=self.finish_reason)
            opts = body.get("stream_options") or {}
            if opts.get("include_usage"):
                usage = {
                    "id": chunk_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 1,
                        "completion_tokens": len(pieces),
                        "total_tokens": 1 + len(pieces),
                    },
                }
                yield b"data: " + json.dumps(usage).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            completed = True
        finally:
            self._leave(started, completed=completed)


def main() -> None:
    """Serve a zero-latency scripted server until stdin closes; prints its URL on the first line.

    The benchmark runs it as a separate process (as vLLM would be), so its work does not share
    the client's interpreter.
    """
    import sys

    with ScriptedVLMServer.zero_latency() as srv:
        print(srv.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
