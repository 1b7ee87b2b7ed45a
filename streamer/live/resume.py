"""Live's reconnect: a session whose connection dropped keeps its objects for the idle timeout.

The tracker's memory banks go with the closed session (they are the big part, and the page's new
connection may bring another picture size); what is kept is each object's id, label, description,
verdict and chat, and its box on the last frame. A page that comes back (a new offer with
`resume`) gets them added again from those boxes on its new session's first frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamer.live.tracking import scale_prompt
from streamer.objects.table import ObjectRefused, default_label
from streamer.objects.tracked import TrackedObject

if TYPE_CHECKING:
    from streamer.live.session import LiveSession

# Closes that mean the connection dropped (not that the page or server ended the session on
# purpose): the session's objects are kept for the idle timeout so the page can get them back.
DROPPED = frozenset(
    {
        "websocket closed",
        "the page went away",
        "peer connection failed",
        "peer connection closed",
        "the page stopped reading messages",
        "message too big",  # closed 1009: the page reconnects, and its objects are not its mistake
    }
)
# A session ended by a bug of the server's (a session task failed): its objects are not the
# person's mistake either, and wait for the page's next start of Live (it does not reconnect by
# itself: a bug met again would end each new session the same way).
INTERNAL_ERROR = "internal error"


def keeps_objects(reason: str) -> bool:
    """Whether a session closed for `reason` parks its objects for a page that resumes it."""
    return reason in DROPPED or reason.startswith(INTERNAL_ERROR)


@dataclass
class Parked:
    """A dropped session's objects, kept for the idle timeout."""

    objects: list[TrackedObject]
    boxes: dict[int, tuple[float, float, float, float]]  # on the last frame, in its pixels
    frame_size: tuple[int, int]  # (width, height) of that frame
    next_id: int
    # Objects that had shown on no frame yet (no box to re-add them from): the page is told.
    unseen: list[TrackedObject] = field(default_factory=list)


def park(session: LiveSession) -> Parked | None:
    """What a reconnecting page gets back: each object that showed on some frame, with its box on
    the last frame it showed on (in the newest frame's pixels), and the others, to say they are
    not back. A session that dropped while it restored what it resumed parks those not back yet
    too, with the boxes they came with, beside those it holds (restored, or clicked meanwhile).
    Ids given out meanwhile stay given: the next id is the table's own (an id is never given out
    twice)."""
    waiting, snap, tracker = session.resuming, session.snapshot, session.tracker
    if tracker is None or (snap is None and waiting is None):
        return None
    # Written on the vision thread; a copy is a consistent read. Each box with its frame's size.
    seen = dict(tracker.last_boxes)
    everything = list(session.objects)
    next_id = session.objects.next_id
    if waiting is not None:
        for o in waiting.objects:
            seen.setdefault(o.id, (waiting.boxes[o.id], waiting.frame_size))
        everything += [o for o in waiting.objects + waiting.unseen if o.id not in session.objects]
        next_id = max(next_id, waiting.next_id)
    if not everything:
        return None
    everything.sort(key=lambda o: o.id)
    objects = [o for o in everything if o.id in seen]
    unseen = [o for o in everything if o.id not in seen]
    w, h = (snap.rgb.shape[1], snap.rgb.shape[0]) if snap is not None else waiting.frame_size
    boxes = {
        o.id: scale_prompt({"box": seen[o.id][0]}, seen[o.id][1], (w, h))["box"] for o in objects
    }
    return Parked(objects, boxes, (w, h), next_id, unseen)


async def restore(session: LiveSession, parked: Parked) -> None:
    """Add the parked objects to `session` from their boxes on its first frame, ids kept. One
    that does not fit under the object cap (objects added since took the room), that the
    tracker refuses, or that had shown on no frame is left out, and an error says so."""
    # As long as the session waits for its first frame: with none, its watchdog closes it
    # (session_first_frame_timeout_s), cancelling this, and parks the objects again.
    await session.snapshots.wait_for(lambda s: True, None)
    for obj in parked.objects:
        if obj.id in session.objects or obj not in parked.objects:  # unparked meanwhile
            continue
        try:
            await _restore_one(session, obj, parked)
        except ObjectRefused as exc:
            _not_back(session, obj, exc)
    for obj in parked.unseen:
        why = "it had not shown on any frame yet, so there was nothing to find it again from"
        _not_back(session, obj, ObjectRefused("not_visible", why, obj.id))
    session.resuming = None  # restored: from now on the session parks what it tracks
    session.send(session.objects.message(restored=True))


def _not_back(session: LiveSession, obj: TrackedObject, exc: ObjectRefused) -> None:
    """Tell the page that parked object `obj` is not back, and why (`exc`)."""
    named = "" if obj.label == default_label(obj.id) else f" ({obj.label})"
    why = f"object {obj.id}{named} was not brought back after the reconnect ({exc}); click it again"
    event = exc.event(request="resume")
    session.send(event.model_copy(update={"message": why, "object_id": obj.id}))


async def _restore_one(session: LiveSession, obj: TrackedObject, parked: Parked) -> None:
    session.objects.check_new()
    box = parked.boxes[obj.id]
    await session.vision(session.tracker.add_object, obj.id, box=box, seen_on=parked.frame_size)
    if obj not in parked.objects:  # removed (a remove, a reset) while SAM2 re-added it
        await session.vision(session.tracker.remove, obj.id)
        return
    try:
        session.objects.restore(obj)  # the cap again: a click may have taken the room meanwhile
    except ObjectRefused:
        await session.vision(session.tracker.remove, obj.id)
        raise


def unpark(session: LiveSession, oids: list[int] | None) -> bool:
    """A remove (`oids`) or a reset (None) while a resume restores: those of its objects not back
    yet stay away (the page removed them from its list). Whether one of `oids` was waiting."""
    parked = session.resuming
    if parked is None:
        return False
    before = len(parked.objects) + len(parked.unseen)
    parked.objects = [] if oids is None else [o for o in parked.objects if o.id not in oids]
    parked.unseen = [] if oids is None else [o for o in parked.unseen if o.id not in oids]
    return len(parked.objects) + len(parked.unseen) < before
