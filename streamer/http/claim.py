"""An object's describe / chat / refine slot, taken before a Clip or Image request reads and encodes its pixels.

The shared event streams (objects/vlm.py) take the object's slot (TrackedObject.running) at
their first step, which is when the response body starts: after the frames are read and
encoded. A request refused then would have done all that work, and would get HTTP 200 with an
in-stream "busy" line. A Claim takes the same slot when the request arrives (so the refusal is a
409 at once) and hands it to the stream; it is freed however the request ends, also when the body
never starts (an error before streaming, a client gone before the first line). Past the table's
VLM share the request first waits its turn (Claim.take), before reading anything; the turn is
held to the answer's end.

The stream is run by a task of the object's (TrackedObject.streams), as Live runs its answers: a
remove cancels it at once, even while the VLM has not answered yet, and its VLM share is free for
the next object; a client gone stops it too. An auto-refine's task is also the object's
`refine_task`, which a stop_refine request cancels: its answer then ends with refine_done,
`stopped`, as Live's does. Before that task exists (the request waits its VLM turn, or reads and
encodes its frame) a stop_refine stops it all the same (_BeforeStart): the wait ends, the VLM is
not asked, and the request's whole answer is that refine_done.

A find-all holds its table's find-all slot (ObjectTable.finding_all) the same way, as a Held:
from its arrival to the end of its response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Self

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from streamer.http.errors import Refusal, require_reasoner
from streamer.http.ndjson import ndjson_response
from streamer.objects.events import RefineDoneMessage
from streamer.objects.refusal import ObjectRefused
from streamer.objects.table import ObjectTable
from streamer.objects.tracked import TrackedObject
from streamer.objects.vlm import refine_stopped


class Held:
    """A slot held from a request's arrival until its streamed answer ends: also when an error
    comes before the response is made, or its body never starts (a client gone at once)."""

    def __init__(self, slot: contextlib.AbstractContextManager[Any]) -> None:
        self._slot = contextlib.ExitStack()
        self._slot.enter_context(slot)

    def release(self) -> None:
        self._slot.close()  # a second close does nothing

    @contextlib.contextmanager
    def held(self) -> Iterator[Self]:
        """Around the request's work: an error before the response is made frees the slot."""
        try:
            yield self
        except BaseException:
            self.release()
            raise

    def stream(
        self, events: AsyncIterator[BaseModel], request: str, phrase: str | None = None
    ) -> StreamingResponse:
        """The events as NDJSON (http/ndjson.py), the slot freed when the response ends."""
        plain = ndjson_response(self._freed_at_end(events), request, phrase)
        return _ClaimedStream(self, plain.body_iterator, media_type=plain.media_type)

    async def _freed_at_end(self, events: AsyncIterator[BaseModel]) -> AsyncIterator[BaseModel]:
        # Freed before the response's end is sent: a client that has read the whole answer may
        # ask again at once.
        try:
            async for event in events:
                yield event
        finally:
            self.release()


class RefineStopped(Exception):
    """An auto-refine stopped while its request waited its VLM turn: that request's whole answer
    is the refine_done `stopped` (`stopped_answer`, the app's handler for it)."""

    def __init__(self, done: RefineDoneMessage) -> None:
        super().__init__(done.message)
        self.done = done


async def stopped_answer(request: Request, exc: RefineStopped) -> StreamingResponse:
    return ndjson_response(_one(exc.done), "auto_refine")


async def _one(event: BaseModel) -> AsyncIterator[BaseModel]:
    yield event


class _BeforeStart:
    """The stop of an auto-refine whose request has not started its stream (its task) yet, as
    objects/vlm.py's stop_refine finds it (TrackedObject.refine_before_start). While the request
    waits its VLM turn, the wait ends (RefineStopped); while it reads and encodes its frame, that
    ends and the VLM is not asked. Either way the request answers refine_done `stopped`, no click
    applied, and the stop returns once it has: the object is free for the next refine, as after
    Live's stop."""

    def __init__(self, obj: TrackedObject) -> None:
        self.obj, self.asked, self.ended = obj, asyncio.Event(), asyncio.Event()
        obj.refine_before_start = self.stop

    async def stop(self) -> None:
        self.obj.refine_steps = 0  # this run, the last one now, applied none
        self.asked.set()
        await self.ended.wait()

    def end(self) -> None:
        """Its stream has started (a stop now cancels its task), or its request has ended."""
        if self.obj.refine_before_start == self.stop:
            self.obj.refine_before_start = None
        self.ended.set()


