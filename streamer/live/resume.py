"""Live's reconnect: a session whose connection dropped keeps its objects for the idle timeout.

The tracker's memory banks go with the closed session (they are the big part, and the page's new
connection may bring another picture size); what is kept is each object's id, label, description,
verdict and chat, and its box on the last frame. A page that comes back (a new offer with
`resume`) gets them added again from those boxes on its new session's first frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamer.objects.table import ObjectRefused, TrackedObject

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
RESTORE_WAIT_S = 30.0  # how long a resumed session waits for its first frame to re-add objects


@dataclass
class Parked:
    """A dropped session's objects, kept for the idle timeout."""

    objects: list[TrackedObject]
    boxes: dict[int, tuple[float, float, float, float]]  # on the last frame, in its pixels
    frame_size: tuple[int, int]  # (width, height) of that frame
    next_id: int


def park(session: LiveSession) -> Parked | None:
    """What a reconnecting page gets back: each object that showed on some frame, with its box on
    the last frame it showed on; or, for a session that dropped before it had restored what it
    resumed, those same objects again."""
    if session.resuming is not None:
        return session.resuming
    snap, tracker = session.snapshot, session.tracker
    if snap is None or tracker is None or not len(session.objects):
        return None
    boxes = dict(tracker.last_boxes)  # written on the vision thread; a copy is a consistent read
    objects = [o for o in session.objects if o.id in boxes]
    if not objects:
        return None
    h, w = snap.rgb.shape[:2]
    return Parked(objects, boxes, (w, h), max(o.id for o in session.objects) + 1)


async def restore(session: LiveSession, parked: Parked) -> None:
    """Add the parked objects to `session` from their boxes on its first frame, ids kept."""
    snap = await session.snapshots.wait_for(lambda s: True, RESTORE_WAIT_S)
    if snap is None:
        return
    h, w = snap.rgb.shape[:2]
    sx, sy = w / parked.frame_size[0], h / parked.frame_size[1]
    for obj in parked.objects:
        if len(session.objects) >= session.objects.cap or obj.id in session.objects:
            continue
        x0, y0, x1, y1 = parked.boxes[obj.id]
        try:
            await session._vision(
                session.tracker.add_object, obj.id, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy)
            )
        except ObjectRefused:
            continue
        session.objects.restore(obj, parked.next_id)
    session.resuming = None  # restored: from now on the session parks what it tracks
    session.send(session.objects.message())
