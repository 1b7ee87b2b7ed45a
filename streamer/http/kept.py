"""What Clip and Image keep by id (uploaded clips, decoded images): bounded per owner and in all,
least recently used out, and removed by retention (--keep-days, --disk-budget-mb) with the reason
said in the owner's library.

Every item belongs to the browser that made it (`request_owner`, set by streamer.http.access for
each request): another browser asking for it gets the same 404 as for an id that never was, and
one browser's uploads evict only its own older items. The total bound on top keeps memory finite
however many browsers there are.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from streamer import metrics
from streamer.http.access import ANONYMOUS_OWNER, request_owner
from streamer.http.errors import Refusal
from streamer.objects.table import ObjectTable
from streamer.storage import clips as rows
from streamer.storage import retention
from workers.words import plural

log = logging.getLogger("fmu.kept")
T = TypeVar("T")
R = TypeVar("R")
# How many owners' full sets fit at once before the least recently used of anyone's goes.
KEPT_TOTAL_FACTOR = 4


class Deleted(BaseModel):
    """DELETE /api/<mode>/{id} answer."""

    deleted: str


class Removed(BaseModel):
    """DELETE /api/<mode>/{id}/objects/{oid} answer."""

    removed: int


class RemovedItem(BaseModel):
    """An item (clip, image) the server deleted on its own (retention, the per-browser cap):
    when and why; the owner's library says so."""

    id: str
    filename: str
    at: float  # seconds since the epoch
    reason: str


