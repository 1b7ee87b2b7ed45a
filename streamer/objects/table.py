"""The object table every mode keeps: ids, the objects cap, the click rules, labels, descriptions, chat.

A live session, a clip and an image each hold one ObjectTable; what an action means (a negative
click cannot start an object, the cap, what an object is called, what a description and a chat
turn leave behind) is decided here once. A request the table turns down raises ObjectRefused
(refusal.py), which Live sends as an error message and HTTP answers with its status. What an
object is called is labels.py's; the table's share of the VLM is share.py's; one object's own
record (description, chat, what is under way for it) is tracked.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

from streamer.objects.events import (
    ObjectsMessage,
    ObjectSource,
)
from streamer.objects.refusal import ObjectRefused
from streamer.objects.share import VLMShare
from streamer.objects.tracked import TrackedObject

# Every mode's rule (and `fmu-live track`'s prompts): a new object starts from a positive click
# or a box.
NEGATIVE_FIRST = "a negative click removes a region from an object: select the object first"


def default_label(oid: int) -> str:
    """An object's label until a Find's phrase or a description names it."""
    return f"object {oid}"


def starts_an_object(labels: Iterable[int], box: Any) -> bool:
    """Whether a prompt can start an object: a box or a positive click. Negative clicks alone
    only cut a region from one (check_new refuses them, NEGATIVE_FIRST)."""
    return box is not None or 1 in labels


class ObjectTable:
    """The objects of one live session, clip or image: ids from 1, at most `cap` at once."""

    def __init__(
        self, cap: int, where: str, vlm_cap: int | None = None, vlm_wait_s: float | None = None
    ) -> None:
        self.cap = cap
        self.where = where  # "session", "clip", "image": named in the refusals
        self.vlm_share = VLMShare(vlm_cap, where, vlm_wait_s)  # held by VLM_SHARED_KINDS
        self.objects: dict[int, TrackedObject] = {}
        self._next_id = 1
        self._finding_all = False
        self._finds = 0  # checked Finds under way (Live's: each a task, from the message on)
        self.resets = 0  # a Find under way adds nothing once this moved (objects/find.py)
        self._reset_came = asyncio.Event()  # set by each reset, then replaced (reset_since)

    @classmethod
    def from_settings(cls, settings: Any, where: str) -> ObjectTable:
        """The table of a new live session, clip or image: the objects cap and the VLM share of
        the settings; a request waits its turn in the share at most one whole VLM answer's time."""
        return cls(
            settings.max_objects,
            where,
            settings.vlm_max_in_flight_per_session,
            settings.vlm_total_timeout_s,
        )

    def __len__(self) -> int:
        return len(self.objects)

    def __contains__(self, oid: object) -> bool:
        return oid in self.objects

    def __iter__(self) -> Iterator[TrackedObject]:
        return iter(list(self.objects.values()))

    def check_new(self, *, negative: bool = False) -> None:
        """Refuse unless a prompt may start a new object: positive, and under the cap."""
        if negative:
            raise ObjectRefused("bad_prompt", NEGATIVE_FIRST)
        if self.full():
            raise ObjectRefused(
                "too_many_objects",
                f"at most {self.cap} objects per {self.where}; remove one first",
            )

    def full(self) -> bool:
        """No room for another object under the cap."""
        return len(self.objects) >= self.cap

    @contextlib.contextmanager
    def finding_all(self) -> Iterator[None]:
        """One find-all at a time per live session, clip or image (two would classify the same
        regions and track each twice); a second is refused as busy. Held by whoever runs it: Live's
        task, a Clip or Image response (http/claim.py), from the request's arrival."""
        if self._finding_all:
            raise ObjectRefused(
                "busy", "a find-all is already running; stop it or wait for its count"
            )
        self._finding_all = True
        try:
            yield
        finally:
            self._finding_all = False

    @property
    def next_id(self) -> int:
        """The id the next object gets: above every id given out so far, removed ones too (ids
        are never given out twice; Live's reconnect parks it)."""
        return self._next_id

    @contextlib.contextmanager
    def finding(self) -> Iterator[None]:
        """At most as many checked Finds under way at once as the table's VLM share (each holds
        its frame while it waits its turns at the VLM, and more than the share would only wait);
        one more is refused as busy. Held by whoever runs the Find (Live's task, a Clip or Image
        request), from the request's arrival."""
        cap = self.vlm_share.cap
        if cap is not None and self._finds >= cap:
            raise ObjectRefused(
                "busy",
                f"too many Finds under way in this {self.where} (at most {cap} at once); wait "
                "for a result, then find again",
            )
        self._finds += 1
        try:
            yield
        finally:
            self._finds -= 1

    def reserve_ids(self, below: int) -> None:
        """Ids below `below` are taken (Live's resume; a kept clip or image after a restart)."""
        self._next_id = max(self._next_id, below)

    def new_id(self) -> int:
        """Reserve the next id (given to the tracker before the object is added here)."""
        oid = self._next_id
        self._next_id += 1
        return oid

    def add(
        self, source: ObjectSource, label: str | None = None, oid: int | None = None
    ) -> TrackedObject:
        """A new object, refused past the cap: checked again here, since a click or a Find that
        checked before it awaited SAM2 or the VLM may find the last place taken meanwhile."""
        self.check_new()
        return self._put(source, label, oid)

    def _put(self, source: ObjectSource, label: str | None, oid: int | None) -> TrackedObject:
        oid = self.new_id() if oid is None else oid
        self._next_id = max(self._next_id, oid + 1)
        obj = TrackedObject(oid, source, label or default_label(oid), share=self.vlm_share)
        self.objects[oid] = obj
        return obj

    def add_row(self, row: dict[str, Any]) -> TrackedObject:
        """An object back from the database (TrackedObject.row read back); the mode reads its
        prompts and results."""
        obj = self._put(row["source"], row["label"], row["oid"])  # kept: even past a lower cap
        obj.description, obj.verdict = row["description"], row["verdict"]
        obj.iou, obj.attempts, obj.note = row["iou"], row["attempts"], row["note"]
        obj.find_check = row["find_check"]
        obj.history.extend(json.loads(row["history"]))
        return obj

    def holds(self, obj: TrackedObject) -> bool:
        """Whether `obj` is still this table's (not removed): a describe, chat or auto-refine
        asks at each piece, and stops (a remove also cancels its task, between pieces)."""
        return self.objects.get(obj.id) is obj

    def get(self, oid: int) -> TrackedObject:
        obj = self.objects.get(oid)
        if obj is None:
            raise ObjectRefused(
                "unknown_object",
                f"no object {oid} in this {self.where} (objects: {listed(self.objects)}); click "
                "the object to start it",
                oid,
            )
        return obj

    async def remove(self, oid: int) -> TrackedObject | None:
        """Forget an object, cancelling its description and chat first."""
        obj = self.objects.pop(oid, None)
        if obj is not None:
            await cancel_tasks(obj.tasks())
        return obj

    def reset(self) -> list[int]:
        """Every mode's reset: the ids to forget now. A Find or find-all under way adds nothing
        after it (the person cleared the page; what it found would come back)."""
        self.resets += 1
        self._reset_came.set()
        self._reset_came = asyncio.Event()
        return list(self.objects)

    async def reset_since(self, resets: int) -> None:
        """Return once a reset has come since `resets` was read (a find-all stops asking the VLM
        then: what it would find is not kept)."""
        while self.resets == resets:
            await self._reset_came.wait()

    async def clear(self) -> None:
        """Forget every object (their clip or image is deleted): as after `remove`, each one's
        describe, chat or auto-refine stream stops at its next step instead of going on."""
        for oid in list(self.objects):
            await self.remove(oid)

    def restore(self, obj: TrackedObject) -> None:
        """Put back an object kept from an earlier session (Live's reconnect), same id and all;
        refused past the cap, as add() is (a click while the reconnect re-adds may take the room)."""
        self.check_new()
        obj.describe_task = obj.chat_task = obj.refine_task = None
        obj.streams.clear()
        obj._running.clear()
        obj.share = self.vlm_share
        self.objects[obj.id] = obj
        self.reserve_ids(obj.id + 1)

    def message(
        self, added: int | None = None, describe: bool = False, restored: bool = False
    ) -> ObjectsMessage:
        objects = [o.kept() if restored else o.info() for o in self.objects.values()]
        return ObjectsMessage(objects=objects, added=added, describe=describe, restored=restored)


def listed(ids: Iterable[int]) -> str:
    """Ids for a message a person reads: "1, 2, 5", or "none"."""
    return ", ".join(str(i) for i in sorted(ids)) or "none"


def describes_at_once(*, new_object: bool, services: Any) -> bool:
    """The click rule of every mode: a click on a new place starts the object's description at
    once when a VLM is on, from the clicked frame's mask. Live starts it itself; Clip and Image
    answer the click with `describe: true` and the page streams the description right away. Not
    while the VLM is known not to answer or not to serve the configured model
    (services.vlm_known_unusable: the page's banner says so): the object is made, and the person
    describes it once the VLM can."""
    return new_object and services.reasoner is not None and not services.vlm_known_unusable


async def cancel_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    current = asyncio.current_task()
    tasks = [t for t in tasks if t is not current]
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
