"""Describe, chat and auto-refine: the VLM's part, the same in every mode (Find: objects/find.py).

The mode finds the pixels (Live: the newest frame; Clip: keyframes read from the file; Image: the
image) and hands them over; these functions talk to the reasoner, keep what an answer leaves
behind on the object (description, verdict, label, chat history) and turn a VLM failure into an
error event: the stream ends cleanly and tracking goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from streamer import metrics
from streamer.objects.events import (
    ChatDoneMessage,
    ChatTokenMessage,
    DescriptionStartMessage,
    DescriptionTokenMessage,
    ErrorMessage,
    Event,
    ObjectResult,
    RefineClickMessage,
    RefineDoneMessage,
    VerdictMessage,
)
from streamer.objects.table import ObjectRefused, ObjectTable
from streamer.objects.tracked import TrackedObject
from workers.masks import scale_coords
from workers.reasoning.backends import Retracted
from workers.reasoning.errors import VLMBusy, VLMError
from workers.words import plural


def require_reasoner(reasoner: Any, off_reason: str | None) -> Any:
    """The reasoner, or ObjectRefused('vlm_off') saying why descriptions are off
    (Services.descriptions_off)."""
    if reasoner is None:
        raise ObjectRefused("vlm_off", off_reason or "descriptions are off")
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
    with obj.running("describe"), metrics.vlm_request("describe") as first_token:
        yield DescriptionStartMessage(object_id=oid, frame_index=frame_index, frames=frames)
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for ev in stream:
                    if not table.holds(obj):  # removed meanwhile: the VLM stream closes here
                        return
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
                            note=ev.note or None,
                        )
                        obj.described(
                            verdict.description,
                            verdict.verdict,
                            verdict.iou,
                            verdict.attempts,
                            verdict.note,
                        )
                        yield verdict
                        if oid in table:
                            yield table.message()
        except (VLMError, ValueError) as exc:
            yield _failed(
                oid,
                "describe",
                f"could not describe object {oid}: {exc}. The object and its mask stay.",
                exc,
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
    with obj.running("chat"), metrics.vlm_request("chat") as first_token:
        pieces: list[str] = []
        try:
            stream = reasoner.chat(frame, mask, obj.chat_history(), question)
            async with contextlib.aclosing(stream):
                async for text in stream:
                    if not table.holds(obj):  # removed meanwhile: the VLM stream closes here
                        return
                    if isinstance(text, Retracted):  # it was reasoning: not the answer kept
                        pieces.clear()
                        continue
                    first_token()
                    pieces.append(text)
                    yield ChatTokenMessage(object_id=oid, text=text)
        except (VLMError, ValueError) as exc:
            yield _failed(oid, "chat", f"could not answer about object {oid}: {exc}", exc)
            return
        answer = "".join(pieces)
        if not answer.strip():  # not a turn: kept, it would show as a bare "A:" from now on
            yield _failed(
                oid,
                "chat",
                f"could not answer about object {oid}: the VLM answered nothing; ask again",
            )
            return
        obj.remember(question, answer)
        yield ChatDoneMessage(object_id=oid, answer=answer, frame_index=frame_index)


# A mode's refinement: apply one click (positive?, (x, y) in frame pixels) to the object as an
# ordinary click; answer (frame, the object's new mask, its result to show or None, frame index).
ApplyClick = Callable[
    [bool, tuple[float, float]], Awaitable[tuple[Any, Any, ObjectResult | None, int | None]]
]


def auto_refine(
    table: ObjectTable,
    oid: int,
    reasoner: Any,
    frame: Any,
    mask: Any,
    apply: ApplyClick,
    *,
    max_steps: int,
) -> AsyncIterator[Event]:
    """The VLM drives SAM2 as an annotator would: it sees the Spotlight of the current mask and
    the frame, answers the next click or done; each click is applied as an ordinary refinement,
    up to `max_steps`. An answer that is no click ends it with nothing applied for that step.
    Its count of clicks applied starts from the request (one stopped or removed while it waited
    its VLM turn applied none: it said the last run's count). A stop (stop_refine) while SAM2
    applies a click lets that click end as the others do, with its refine_click, then ends."""
    requested = table.get(oid)
    requested.refine_steps, requested.refine_stop = 0, None

    async def refine(frame: Any, mask: Any) -> AsyncIterator[Event]:
        obj = table.get(oid)  # removed before its turn came: refused as unknown
        with obj.running("refine"):
            # The phrase the person gave (Find) or the VLM's own description names the target.
            target = obj.label if obj.source == "find" or obj.description else None
            history: list[tuple[str, tuple[float, float]]] = []
            steps = 0  # obj.refine_steps, set to 0 at the request, counts with it
            phase = {"applying": False, "stopping": False}

            def end(reason: Any, message: str) -> RefineDoneMessage:
                return RefineDoneMessage(object_id=oid, steps=steps, reason=reason, message=message)

            def stop() -> bool:  # stop_refine: whether this ends by itself (else it is cancelled)
                phase["stopping"] = True
                return phase["applying"]

            obj.refine_stop = stop
            while True:
                if not table.holds(obj):  # removed meanwhile: nothing more to refine
                    return
                if phase["stopping"]:  # stopped while SAM2 applied the last click
                    yield refine_stopped(obj)
                    return
                if mask is None or not mask.any():
                    yield end("empty", f"object {oid}'s mask is empty: click on the object first")
                    return
                if steps >= max_steps:
                    yield end(
                        "limit",
                        f"stopped after {plural(steps, 'click')} (the limit) without the VLM saying done",
                    )
                    return
                try:
                    nxt = await reasoner.next_click(frame, mask, target, history)
                except (VLMError, ValueError) as exc:
                    yield _failed(oid, "auto_refine", f"could not refine object {oid}: {exc}", exc)
                    yield end("error", f"the VLM failed after {plural(steps, 'click')}: {exc}")
                    return
                if nxt.action == "done":
                    yield end(
                        "done", f"the VLM says the mask is right after {plural(steps, 'click')}"
                    )
                    return
                if nxt.action == "unclear":
                    yield end(
                        "unclear",
                        f"the VLM answered neither a click nor done ({nxt.answer[:120]!r}); "
                        f"nothing was applied for it"
                        + (f" ({clicks_kept(steps)})" if steps else ""),
                    )
                    return
                positive = nxt.action == "positive"
                # Rounded before it is applied, so the click the page draws is the one SAM2 got.
                x, y = round(float(nxt.point[0]), 2), round(float(nxt.point[1]), 2)
                seen = frame.shape[1::-1]  # (width, height) of the frame the VLM picked it on
                # Once SAM2 has the click it lands, stopped or not (its thread runs on): it is
                # seen through, so the count the end reports matches the mask. A stop now lets
                # it end as the others do (stop_refine); a remove cancels, and it is counted.
                applying = asyncio.ensure_future(apply(positive, (x, y)))
                phase["applying"] = True
                try:
                    frame, mask, result, index = await asyncio.shield(applying)
                except ObjectRefused as exc:  # stopped meanwhile: it ends as the stop said
                    yield (
                        refine_stopped(obj)
                        if phase["stopping"]
                        else end("error", f"the proposed click could not be applied: {exc}")
                    )
                    return
                except asyncio.CancelledError:  # removed, or the client gone
                    with contextlib.suppress(Exception):
                        await applying
                        obj.refine_steps = steps + 1
                    raise
                finally:
                    phase["applying"] = False
                steps += 1
                obj.refine_steps = steps
                history.append((nxt.action, nxt.model_point))
                # Live: the picture's size changed; drawn on the new one.
                if frame.shape[1::-1] != seen:
                    x, y = (round(v, 2) for v in scale_coords((x, y), seen, frame.shape[1::-1]))
                yield RefineClickMessage(
                    object_id=oid,
                    step=steps,
                    x=x,
                    y=y,
                    positive=positive,
                    answer=nxt.answer,
                    frame_index=index,
                    result=result,
                )

    return refine(frame, mask)


async def stop_refine(obj: TrackedObject) -> tuple[RefineDoneMessage, bool]:
    """Stop the object's auto-refine (its `refine_task`), in every mode: (how it ended, whether
    the refine said so itself). The clicks it applied stay. A click SAM2 is applying ends as the
    others do, with its refine_click, and the refine then ends itself; else it is cancelled (the
    VLM's request stops with it), and the caller says how it ended. One that has not started yet
    ends before its first VLM request, as Live's cancelled task does."""
    task = obj.refine_task
    if task is None or task.done():
        if obj.refine_before_start is not None:  # Clip and Image: its request has not started
            await obj.refine_before_start()  # its stream yet (http/claim.py); it answers this
            return refine_stopped(obj), True
        raise ObjectRefused("bad_message", f"object {obj.id} is not being refined", obj.id)
    ends_itself = obj.refine_stop is not None and obj.refine_stop()
    if not ends_itself:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return refine_stopped(obj), ends_itself


def refine_stopped(obj: TrackedObject, *, removed: bool = False) -> RefineDoneMessage:
    """How an auto-refine ends when the person stops it, or removes its object, in every mode."""
    message = (
        f"object {obj.id} was removed, so its auto-refine stopped"
        if removed
        else f"stopped; {clicks_kept(obj.refine_steps)}"
    )
    return RefineDoneMessage(
        object_id=obj.id, steps=obj.refine_steps, reason="stopped", message=message
    )


def clicks_kept(n: int) -> str:
    """What an auto-refine that ends before the VLM says done leaves, in words (web/agent.js
    words its own line the same way, for a stop it made by closing the stream)."""
    if n == 0:
        return "no click was applied"
    return f"the {plural(n, 'click')} applied {'stays' if n == 1 else 'stay'}"


def _failed(oid: int, request: str, message: str, exc: Exception | None = None) -> ErrorMessage:
    """The page's error event for a VLM request that failed, in every mode."""
    if isinstance(exc, VLMBusy):
        metrics.VLM_REFUSED.inc()
    return ObjectRefused("vlm_error", message, oid).event(request)
