"""Streaming object events to the page as NDJSON lines, one pydantic event per line."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from streamer.http.errors import Refusal
from streamer.objects.events import ErrorMessage
from streamer.objects.table import ObjectRefused


def line(event: BaseModel) -> bytes:
    return (event.model_dump_json() + "\n").encode()


async def _lines(
    events: AsyncIterator[BaseModel], request: str, phrase: str | None
) -> AsyncIterator[bytes]:
    # The HTTP status is sent before the first line, so a refusal found while streaming (say,
    # another describe of the object started in between) is the last line, an error event.
    try:
        async for event in events:
            yield line(event)
    except ObjectRefused as exc:
        yield line(exc.event(request=request, phrase=phrase))
    except Refusal as exc:  # the clip or image deleted meanwhile (unknown_clip, unknown_image)
        yield line(ErrorMessage(code=exc.code, message=exc.detail, request=request, phrase=phrase))


def ndjson_response(
    events: AsyncIterator[BaseModel], request: str, phrase: str | None = None
) -> StreamingResponse:
    """The events as an application/x-ndjson response answering `request` (describe, chat,
    find_all: its error names the `phrase`, as Live's does)."""
    return StreamingResponse(_lines(events, request, phrase), media_type="application/x-ndjson")
