"""HTTP errors: the one body every refusal has, and what a request needs before it can be served.

Every HTTP error, from a route, a middleware or the framework itself, answers
`{"code": code, "detail": message}` (plus `"object_id"` where an object is named), built by
`error_response`; the codes are docs/protocol.md's error table.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from streamer.objects import vlm
from streamer.objects.requests import field_error
from streamer.objects.table import ObjectRefused
from streamer.services import Services

# Codes for HTTPExceptions raised without one: the framework's own (an unknown route or method, a
# body it cannot parse) and any raised as a plain HTTPException.
_CODE_BY_STATUS = {400: "bad_message", 404: "not_found", 405: "bad_method", 422: "bad_message"}
# Validation errors whose place is the whole body: it is no JSON object at all.
_NOT_AN_OBJECT = frozenset({"missing", "model_attributes_type", "dict_type", "model_type"})


class Refusal(HTTPException):
    """A request turned down: its HTTP status, a code from docs/protocol.md's error table, and
    why, in words a person can act on."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, message, dict(headers) if headers else None)
        self.code = code


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    object_id: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The one error body (an ASGI app too, so the middlewares answer with it)."""
    body: dict[str, Any] = {"code": code, "detail": message}
    if object_id is not None:
        body["object_id"] = object_id
    return JSONResponse(body, status_code=status, headers=headers)


class FileAnswer(FileResponse):
    """A file (a clip, its copy, an image, a thumbnail, an export) whose refused Range gets the one
    error body: Starlette answers one itself, with an empty 416 or a plain-text 400. A file
    removed before it is sent (its clip or image deleted meanwhile) is the 404 its item gets
    (`unknown_clip`, `unknown_image`: `kind`), not Starlette's RuntimeError (a 500, or a
    response cut off after its headers); once open, it is sent whole. Its range parsing and
    file opening are private API, pinned by requirements.lock and tested
    (tests/test_http_errors.py)."""

    _file: anyio.AsyncFile[bytes] | None = None

    def __init__(self, path: str | os.PathLike[str], *, kind: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            file = await anyio.open_file(self.path, mode="rb")
        except (FileNotFoundError, NotADirectoryError):
            where = str(scope.get("path", ""))[:200]
            gone = error_response(
                404,
                f"unknown_{self.kind}",
                f"{where} was removed before it could be sent: its {self.kind} was deleted "
                "meanwhile, or removed to make room; reload the library",
            )
            return await gone(scope, receive, send)
        try:
            if self.stat_result is None:  # the open file's: Starlette's own would stat the path
                self.stat_result = os.fstat(file.wrapped.fileno())
                self.set_stat_headers(self.stat_result)
            self._file = file
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # closed even when the transfer is cancelled
                await file.aclose()

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        # The file __call__ opened (and closes): removed since, it is still read whole.
        assert self._file is not None
        yield self._file

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as exc:
            why = exc.content.rstrip(".").removeprefix("Range header: ")
            raise Refusal(
                400, "bad_request", f"Range {http_range[:80]!r}: {why}; ask for bytes=START-END"
            ) from None
        except RangeNotSatisfiable:
            raise Refusal(
                416,
                "bad_request",
                f"Range {http_range[:80]!r} starts past the end of the file ({file_size} bytes)",
                {"Content-Range": f"bytes */{file_size}"},
            ) from None


def describe_invalid_request(errors: Sequence[Mapping[str, Any]]) -> str:
    """A request that does not fit its model, in words: where and what, never the input echoed
    back (it may not even be JSON-encodable: Infinity, NaN)."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON: send one JSON object, as application/json"
    if loc == ("body",) and first.get("type") in _NOT_AN_OBJECT:
        return "the body must be one JSON object, sent as application/json"
    return field_error({**first, "loc": loc[1:] if loc[:1] == ("body",) else loc})


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error a route or the framework raises with the one body."""
    app.add_exception_handler(ObjectRefused, _refused)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal)


async def _refused(request: Request, exc: ObjectRefused) -> JSONResponse:
    # Live sends the same code and reason as an error message.
    return error_response(exc.http_status, exc.code, str(exc), object_id=exc.object_id)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "bad_message", describe_invalid_request(exc.errors()))


def _methods_at(request: Request) -> set[str]:
    """The methods the API's routes take at the request's path (none: no route has it)."""
    path = request.url.path
    routes = request.app.router.routes
    return {
        m for r in routes if isinstance(r, APIRoute) and r.path_regex.match(path) for m in r.methods
    }


def _websocket_at(request: Request) -> bool:
    """A websocket route has the request's path (asked for over plain HTTP)."""
    path = request.url.path
    return any(
        isinstance(r, APIWebSocketRoute) and r.path_regex.match(path)
        for r in request.app.router.routes
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status, headers = exc.status_code, exc.headers
    detail = str(exc.detail)
    if detail in {s.phrase for s in HTTPStatus if s.value == status}:  # a bare "Not Found"
        # The framework's own: a path no route has, or a method its route does not take. The
        # page's files answer every path no route took, with their own 404 or 405 (and their
        # Allow): a method the API's route at that path does not take is a 405 naming its own.
        where = f"{request.method} {request.url.path[:200]}"
        takes = _methods_at(request) if status in (404, 405) else set()
        if takes:
            status, headers = 405, {"Allow": ", ".join(sorted(takes))}
        elif status == 404 and _websocket_at(request):
            status, headers = 426, {"Upgrade": "websocket"}
        detail = {
            404: f"nothing answers {where}; the routes are in docs/protocol.md",
            426: f"{request.url.path[:200]} is a websocket: connect to it with ws:// (wss:// "
            "over HTTPS); see docs/protocol.md",
            405: f"{where}: that route does not take {request.method} (it takes "
            f"{', '.join(sorted(takes)) or 'GET, HEAD'}); see docs/protocol.md",
        }.get(status, f"{where}: {detail.lower()}")
    code = getattr(exc, "code", None) or _CODE_BY_STATUS.get(status)
    if code is None:
        code = "bad_request" if status < 500 else "internal"
    return error_response(status, code, detail, headers=headers)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    # The server logs the exception itself (it is raised on after this answer).
    message = (
        f"{request.method} {request.url.path[:200]} failed: a bug in the server (the details "
        "are in its log); try again, or report it"
    )
    return error_response(500, "internal", message)


def require_vision(services: Services) -> Any:
    """The loaded SAM2 model, or a 503 (`not_ready`) that says why there is none yet."""
    why = services.vision_unavailable
    if why is not None:
        raise Refusal(503, "not_ready", f"segmentation is not available yet: {why}")
    return services.vision_model


def require_reasoner(services: Services) -> Any:
    """The reasoner, or ObjectRefused('vlm_off') (a 503) saying why descriptions are off."""
    return vlm.require_reasoner(services.reasoner, services.descriptions_off)
