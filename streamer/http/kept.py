"""What Clip and Image keep by id (uploaded clips, decoded images): bounded, least recently used out."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Generic, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel

from streamer.objects.table import ObjectTable

T = TypeVar("T")


class Deleted(BaseModel):
    """DELETE /api/<mode>/{id} answer."""

    deleted: str


class Removed(BaseModel):
    """DELETE /api/<mode>/{id}/objects/{oid} answer."""

    removed: int


class KeptItems(Generic[T]):
    """At most `keep` items of one kind ("clip", "image") under data_dir/<folder>; adding one
    past that evicts the least recently used, which the caller then frees."""

    def __init__(self, services: Any, kind: str, folder: str, keep: int) -> None:
        self.services = services
        self.settings = services.settings
        self.kind = kind
        self.root = Path(self.settings.data_dir) / folder
        self.keep = keep
        self.items: OrderedDict[str, T] = OrderedDict()

    def new_table(self) -> ObjectTable:
        """The object table of a new item: the same cap and rules as every mode."""
        return ObjectTable(self.settings.max_objects, self.kind)

    def get(self, item_id: str) -> T:
        item = self.items.get(item_id)
        if item is None:
            raise HTTPException(
                404,
                f"no {self.kind} {item_id!r}: it was deleted, replaced by newer ones, or the "
                "server restarted; upload it again",
            )
        self.items.move_to_end(item_id)  # recently used items are evicted last
        return item

    def put(self, item_id: str, item: T) -> list[T]:
        """Keep the item; returns the ones evicted to make room."""
        self.items[item_id] = item
        evicted = []
        while len(self.items) > self.keep:
            evicted.append(self.items.popitem(last=False)[1])
        return evicted

    def pop(self, item_id: str) -> T | None:
        return self.items.pop(item_id, None)

    def drain(self) -> list[T]:
        """Forget every item (at shutdown); returns them to free."""
        items = list(self.items.values())
        self.items.clear()
        return items
