"""The library, as Clip and Image both serve it: one browser's items newest first (with what the
server removed of them, and why), one item opened, one item deleted.

  GET    /api/<kind>s          the library: {"<kind>s": [summary, ...], "removed": [...]}
  GET    /api/<kind>s/{id}     the item, opened (retention keeps what is opened longest)
  DELETE /api/<kind>s/{id}     stop its work and delete its rows and files

No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations,
and these name the mode's store dependency, which only the enclosing call knows.
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from streamer.http.kept import Deleted, KeptItems


def add_library_routes(
    router: APIRouter,
    kind: str,
    store: Callable[..., KeptItems[Any]],
    listing: type[BaseModel],
    info: type[BaseModel],
) -> None:
    """Add the three library routes of `kind` ("clip", "image") to the mode's router; `store` is
    the dependency that gives the mode's KeptItems, `listing` and `info` the answers' models."""
    Store = Annotated[KeptItems[Any], Depends(store)]
    plural = f"{kind}s"

    @router.get(f"/api/{plural}", response_model=listing, name=f"list_{plural}")
    async def library(items: Store) -> Any:
        summaries = [item.summary() for item in items.newest_first()]
        return listing(**{plural: summaries, "removed": items.removed_mine()})

    @router.get(f"/api/{plural}/{{item_id}}", response_model=info, name=f"get_{kind}")
    async def opened(item_id: str, items: Store) -> Any:
        return items.opened(item_id).public()

    @router.delete(f"/api/{plural}/{{item_id}}", name=f"delete_{kind}")
    async def delete(item_id: str, items: Store) -> Deleted:
        await items.delete(item_id)
        return Deleted(deleted=item_id)