class KeptItems(Generic[T]):
    """At most `keep` items of one kind ("clip", "image") under data_dir/<folder>; adding one
    past that evicts the least recently used, which the caller then frees."""

    def __init__(self, services: Any, kind: str, folder: str, keep: int) -> None:
        self.services = services
        self.settings = services.settings
        self.kind = kind
        self.root = Path(self.settings.data_dir) / folder
        self.keep = keep  # per owner
        self.keep_total = keep * KEPT_TOTAL_FACTOR
        self.items: OrderedDict[str, T] = OrderedDict()
        self.owners: dict[str, str] = {}  # item id -> the owner that made it
        self.db: Any = None  # the database the store keeps its rows in (set by the store)
        # what the server removed on its own, with whose it was: a library lists only its own
        self.removed: collections.deque[tuple[str, RemovedItem]] = collections.deque(maxlen=200)
        # The stores whose items share the data dir's budget, this one among them (share_retention)
        self.sharing: list[KeptItems[Any]] = [self]

    # -- after a restart (each store's restore) ---------------------------------------------

    async def restore_rows(
        self, load: Callable[[dict[str, Any], Path], Awaitable[tuple[T, Iterable[str]]]]
    ) -> None:
        """Bring back every item of this kind the database holds: `load(row, path)` makes it and
        names the entries under the folder it owns, or raises OSError when its file is gone or
        unreadable (its rows are then deleted, and logged). What lies under the folder that no
        item owns (an upload cut off by a crash) is removed, and logged."""
        data_dir = Path(self.settings.data_dir)
        known: set[str] = set()
        for row in await self.db.call(rows.items, self.kind):
            path = data_dir / row["media"]
            try:
                item, owns = await load(row, path)
            except OSError as exc:
                log.warning(
                    "%s %s (%s): its file %s is gone or unreadable (%s); forgetting it",
                    self.kind,
                    row["id"],
                    row["filename"],
                    path,
                    exc,
                )
                await self.db.call(rows.delete_item, row["id"])
                continue
            self.items[row["id"]] = item  # counts towards `keep` again, still its owner's
            self.owners[row["id"]] = row["owner"] or ANONYMOUS_OWNER
            known.update(owns)
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name not in known:
                    log.warning("removing %s: no %s in the database owns it", entry, self.kind)
                    await asyncio.to_thread(_remove, entry)
        if self.items:
            log.info("restored %s from the database", plural(len(self.items), self.kind))

    def new_table(self, row: dict[str, Any] | None = None) -> ObjectTable:
        """The object table of a new item, or of one back from the database (its items `row`):
        the same cap and rules as every mode, and no id given out before given out again."""
        table = ObjectTable.from_settings(self.settings, self.kind)
        if row is not None:
            table.reserve_ids(row["next_oid"])
        return table

    def find(self, item_id: str) -> T | None:
        """The item if it exists and belongs to this request's owner, else None."""
        if self.owners.get(item_id) != request_owner.get():
            return None
        return self.items.get(item_id)

    def peek(self, item_id: str) -> T:
        """The owner's item, without counting as a use of it (a library thumbnail); else the 404
        that says why it may be gone."""
        item = self.find(item_id)
        if item is None:
            raise Refusal(
                404,
                f"unknown_{self.kind}",
                f"no {self.kind} {item_id!r}: it was deleted, removed to make room for newer "
                "ones, or made in another browser; upload it again",
            )
        return item

    async def peek_read(self, item_id: str, read: Callable[[T], R]) -> R:
        """`read(item)` of the owner's item in a worker thread, without counting as a use of it
        (a library thumbnail). The item deleted meanwhile, its files with it, is the same 404 as
        one deleted before: not the error its removed files raised, nor an answer about an item
        that is gone."""
        item = self.peek(item_id)
        try:
            result = await asyncio.to_thread(read, item)
        except Exception:
            self.peek(item_id)
            raise
        self.peek(item_id)
        return result

    def get(self, item_id: str) -> T:
        item = self.peek(item_id)
        self.items.move_to_end(item_id)  # recently used items are evicted last
        return item

    def put(self, item_id: str, item: T) -> list[T]:
        """Keep the item as this request owner's; returns the ones evicted to make room: the
        owner's least recently used past `keep`, then anyone's past `keep_total`. Never one in
        use (a job running, a page open on it, an export rendering), as retention spares them:
        while those alone are over the bound, it waits for them to end."""
        owner = request_owner.get()
        self.items[item_id] = item
        self.owners[item_id] = owner

        def idle(ids: list[str]) -> list[str]:
            return [i for i in ids if i != item_id and not self.in_use(self.items[i])]

        evicted = []
        mine = [i for i in self.items if self.owners[i] == owner]
        for old in idle(mine)[: max(0, len(mine) - self.keep)]:
            why = f"this browser keeps at most {self.keep} {self.kind}s; it was the least recently used"
            evicted.append(self._evict(old, why))
        for old in idle(list(self.items))[: max(0, len(self.items) - self.keep_total)]:
            why = f"the server keeps at most {self.keep_total} {self.kind}s; it was the least recently used"
            evicted.append(self._evict(old, why))
        return evicted

    # -- retention ---------------------------------------------------------------------------

    def in_use(self, item: Any) -> bool:
        """Whether the item is busy now (retention never removes it); a store says when."""
        return False

    def size_on_disk(self, item: Any) -> int:
        """The item's bytes on disk (called in a worker thread: it may walk a folder)."""
        return int(item.size)

    async def enforce_retention(self, spare: str | None = None) -> list[RemovedItem]:
        """Delete items unused for --keep-days, then the least recently used ones while the data
        dir is over --disk-budget-mb (streamer/storage/retention.py chooses), in one order over
        every store that shares the data dir; never one in use, nor `spare` (the one just
        uploaded)."""
        settings = self.settings
        idle = [
            (store, item)
            for store in self.sharing
            for item in store.items.values()
            if not store.in_use(item) and item.id != spare
        ]
        disk, sizes = 0, {}
        if settings.disk_budget_mb > 0:

            def measure() -> tuple[int, dict[str, int]]:
                data = metrics.disk_used(Path(settings.data_dir))
                if data <= settings.disk_budget_mb * 1_000_000:
                    return data, {}  # under budget: no item's size is needed
                return data, {item.id: store.size_on_disk(item) for store, item in idle}

            disk, sizes = await asyncio.to_thread(measure)
        chosen = retention.choose(
            idle,
            used_at=lambda pair: pair[1].used,
            size_of=lambda pair: sizes.get(pair[1].id, 0),
            now=time.time(),
            keep_days=settings.keep_days,
            disk_used=disk,
            budget_mb=settings.disk_budget_mb,
            kind_of=lambda pair: pair[0].kind,
        )
        removed = []
        for (store, item), why in chosen:
            # Opened, put to work or deleted while the disk was measured or an earlier one went.
            if store.items.get(item.id) is item and not store.in_use(item):
                removed.append(await store.retire(item, why))
        return removed

    async def discard(self, item: T) -> None:
        """Free an item no longer kept: stop its work, delete its rows and files (each store
        knows its own)."""
        raise NotImplementedError

    async def delete(self, item_id: str) -> None:
        """The owner deletes the item (a 404 if it is not theirs)."""
        item = self.get(item_id)
        self.pop(item_id)
        await self.discard(item)

    async def retire(self, item: Any, reason: str) -> RemovedItem:
        """The server removes an item on its own (retention): said in the owner's library, then
        freed."""
        note = self.note_removed(item.id, item.filename, reason)
        self.pop(item.id)
        await self.discard(item)
        return note

    def _evict(self, item_id: str, why: str) -> T:
        self.note_removed(item_id, getattr(self.items[item_id], "filename", item_id), why)
        return self._forget(item_id)

    def newest_first(self) -> list[T]:
        """This request owner's items, newest upload first (the library)."""
        return sorted(self.mine(), key=lambda item: item.created, reverse=True)  # type: ignore[attr-defined]

    def opened(self, item_id: str) -> T:
        """The owner's item, opened in a page: retention keeps it longest, across restarts."""
        item = self.get(item_id)
        self.db.submit(rows.touch, item_id)
        return item

    def mine(self) -> list[T]:
        """This request owner's items (a library lists only the browser's own)."""
        owner = request_owner.get()
        return [item for i, item in self.items.items() if self.owners.get(i) == owner]

    def note_removed(self, item_id: str, filename: str, reason: str) -> RemovedItem:
        """Say in the owner's library (only theirs) that the server removed this item, and why;
        call before it is forgotten."""
        owner = self.owners.get(item_id, ANONYMOUS_OWNER)
        note = RemovedItem(id=item_id, filename=filename, at=time.time(), reason=reason)
        self.removed.appendleft((owner, note))
        log.warning("removed %s %s (%s): %s", self.kind, item_id[:8], filename, reason)
        return note

    def removed_mine(self) -> list[RemovedItem]:
        """What the server removed of this request owner's items, newest first."""
        owner = request_owner.get()
        return [note for whose, note in self.removed if whose == owner]

    def pop(self, item_id: str) -> T | None:
        if item_id not in self.items:
            return None
        return self._forget(item_id)

    def _forget(self, item_id: str) -> T:
        self.owners.pop(item_id, None)
        return self.items.pop(item_id)

    def drain(self) -> list[T]:
        """Forget every item (at shutdown); returns them to free."""
        items = list(self.items.values())
        self.items.clear()
        self.owners.clear()
        return items


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def share_retention(*stores: KeptItems[Any]) -> None:
    """These stores keep their items in one data dir: retention takes the least recently used of
    all of them, whichever store asks."""
    for store in stores:
        store.sharing = list(stores)
