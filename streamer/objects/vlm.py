"""Describe, chat and find as coroutines that yield the same events in every mode.

The mode finds the pixels (Live: the newest frame; Clip: keyframes read from the file; Image: the
image) and hands them over; these functions talk to the reasoner, keep what an answer leaves
behind on the object (description, verdict, label, chat history) and turn a VLM failure into an
error event: the stream ends cleanly and tracking goes on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from streamer import metrics
from streamer.objects.events import (
    ChatDoneMessage,
    ChatTokenMessage,
    DescriptionStartMessage,
    DescriptionTokenMessage,
    ErrorMessage,
    Event,
    VerdictMessage,
)
from streamer.objects.table import ObjectRefused, ObjectTable
from workers.reasoning.errors import VLMBusy, VLMError


def require_reasoner(reasoner: Any, off_reason: str | None) -> Any:
    """The reasoner, or ObjectRefused('vlm_off') saying why descriptions are off."""
    if reasoner is None:
        raise ObjectRefused(
            "vlm_off", off_reason or "descriptions are off: no VLM configured (pass --vlm-url)"
        )
    return reasoner


async def describe(
    table: ObjectTable,
    oid: int,
    stream: AsyncIterator[Any],
    *,
    frame_index: int,
    frames: list[int] | None = None,
) -> AsyncIterator[Event]:
    """Relay a reasoner's describe stream (tokens, then a verdict) as events; then the object list,
    since the verdict renamed the object. `stream` is describe_verified or describe_track_verified."""
    obj = table.get(oid)
    with (
        obj.running("describe"),
        table.vlm_slot(oid),
        metrics.vlm_request("describe") as first_token,
    ):
        yield DescriptionStartMessage(object_id=oid, frame_index=frame_index, frames=frames)
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for ev in stream:
                    if ev.type == "token":
                        first_token()
                        yield DescriptionTokenMessage(
                            object_id=oid, text=ev.text, attempt=int(ev.attempt)
                        )
                    elif ev.type == "verdict":
                        verdict = VerdictMessage(
                            object_id=oid,
                            description=ev.description,
                            verdict=ev.verdict,
                            iou=None if ev.iou is None else round(float(ev.iou), 4),
                            attempts=int(ev.attempts),
                            box=None if ev.box is None else tuple(float(v) for v in ev.box),
                        )
                        obj.described(
                            verdict.description, verdict.verdict, verdict.iou, verdict.attempts
                        )
                        yield verdict
                        if oid in table:
                            yield table.message()
        except (VLMError, ValueError) as exc:
            yield _failed(
                oid, "describe", f"could not describe object {oid}: {exc}. Tracking goes on.", exc
            )


async def chat(
    table: ObjectTable,
    oid: int,
    reasoner: Any,
    frame: Any,
    mask: Any,
    question: str,
    *,
    frame_index: int | None = None,
) -> AsyncIterator[Event]:
    """Stream an answer about the object; the turn joins the object's history on the server."""
    obj = table.get(oid)
    with obj.running("chat"), table.vlm_slot(oid), metrics.vlm_request("chat") as first_token:
        pieces: list[str] = []
        try:
            stream = reasoner.chat(frame, mask, obj.chat_history(), question)
            async with contextlib.aclosing(stream):
                async for text in stream:
                    first_token()
                    pieces.append(text)
                    yield ChatTokenMessage(object_id=oid, text=text)
        except (VLMError, ValueError) as exc:
            yield _failed(oid, "chat", f"could not answer about object {oid}: {exc}", exc)
            return
        answer = "".join(pieces)
        obj.remember(question, answer)
        yield ChatDoneMessage(object_id=oid, answer=answer, frame_index=frame_index)


async def ground(reasoner: Any, frame: Any, phrase: str) -> list[Any]:
    """Boxes for `phrase` on the frame; a VLM failure is refused as vlm_error."""
    try:
        return list(await reasoner.ground(frame, phrase))
    except VLMError as exc:
        raise ObjectRefused("vlm_error", f"could not find {phrase!r}: {exc}") from None


def find_note(phrase: str, boxes: list[Any], found: int, table: ObjectTable) -> str | None:
    """Why a find tracked fewer objects than it found boxes, if it did."""
    if not boxes:
        return f"nothing matching {phrase!r} in the frame"
    if found < len(boxes) and len(table) >= table.cap:
        return f"stopped at {table.cap} objects (the maximum)"
    return None


def _failed(oid: int, request: str, message: str, exc: Exception) -> ErrorMessage:
    if isinstance(exc, VLMBusy):
        metrics.VLM_REFUSED.inc()
    metrics.ERRORS.labels("vlm_error").inc()
    return ErrorMessage(code="vlm_error", object_id=oid, request=request, message=message)
