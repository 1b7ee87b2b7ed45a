"""One live session: the wiring of a page's peer connection, websocket, tracker and objects.

The pieces are tested on their own: the outbox (outbox.py), the state machine, watchdog and
snapshot board (lifecycle.py), the object table and describe/chat/find (streamer/objects/).
The event loop only moves frames and messages: every tracker call goes through
`services.run_vision_live` (the vision thread, scheduled: streamer/scheduler.py), and frame conversion and RLE encoding run there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from streamer import metrics
from streamer.live import answers
from streamer.live import protocol as p
from streamer.live import resume as reconnect
from streamer.live.ingest import FrameRate, IngestStats, LatestFrameSlot, pump_track
from streamer.live.lifecycle import SessionState, Snapshot, SnapshotBoard, Watchdog
from streamer.live.outbox import Outbox
from streamer.live.resume import Parked
from streamer.live.tracking import LiveTracker
from streamer.objects.events import ErrorMessage
from streamer.objects.table import ObjectRefused, ObjectTable, cancel_tasks
from streamer.settings import Settings

log = logging.getLogger("fmu.live.session")

STATUS_INTERVAL_S = 1.0

FLUSH_TIMEOUT_S = 1.0  # at close, how long queued messages may take to go out


class LiveSession:
    """Owns everything one connected page uses; `close()` frees all of it and is idempotent."""

    def __init__(
        self, services: Any, *, on_closed: Callable[[LiveSession], None] | None = None
    ) -> None:
        self.id = uuid.uuid4().hex
        self.services = services
        self.settings: Settings = services.settings
        self._on_closed = on_closed
        self.tracker: LiveTracker | None = None
        self.pc: Any = None
        self.slot = LatestFrameSlot()
        self.objects = ObjectTable.from_settings(self.settings, "session")
        self.snapshots = SnapshotBoard()
        self.frames_processed = 0
        self.state = SessionState()
        self.closed = self.state.closed
        self.websocket_attached = asyncio.Event()
        self.outbox = Outbox()
        self.watchdog = Watchdog(
            self.settings.session_idle_timeout_s,
            first_frame_timeout_s=self.settings.session_first_frame_timeout_s,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self.find_all_task: asyncio.Task[Any] | None = None  # the running find-all (stop_find)
        self.find_all_phrase = ""
        self._ws: Any = None
        self._track_started = False
        self.rate = FrameRate()  # frames processed
        self.parked: Parked | None = None  # set at close when the connection dropped
        self.resuming: Parked | None = None  # objects taken back but not yet restored
        self.frame_ids = False  # the page names its frames (synced overlay mode; frame_ids.py)

    @property
    def snapshot(self) -> Snapshot | None:
        return self.snapshots.latest

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the tracker (on the vision thread) and the watchdog."""
        self.state.start()
        self.tracker = await self.services.run_vision_live(
            self.id, LiveTracker, self.services.vision_model, frame_ids=self.frame_ids
        )
        self.spawn(self._watch(), "watchdog")
        self.spawn(self._status_loop(), "status")

    def add_track(self, track: Any) -> None:
        """The page's camera track arrived: pump it into the slot and track the newest frame."""
        if track.kind != "video" or self._track_started:
            return
        self._track_started = True
        self.spawn(pump_track(track, self.slot), "ingest")
        self.spawn(self._track_loop(), "track")

    def attach_websocket(self, ws: Any) -> None:
        if self._ws is not None:
            raise RuntimeError("this session already has a websocket")
        self._ws = ws
        self.websocket_attached.set()
        self.spawn(self._sender(), "sender")
        self.touch()

    def touch(self) -> None:
        self.watchdog.touch()

    async def close(self, reason: str = "closed", *, ws_code: int = 1000) -> None:
        """End the session: flush queued messages (briefly), cancel tasks, close pc and socket."""
        if not self.state.begin_close(reason):
            await self.closed.wait()
            return
        log.info("session %s closing: %s", self.id[:8], reason)
        self.slot.close()
        # Descriptions and answers stop first, so they add nothing to what is flushed below.
        await cancel_tasks([t for o in self.objects for t in o.tasks()])
        self.outbox.control_only = True
        if self._ws is not None:
            # The last notice (why the session ends) should reach the page before the close.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.outbox.drained(), FLUSH_TIMEOUT_S)
        await cancel_tasks(list(self._tasks))
        self._tasks.clear()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close(code=ws_code, reason=reason[:120])
        if reconnect.keeps_objects(reason):
            self.parked = reconnect.park(self)
        self.objects.objects.clear()
        self.snapshots.clear()
        self.outbox.close()
        tracker, self.tracker = self.tracker, None
        if tracker is not None:
            # Drop the tracker's memory banks on the thread that owns them.
            with contextlib.suppress(Exception):
                await self.services.run_vision_live(self.id, tracker.release)
        self.pc = None
        self._ws = None
        self.state.finish_close()
        if self._on_closed is not None:
            self._on_closed(self)

    def resume(self, parked: Parked) -> None:
        """Take back a dropped session's objects (resume.py), re-added on its first frame from
        their last boxes, ids and all; until then they are this session's to park again."""
        self.resuming = parked
        self.objects.reserve_ids(parked.next_id)
        self.spawn(reconnect.restore(self, parked), "restore")

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"live-{self.id[:8]}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.state.accepting:
            log.error("session %s task %s failed", self.id[:8], task.get_name(), exc_info=exc)
            self.send(
                ErrorMessage(
                    code="internal", message=f"{reconnect.INTERNAL_ERROR}: {exc}", fatal=True
                )
            )
            self._close_soon(f"{reconnect.INTERNAL_ERROR}: {exc}")

    def object_task(
        self,
        events: AsyncIterator[BaseModel] | Callable[[], Awaitable[AsyncIterator[BaseModel] | None]],
        oid: int,
        request: str,
    ) -> asyncio.Task[None]:
        """A describe/chat/auto-refine task relaying its events: cancelled with its object; a
        crash is reported, not fatal. Past the session's VLM share it waits its turn first.
        `events` may be a coroutine function that makes them once the request can start (None:
        nothing to do): what it waits for is waited before the turn is taken."""
        self._check_accepting()
        obj = self.objects.get(oid)
        kind = "refine" if request == "auto_refine" else request

        async def relay() -> None:
            with contextlib.ExitStack() as share:
                try:
                    ready = events if not callable(events) else await events()
                    if ready is None:
                        return
                    await obj.take_share(kind, share)
                    async for event in ready:
                        self.send(event)
                except ObjectRefused as exc:
                    self.send(exc.event(request=request))

        task = asyncio.create_task(relay(), name=f"live-{self.id[:8]}-object-{oid}")

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled() or t.exception() is None or not self.state.accepting:
                return
            log.error("session %s object %d task failed", self.id[:8], oid, exc_info=t.exception())
            self.send(
                ErrorMessage(
                    code="internal",
                    object_id=oid,
                    message=f"internal error with object {oid}: {t.exception()}",
                )
            )

        task.add_done_callback(done)
        return task

    @property
    def task_count(self) -> int:
        return len(self._tasks) + sum(len(o.tasks()) for o in self.objects)

    def _check_accepting(self) -> None:
        """Closing: no describe, chat or auto-refine starts (close() has cancelled what ran; one
        started now, by a click handled meanwhile that awaited SAM2, would outlive it and ask the
        VLM for a session that ended). A message that comes once closing began is not handled at
        all (handle); the session's own tasks (a Find's undo as it is cancelled) still start."""
        if not self.state.accepting:
            raise ObjectRefused("session_closed", "this session is closing: nothing new starts")

    def _close_soon(self, reason: str) -> None:
        # close() cancels our own tasks; run it outside them so it is not cancelled halfway.
        asyncio.get_running_loop().create_task(self.close(reason))

    # --- outgoing -------------------------------------------------------------------------

    def send(self, msg: BaseModel) -> None:
        """Queue a control message (kept in order, never dropped). While closing only errors
        (why it closes) still go out; after close nothing does."""
        if self.outbox.closed:
            return
        if not self.state.accepting and not isinstance(msg, ErrorMessage):
            return
        if not self.outbox.put(msg.model_dump_json()):
            self._close_soon("the page stopped reading messages")

    async def _sender(self) -> None:
        ws = self._ws
        while True:
            text = await self.outbox.get()
            try:
                await ws.send_text(text)
            except Exception:  # the socket is gone: the page left, not a bug
                self.outbox.sent()
                self._close_soon("the page went away")
                return
            self.outbox.sent()

    # --- tracking -------------------------------------------------------------------------

    async def _track_loop(self) -> None:
        seen = IngestStats()  # of the slot's counts, what /metrics has been told
        while True:
            frame = await self.slot.take()
            if frame is None:
                return  # the track ended; the peer connection's state change closes the session
            arrived = self.slot.stats.last_frame_at  # the frame taken is the newest one
            stats = self.slot.stats
            metrics.FRAMES_RECEIVED.inc(stats.received - seen.received)
            metrics.FRAMES_DROPPED.inc(stats.dropped - seen.dropped)
            seen.received, seen.dropped = stats.received, stats.dropped
            self.watchdog.frame_arrived()
            snapshot, overlay = await self.services.run_vision_live(
                self.id, self.tracker.step, frame
            )
            self.snapshots.publish(snapshot)
            self.frames_processed += 1
            metrics.FRAMES_PROCESSED.inc()
            step_ms = self.tracker.last_step_ms
            if step_ms is not None:
                metrics.TRACKER_STEP.observe(step_ms / 1000.0)
            if arrived is not None:
                metrics.OVERLAY_LAG.observe(time.monotonic() - arrived)
            self.rate.tick()
            if self._ws is not None and not self.outbox.closed:
                self.outbox.put_latest("overlay", overlay)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if self._ws is not None and not self.outbox.closed:
                self.outbox.put_latest("status", self.status().model_dump_json())

    def status(self) -> p.StatusMessage:
        step_ms = self.tracker.last_step_ms if self.tracker is not None else None
        return p.StatusMessage(
            connection=str(getattr(self.pc, "connectionState", "new")),
            fps=round(self.rate.per_second(), 2),
            frames_received=self.slot.stats.received,
            frames_processed=self.frames_processed,
            frames_dropped=self.slot.stats.dropped,
            step_ms=round(float(step_ms), 2) if step_ms is not None else None,
            objects=len(self.objects),
            descriptions=self.services.reasoner is not None,
            descriptions_off_reason=self.services.descriptions_off,
        )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watchdog.tick_s)
            verdict = self.watchdog.check(self._ws is not None)
            if verdict is None:
                continue
            reason, notice = verdict
            if notice:
                self.send(ErrorMessage(code="session_closed", message=notice, fatal=True))
            self._close_soon(reason)
            return

    # --- client messages ------------------------------------------------------------------

    async def handle(self, msg: Any) -> None:
        """Act on one parsed client message; person-facing problems become error messages.
        Once the session is closing, none is acted on (the page is told why it ends)."""
        if not self.state.accepting:
            return
        self.touch()
        try:
            if isinstance(msg, p.ClickMessage):
                await answers.prompt(self, msg, points=[(msg.x, msg.y)], labels=[int(msg.positive)])
            elif isinstance(msg, p.BoxMessage):
                await answers.prompt(self, msg, box=tuple(msg.box))
            elif isinstance(msg, p.FindMessage):
                answers.start_find(self, msg.phrase, msg.all_candidates)
            elif isinstance(msg, p.FindAllMessage):
                answers.start_find_all(self, msg.phrase)
            elif isinstance(msg, p.StopFindMessage):
                await answers.stop_find_all(self)
            elif isinstance(msg, p.DescribeMessage):
                answers.start_describe(self, msg.object_id)
            elif isinstance(msg, p.ChatMessage):
                answers.start_chat(self, msg.object_id, msg.question)
            elif isinstance(msg, p.AutoRefineMessage):
                answers.start_auto_refine(self, msg.object_id, msg.max_steps)
            elif isinstance(msg, p.StopRefineMessage):
                await answers.stop_auto_refine(self, msg.object_id)
            elif isinstance(msg, p.RemoveMessage):
                if not reconnect.unpark(self, [msg.object_id]):  # else: one not brought back yet
                    self.objects.get(msg.object_id)
                await answers.remove_objects(self, [msg.object_id])
            elif isinstance(msg, p.ResetMessage):
                reconnect.unpark(self, None)
                await answers.remove_objects(self, self.objects.reset())
            elif isinstance(msg, p.FrameIdsMessage):
                # The page swapped its track (synced overlay on or off); the tracker goes on.
                self.frame_ids = msg.on
                if self.tracker is not None:
                    self.tracker.frame_ids = msg.on
            elif isinstance(msg, p.PingMessage):
                self.send(p.PongMessage())
        except ObjectRefused as exc:
            event = exc.event(request=msg.type, phrase=getattr(msg, "phrase", None))
            if event.object_id is None:  # the object the message named (a refine click, a describe)
                event = event.model_copy(update={"object_id": getattr(msg, "object_id", None)})
            self.send(event)

    async def vision(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A tracker call on the vision thread; its ValueError is the person's mistake."""
        try:
            return await self.services.run_vision_live(self.id, fn, *args, **kwargs)
        except ValueError as exc:
            raise ObjectRefused("bad_prompt", str(exc)) from None
