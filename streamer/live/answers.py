"""Describe, chat and find in a live session: on the newest frame, as tasks whose events go to the page.

The rules and the events are the object core's (streamer/objects/); what is Live's own is where
the pixels come from: the newest snapshot, or, for a new object whose mask is still empty, the
first snapshot that shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from streamer.live.lifecycle import Snapshot
from streamer.objects import vlm
from streamer.objects.events import (
    ErrorMessage,
    FindResultMessage,
    FoundObject,
    RefineDoneMessage,
    RejectedCandidate,
)
from streamer.objects.table import ObjectRefused

if TYPE_CHECKING:
    from streamer.live.session import LiveSession

FIRST_VIEW_TIMEOUT_S = 10.0  # a new object with an empty mask is described once a frame shows it


def _reasoner(session: LiveSession) -> Any:
    return vlm.require_reasoner(session.services.reasoner, session.services.vlm_off_reason)


def _object_view(session: LiveSession, oid: int) -> tuple[Snapshot, np.ndarray]:
    """The newest frame with this object's mask on it."""
    snap = session.snapshot
    if snap is None or oid not in snap.visible:
        raise ObjectRefused(
            "not_visible",
            f"object {oid} is not visible in the newest frame; try again when it is",
            oid,
        )
    return snap, snap.masks[oid]


def start_describe(
    session: LiveSession,
    oid: int,
    *,
    view: tuple[Snapshot, np.ndarray] | None = None,
    wait_for_view: bool = False,
) -> None:
    """Describe the object on `view`, else on the newest frame that shows it. A new object
    (`wait_for_view`) may not show yet: it is described on the first frame that does."""
    obj = session.objects.get(oid)
    reasoner = _reasoner(session)
    obj.check_idle("describe")
    if view is None and not wait_for_view:
        view = _object_view(session, oid)
    obj.describe_task = session.object_task(
        _describe(session, oid, reasoner, view), oid, "describe"
    )


async def _describe(
    session: LiveSession, oid: int, reasoner: Any, view: tuple[Snapshot, np.ndarray] | None
) -> AsyncIterator[BaseModel]:
    if view is None:
        snap = await session.snapshots.wait_for(
            lambda s: oid in s.visible or oid not in session.objects, FIRST_VIEW_TIMEOUT_S
        )
        if oid not in session.objects:
            return
        if snap is None:
            yield ErrorMessage(
                code="not_visible",
                object_id=oid,
                request="describe",
                message=f"object {oid} has an empty mask; click on it again",
            )
            return
        view = snap, snap.masks[oid]
    snap, mask = view
    stream = reasoner.describe_verified(snap.rgb, mask)
    async for event in vlm.describe(session.objects, oid, stream, frame_index=snap.frame_index):
        yield event


def start_chat(session: LiveSession, oid: int, question: str) -> None:
    obj = session.objects.get(oid)
    reasoner = _reasoner(session)
    obj.check_idle("chat")
    snap, mask = _object_view(session, oid)
    events = vlm.chat(
        session.objects, oid, reasoner, snap.rgb, mask, question, frame_index=snap.frame_index
    )
    obj.chat_task = session.object_task(events, oid, "chat")


def start_auto_refine(session: LiveSession, oid: int, max_steps: int) -> None:
    """The VLM refines the object by clicks on the newest frames, one tracker refinement each."""
    obj = session.objects.get(oid)
    reasoner = _reasoner(session)
    obj.check_idle("refine")
    snap, mask = _object_view(session, oid)

    async def apply(positive: bool, point: tuple[float, float]) -> Any:
        try:
            view = await session.services.run_vision_live(
                session.id,
                session.tracker.refine,
                oid,
                points=[point],
                labels=[1 if positive else 0],
            )
        except ValueError as exc:
            raise ObjectRefused("bad_prompt", str(exc), oid) from None
        if view is None:
            return snap.rgb, None, None, None
        return view[0].rgb, view[1], None, view[0].frame_index

    events = vlm.auto_refine(
        session.objects, oid, reasoner, snap.rgb, mask, apply, max_steps=max_steps
    )
    obj.refine_task = session.object_task(events, oid, "auto_refine")


async def stop_auto_refine(session: LiveSession, oid: int) -> None:
    """Cancel the object's auto-refine; the clicks it applied stay, as any click does."""
    obj = session.objects.get(oid)
    task = obj.refine_task
    if task is None or task.done():
        raise ObjectRefused("bad_message", f"object {oid} is not being refined", oid)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    session.send(
        RefineDoneMessage(
            object_id=oid,
            steps=obj.refine_steps,
            reason="stopped",
            message=f"stopped; the {obj.refine_steps} clicks applied stay",
        )
    )


def start_find(session: LiveSession, phrase: str, all_candidates: bool = False) -> None:
    reasoner = _reasoner(session)
    snap = session.snapshot
    if snap is None:
        raise ObjectRefused("no_frame", "no video frame has arrived yet; wait for the picture")
    session.spawn(_find(session, reasoner, snap, phrase, all_candidates), "find")


async def _find(
    session: LiveSession, reasoner: Any, snap: Snapshot, phrase: str, all_candidates: bool
) -> None:
    """Ground on the snapshot, add each box to the tracker (its mask on the newest frame), show
    that mask's Spotlight to the VLM with the phrase; a rejected one leaves the tracker again
    before the page lists it (or stays, flagged, with all_candidates)."""
    found: list[FoundObject] = []
    dropped: list[RejectedCandidate] = []
    trial: int | None = None  # in the tracker, not yet in the table
    note = None
    try:
        boxes = await vlm.ground(reasoner, snap.rgb, phrase)
        for g in vlm.find_candidates(boxes, session.objects):
            if len(session.objects) >= session.objects.cap:
                break
            box = tuple(float(v) for v in g.box)
            trial = session.objects.new_id()
            try:
                view = await session.services.run_vision_live(
                    session.id, session.tracker.add_object, trial, box=box
                )
            except ValueError as exc:
                note, trial = str(exc), None
                continue
            frame, mask = (snap.rgb, None) if view is None else (view[0].rgb, view[1])
            check, answer = await vlm.check_candidate(reasoner, frame, mask, phrase)
            if not vlm.kept(check, all_candidates):
                dropped.append(vlm.rejected(g, phrase, check, answer))
                oid, trial = trial, None
                await session.services.run_vision_live(session.id, session.tracker.remove, oid)
                continue
            label = getattr(g, "label", None) or phrase
            session.objects.add("find", label, trial).find_check = check
            found.append(vlm.found_object(trial, g, label, check, answer))
            trial = None
    except ObjectRefused as exc:
        session.send(exc.event(request="find"))
        return
    finally:
        if trial is not None:  # a VLM failure or a cancel mid-check: the candidate goes
            await session.services.run_vision_live(session.id, session.tracker.remove, trial)
    note = vlm.find_note(phrase, boxes, len(found), session.objects, dropped) or note
    session.send(session.objects.message(added=found[0].object_id if found else None))
    session.send(
        FindResultMessage(
            phrase=phrase,
            objects=found,
            message=note,
            frame_index=snap.frame_index,
            rejected=dropped,
        )
    )
