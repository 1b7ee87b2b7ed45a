"""A live session's requests: clicks and boxes, then describe, chat and find on the newest frame, as
tasks whose events go to the page.

The rules and the events are the object core's (streamer/objects/); what is Live's own is where
the pixels come from: the newest snapshot, or, for a new object whose mask is still empty, the
first snapshot that shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from streamer.live.lifecycle import Snapshot
from streamer.objects import find, find_all, vlm
from streamer.objects.events import Box, FindCheck, FindProgressMessage
from streamer.objects.requests import check_point
from streamer.objects.table import ObjectRefused, describes_at_once, starts_an_object

if TYPE_CHECKING:
    from streamer.live import protocol as p
    from streamer.live.session import LiveSession
    from workers.vision.proposals import ProposalGrid

FIRST_VIEW_TIMEOUT_S = 10.0  # a new object with an empty mask is described once a frame shows it


async def prompt(
    session: LiveSession,
    msg: p.ClickMessage | p.BoxMessage,
    *,
    points: list[tuple[float, float]] | None = None,
    labels: list[int] | None = None,
    box: tuple[float, float, float, float] | None = None,
) -> None:
    """A click or box from the page: refine the object it names, else make a new one (and,
    with a VLM on, start describing it at once, as in every mode)."""
    snap = session.snapshot
    if snap is None:
        raise ObjectRefused(
            "no_frame", "no video frame has arrived yet; wait for the picture, then click"
        )
    h, w = snap.rgb.shape[:2]  # the frame clicked on; the tracker's newest may be resized
    if points is not None:
        check_point(points[0], w, h, "frame")
    if msg.object_id is not None:
        session.objects.get(msg.object_id)
        given = (("points", points), ("labels", labels), ("box", box))
        prompt = {k: v for k, v in given if v is not None}
        await session.vision(session.tracker.refine, msg.object_id, seen_on=(w, h), **prompt)
        return
    session.objects.check_new(negative=not starts_an_object(labels or [], box))
    oid = session.objects.new_id()
    view = await session.vision(
        session.tracker.add_object, oid, points=points, labels=labels, box=box, seen_on=(w, h)
    )
    try:
        session.objects.add(msg.type, oid=oid)  # the cap again: a Find may have taken the room
    except ObjectRefused:
        await session.vision(session.tracker.remove, oid)
        raise
    describe = describes_at_once(new_object=True, services=session.services)
    session.send(session.objects.message(added=oid, describe=describe))
    try:  # a refusal here is the describe's (the page ends that description), not the click's
        if describe:
            start_describe(session, oid, view=view, wait_for_view=True)
    except ObjectRefused as exc:
        session.send(exc.event(request="describe"))


def _reasoner(session: LiveSession) -> Any:
    return vlm.require_reasoner(session.services.reasoner, session.services.descriptions_off)


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
    (`wait_for_view`) may not show yet: it is described on the first frame that does, and takes
    its turn in the VLM share only then (a wait for a frame holds no one else's description)."""
    obj = session.objects.get(oid)
    reasoner = _reasoner(session)
    obj.check_idle("describe")
    if view is None and not wait_for_view:
        view = _object_view(session, oid)

    async def described() -> AsyncIterator[BaseModel] | None:
        seen = view if view is not None else await _first_view(session, oid)
        return None if seen is None else _describe(session, oid, reasoner, seen)

    obj.describe_task = session.object_task(described, oid, "describe")


async def _first_view(session: LiveSession, oid: int) -> tuple[Snapshot, np.ndarray] | None:
    """The first frame that shows a new object (None: it was removed meanwhile)."""
    snap = await session.snapshots.wait_for(
        lambda s: oid in s.visible or oid not in session.objects, FIRST_VIEW_TIMEOUT_S
    )
    if oid not in session.objects:
        return None
    if snap is None:
        raise ObjectRefused(
            "not_visible", f"object {oid} has an empty mask; click on it again", oid
        )
    return snap, snap.masks[oid]


async def _describe(
    session: LiveSession, oid: int, reasoner: Any, view: tuple[Snapshot, np.ndarray]
) -> AsyncIterator[BaseModel]:
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

    shown = snap.rgb  # the frame the VLM picks its next click on

    async def apply(positive: bool, point: tuple[float, float]) -> Any:
        nonlocal shown
        h, w = shown.shape[:2]
        try:
            view = await session.services.run_vision_live(
                session.id,
                session.tracker.refine,
                oid,
                points=[point],
                labels=[1 if positive else 0],
                seen_on=(w, h),  # the newest frame may have another size: the tracker scales
            )
        except ValueError as exc:
            raise ObjectRefused("bad_prompt", str(exc), oid) from None
        if view is None:
            return shown, None, None, None
        shown = view[0].rgb
        return view[0].rgb, view[1], None, view[0].frame_index

    events = vlm.auto_refine(
        session.objects, oid, reasoner, snap.rgb, mask, apply, max_steps=max_steps
    )
    obj.refine_task = session.object_task(events, oid, "auto_refine")


async def stop_auto_refine(session: LiveSession, oid: int) -> None:
    """Cancel the object's auto-refine; the clicks it applied stay, as any click does."""
    done, said = await vlm.stop_refine(session.objects.get(oid))
    if not said:
        session.send(done)