class Claim(Held):
    """The object's `kind` slot, held from now (refused as busy, 409, if taken), and its turn in
    the table's VLM share (TrackedObject.take_share), held until the answer ends."""

    def __init__(
        self,
        obj: TrackedObject,
        kind: str,
        share: contextlib.ExitStack | None = None,
        table: ObjectTable | None = None,
    ) -> None:
        self._share = share if share is not None else contextlib.ExitStack()
        self._table = table
        try:
            obj.check_idle(kind)
            super().__init__(obj.running(kind))
        except BaseException:
            self._share.close()
            raise
        self._obj, self._kind = obj, kind
        self._before: _BeforeStart | None = None  # an auto-refine's, until its stream starts
        # Raises its item's refusal once the clip or image is gone (answering sets it): a stream
        # its deletion stopped ends saying so (unknown_clip, unknown_image), not in silence.
        self.item_gone: Callable[[], Any] | None = None

    @classmethod
    async def take(cls, table: ObjectTable, oid: int, kind: str, request: Request) -> Claim:
        """The claim of a request's arrival: an object already answering is refused at once;
        past the table's VLM share it waits its turn, in order, before any frame is read, and
        gives its place up if `request`'s client leaves meanwhile."""
        obj = table.get(oid)
        obj.check_idle(kind)
        before = _BeforeStart(obj) if kind == "refine" else None
        share = contextlib.ExitStack()
        try:
            await _while_connected(obj.take_share(kind, share), request, before)
            claim = cls(table.get(oid), kind, share, table)  # removed meanwhile: unknown_object
        except BaseException:
            share.close()
            if before is not None:
                before.end()
            raise
        claim._before = before
        return claim

    @classmethod
    @contextlib.asynccontextmanager
    async def answering(
        cls, store: Any, item_id: str, oid: int, kind: str, request: Request
    ) -> AsyncIterator[tuple[Any, Any, Claim]]:
        """What every Clip and Image describe, chat and auto-refine starts with, in this order:
        its clip or image (404), the VLM (503 when descriptions are off), and the object's claim
        (Claim.take: 409 when busy, else its turn in the share). (the item, the reasoner, it).
        An error before the response is made frees the claim."""
        item = store.get(item_id)
        reasoner = require_reasoner(store.services)

        def item_gone() -> None:
            store.peek(item_id)

        try:
            claim = await cls.take(item.objects, oid, kind, request)
        except (ObjectRefused, Refusal):
            item_gone()  # deleted while it waited its turn: the item's refusal, not the object's
            raise
        with claim.held():
            claim.item_gone = item_gone
            yield item, reasoner, claim

    def release(self) -> None:
        super().release()
        self._share.close()
        if self._before is not None:
            self._before.end()

    def respond(self, events: AsyncIterator[BaseModel], request: str) -> StreamingResponse:
        """The events as NDJSON; the stream takes the slot over at its start."""
        return self.stream(self._handed_over(events), request)

    async def _handed_over(self, events: AsyncIterator[BaseModel]) -> AsyncIterator[BaseModel]:
        if self._before is not None and self._before.asked.is_set():
            yield refine_stopped(self._obj)  # stopped while it read its frame: no VLM request
            return
        queue: asyncio.Queue[Any] = asyncio.Queue()  # an answer's events: one answer's worth
        end = object()

        async def run() -> None:
            # No await between freeing the object's slot and the stream's first step taking it
            # again: no other request can take it in between. The share's turn stays held.
            Held.release(self)
            try:
                async for event in events:
                    queue.put_nowait(event)
            except Exception as exc:  # an in-stream refusal (ndjson's last line), or a bug
                queue.put_nowait(exc)

        def ended(task: asyncio.Task[None]) -> None:
            # However it ended, also cancelled before its first step (a remove in that very turn
            # of the loop: no `finally` of run() ever runs then): the slot is free, the answer ends.
            self._obj.streams.discard(task)
            self.release()
            queue.put_nowait(end)

        task = asyncio.create_task(run())
        self._obj.streams.add(task)
        if self._before is not None:
            self._obj.refine_task = task  # what a stop_refine request cancels (objects/vlm.py)
            self._before.end()
        task.add_done_callback(ended)
        try:
            while (item := await queue.get()) is not end:
                if isinstance(item, Exception):
                    raise item
                yield item
            if task.cancelled() and self._kind == "refine":  # stopped or removed: as in Live
                kept = self._table is not None and self._table.holds(self._obj)
                yield refine_stopped(self._obj, removed=not kept)
            elif task.cancelled() and self.item_gone is not None:
                # Its clip or image deleted: the last line says so (item_gone raises). An object
                # removed alone ends in silence: the page that removed it knows why.
                self.item_gone()
        finally:
            task.cancel()  # the client is gone: the VLM request stops with it


async def _while_connected(
    waiting: Coroutine[Any, Any, None], request: Request, before: _BeforeStart | None = None
) -> None:
    """Await `waiting`, cancelled if the request's client leaves meanwhile: Starlette runs a
    handler to its end whatever its client does, so one gone would keep its place in the share
    (and the object's describe or chat counted as under way: a reloaded page's was refused).
    An auto-refine's stop (`before`) ends it too."""
    wait = asyncio.ensure_future(waiting)

    async def gone() -> None:
        # The body is read (FastAPI parsed it before the handler ran): what comes next is the
        # disconnect, whenever the client leaves.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = {asyncio.ensure_future(gone())}
    if before is not None:
        watch.add(asyncio.ensure_future(before.asked.wait()))
    try:
        await asyncio.wait({wait, *watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in watch:
            w.cancel()
        if not wait.done():
            wait.cancel()
            await asyncio.gather(wait, return_exceptions=True)
    if before is not None and before.asked.is_set():  # its turn, if it came, is given back
        raise RefineStopped(refine_stopped(before.obj))
    if not wait.done() or wait.cancelled():
        raise Refusal(499, "bad_request", "the client left while its request waited its turn")
    wait.result()


class _ClaimedStream(StreamingResponse):
    """A streamed answer that frees its claim when it ends, even if its body never started."""

    def __init__(self, claim: Held, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._claim = claim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._claim.release()