async def remove_objects(session: LiveSession, oids: list[int]) -> None:
    """Stop tracking these objects: their describe, chat and auto-refine are cancelled (a running
    auto-refine ends with refine_done, so the page's Stop goes), then the object list is sent."""
    for oid in oids:
        obj = session.objects.objects.get(oid)
        refining = obj is not None and obj.refine_task is not None and not obj.refine_task.done()
        if await session.objects.remove(oid) is None:
            continue
        with contextlib.suppress(ValueError):
            await session.services.run_vision_live(session.id, session.tracker.remove, oid)
        if refining:
            session.send(vlm.refine_stopped(obj, removed=True))  # type: ignore[arg-type]
    session.send(session.objects.message())


class _LiveFindSite:
    """Find on the newest frames: a candidate is added to the tracker as a trial (its mask on the
    newest frame) and leaves it again when it is not kept; find-all proposes on the newest
    frame's cached features. A box is in `frame`'s pixels (grounded or proposed there): the
    tracker scales it to the newest frame's size, which WebRTC may have changed meanwhile."""

    def __init__(self, session: LiveSession, snap: Snapshot) -> None:
        self.session = session
        self.table = session.objects
        self.frame, self.frame_index = snap.rgb, snap.frame_index

    async def _vision(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.session.services.run_vision_live(self.session.id, fn, *args, **kwargs)

    async def _add(self, trial: int, box: Box) -> Any:
        """Add a trial to the tracker (not in the overlay until it is kept). Cancelled meanwhile
        (Stop, a remove, the close), the add may still finish on the vision thread: the trial is
        taken out again after it, so the tracker never keeps an object the list does not have."""
        try:
            return await self._vision(
                self.session.tracker.add_object, trial, box=box, trial=True, seen_on=self._size()
            )
        except asyncio.CancelledError:
            self.session.spawn(self._undo(trial), "find-undo")
            raise

    def _size(self) -> tuple[int, int]:
        h, w = self.frame.shape[:2]
        return w, h

    async def _undo(self, trial: int) -> None:
        with contextlib.suppress(Exception):  # it never got in, or the session is gone
            await self._vision(self.session.tracker.remove, trial)

    async def segment(self, box: Box) -> tuple[Any, Any, int]:
        trial = self.table.new_id()
        view = await self._add(trial, box)
        if view is None:
            return None, self.frame, trial
        return view[1], view[0].rgb, trial

    async def discard(self, trial: int) -> None:
        await self._vision(self.session.tracker.remove, trial)

    async def track(self, label: str, box: Box, trial: int, check: FindCheck) -> tuple[int, None]:
        # the cap again (a click may have taken the room): refused, the trial is discarded
        self.table.add("find", label, trial).find_check = check
        self.session.tracker.keep(trial)
        return trial, None

    async def propose(self, grid: ProposalGrid) -> list[Any]:
        snap, proposals = await self._vision(self.session.tracker.propose, grid)
        self.frame, self.frame_index = snap.rgb, snap.frame_index
        return proposals


def _find_site(session: LiveSession) -> tuple[Any, _LiveFindSite]:
    reasoner = _reasoner(session)
    snap = session.snapshot
    if snap is None:
        raise ObjectRefused("no_frame", "no video frame has arrived yet; wait for the picture")
    return reasoner, _LiveFindSite(session, snap)


async def _relay(
    session: LiveSession, events: AsyncIterator[BaseModel], request: str, phrase: str
) -> None:
    try:
        async for event in events:
            session.send(event)
    except ObjectRefused as exc:
        session.send(exc.event(request=request, phrase=phrase))


def start_find(session: LiveSession, phrase: str, all_candidates: bool = False) -> None:
    """Checked Find on the newest frame (objects/find.py): the events go to the page. At most
    the session's VLM share of them at once (its table's Find slots, held until the task ends)."""
    _start(
        session,
        session.objects.finding(),
        "find",
        phrase,
        lambda site, reasoner: find.find(site, reasoner, phrase, all_candidates=all_candidates),
    )


def start_find_all(session: LiveSession, phrase: str) -> None:
    """Find all / count on the newest frame; one at a time per session (its table's find-all
    slot, held until the task ends), stopped by stop_find."""
    limits = find_all.limits_from(session.settings)
    session.find_all_task = _start(
        session,
        session.objects.finding_all(),
        "find_all",
        phrase,
        lambda site, reasoner: find_all.find_all(site, reasoner, phrase, limits),
    )
    session.find_all_phrase = find_all.count_phrase(phrase)


def _start(
    session: LiveSession,
    slot: contextlib.AbstractContextManager[Any],
    request: str,
    phrase: str,
    events: Callable[[_LiveFindSite, Any], AsyncIterator[BaseModel]],
) -> asyncio.Task[Any]:
    """A Find's or find-all's task, holding `slot` (refused as busy when none is free) from the
    message until the task ends."""
    held = contextlib.ExitStack()
    held.enter_context(slot)
    try:
        reasoner, site = _find_site(session)
        task = session.spawn(_relay(session, events(site, reasoner), request, phrase), request)
    except BaseException:
        held.close()
        raise
    task.add_done_callback(lambda _: held.close())
    return task


async def stop_find_all(session: LiveSession) -> None:
    """Cancel the running find-all: nothing is tracked unless it had finished classifying."""
    task = session.find_all_task
    if task is None or task.done():
        raise ObjectRefused("bad_message", "no find-all is running")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    session.send(session.objects.message())
    session.send(FindProgressMessage(phrase=session.find_all_phrase, stage="stopped"))
