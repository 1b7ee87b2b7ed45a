"""One live session: a page's peer connection, websocket, tracker and VLM tasks, and teardown.

The event loop only moves frames and messages: every tracker call goes through
`services.run_vision` (the vision thread), and frame conversion and RLE encoding run there too.
Outgoing messages go through an outbox so a slow page never stalls tracking: control messages
(tokens, verdicts, errors) queue in order, overlays and status keep only the newest.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel

from streamer import protocol as p
from streamer.ingest import LatestFrameSlot, pump_track
from streamer.settings import Settings
from workers.masks import rle_encode

log = logging.getLogger("fmu.live.session")

CHAT_HISTORY_TURNS = 8  # question/answer pairs kept per object; older ones fall off
STATUS_INTERVAL_S = 1.0
MAX_QUEUED_MESSAGES = 4096  # a page this far behind is not reading: the session closes
PAIRING_TIMEOUT_S = 30.0  # the websocket must attach this soon after the offer
FLUSH_TIMEOUT_S = 1.0  # at close, how long queued messages may take to go out


@dataclass
class TrackedObject:
    id: int
    source: str  # click | box | find
    label: str
    history: collections.deque[dict[str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=2 * CHAT_HISTORY_TURNS)
    )
    description: str | None = None
    describe_task: asyncio.Task[None] | None = None
    chat_task: asyncio.Task[None] | None = None


@dataclass
class Snapshot:
    """The newest processed frame and its masks (what clicks, describe and find work on)."""

    frame_index: int
    rgb: np.ndarray
    masks: dict[int, np.ndarray]


class SessionClosed(Exception):
    pass


def default_tracker_factory(model: Any) -> Any:
    from workers.vision import StreamTracker

    return StreamTracker(model)


def _vlm_error_types() -> tuple[type[BaseException], ...]:
    try:
        from workers.reasoning.errors import VLMError
    except ImportError:  # reasoning not installed: nothing can raise it
        return ()
    return (VLMError,)


class LiveSession:
    """Owns everything one connected page uses; `close()` frees all of it and is idempotent."""

    def __init__(
        self,
        services: Any,
        *,
        tracker_factory: Callable[[Any], Any] = default_tracker_factory,
        on_closed: Callable[[LiveSession], None] | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.services = services
        self.settings: Settings = services.settings
        self._tracker_factory = tracker_factory
        self._on_closed = on_closed
        self.tracker: Any = None
        self.pc: Any = None
        self.slot = LatestFrameSlot()
        self.objects: dict[int, TrackedObject] = {}
        self.snapshot: Snapshot | None = None
        self._vision_snapshot: Snapshot | None = None
        self.frames_processed = 0
        self.created_at = time.monotonic()
        self.last_activity = self.created_at
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self.websocket_attached = asyncio.Event()

        self._tasks: set[asyncio.Task[Any]] = set()
        self._control: collections.deque[str] = collections.deque()
        self._overlay: str | None = None
        self._status: str | None = None
        self._out_event = asyncio.Event()
        self._sender_idle = asyncio.Event()
        self._sender_idle.set()
        self._ws: Any = None
        self._closing = False
        self._track_started = False
        self._fps_window: collections.deque[float] = collections.deque(maxlen=256)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the tracker (on the vision thread) and the watchdog."""
        self.tracker = await self.services.run_vision(
            self._tracker_factory, self.services.vision_model
        )
        self._spawn(self._watchdog(), "watchdog")
        self._spawn(self._status_loop(), "status")

    def add_track(self, track: Any) -> None:
        """The page's camera track arrived: pump it into the slot and track the newest frame."""
        if track.kind != "video" or self._track_started:
            return
        self._track_started = True
        self._spawn(pump_track(track, self.slot), "ingest")
        self._spawn(self._track_loop(), "track")

    def attach_websocket(self, ws: Any) -> None:
        if self._ws is not None:
            raise RuntimeError("this session already has a websocket")
        self._ws = ws
        self.websocket_attached.set()
        self._spawn(self._sender(), "sender")
        self.touch()

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    async def close(self, reason: str = "closed", *, ws_code: int = 1000) -> None:
        """End the session: flush queued messages (briefly), cancel tasks, close pc and socket."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        log.info("session %s closing: %s", self.id[:8], reason)
        self.slot.close()
        current = asyncio.current_task()
        # Descriptions and answers stop first, so they add nothing to what is flushed below.
        object_tasks = [
            t
            for o in self.objects.values()
            for t in (o.describe_task, o.chat_task)
            if t is not None and t is not current and not t.done()
        ]
        for t in object_tasks:
            t.cancel()
        for t in object_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._ws is not None and (self._control or not self._sender_idle.is_set()):
            # The last notice (why the session ends) should reach the page before the close.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drain(), FLUSH_TIMEOUT_S)
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close(code=ws_code, reason=reason[:120])
        self.objects.clear()
        self.snapshot = None
        self._control.clear()
        self._overlay = self._status = None
        tracker, self.tracker = self.tracker, None
        if tracker is not None:
            # Drop the tracker's memory banks on the thread that owns them.
            with contextlib.suppress(Exception):
                await self.services.run_vision(_release_tracker, tracker)
        self.pc = None
        self._ws = None
        self.closed.set()
        if self._on_closed is not None:
            self._on_closed(self)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"live-{self.id[:8]}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._closing:
            log.error("session %s task %s failed", self.id[:8], task.get_name(), exc_info=exc)
            self.send(p.ErrorMessage(code="internal", message=f"internal error: {exc}", fatal=True))
            asyncio.get_running_loop().create_task(self.close(f"internal error: {exc}"))

    def _object_task(self, coro: Any, oid: int) -> asyncio.Task[None]:
        """A describe/chat task: cancelled with its object; a crash is reported, not fatal."""
        task = asyncio.create_task(coro, name=f"live-{self.id[:8]}-object-{oid}")

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled() or t.exception() is None or self._closing:
                return
            log.error("session %s object %d task failed", self.id[:8], oid, exc_info=t.exception())
            self.send(
                p.ErrorMessage(
                    code="internal",
                    object_id=oid,
                    message=f"internal error with object {oid}: {t.exception()}",
                )
            )

        task.add_done_callback(done)
        return task

    @property
    def task_count(self) -> int:
        n = len(self._tasks)
        for obj in self.objects.values():
            tasks = (obj.describe_task, obj.chat_task)
            n += sum(1 for t in tasks if t is not None and not t.done())
        return n

    # --- outgoing -------------------------------------------------------------------------

    async def _drain(self) -> None:
        while self._control or not self._sender_idle.is_set():
            await asyncio.sleep(0.01)

    def send(self, msg: BaseModel) -> None:
        """Queue a control message (kept in order, never dropped)."""
        if self.closed.is_set() or (self._closing and not isinstance(msg, p.ErrorMessage)):
            return
        if len(self._control) >= MAX_QUEUED_MESSAGES:
            asyncio.get_running_loop().create_task(self.close("the page stopped reading messages"))
            return
        self._control.append(msg.model_dump_json())
        self._out_event.set()

    def _send_latest(self, kind: str, text: str) -> None:
        if kind == "overlay":
            self._overlay = text
        else:
            self._status = text
        self._out_event.set()

    async def _sender(self) -> None:
        ws = self._ws
        while True:
            if self._control:
                text = self._control.popleft()
            elif self._overlay is not None and not self._closing:
                text, self._overlay = self._overlay, None
            elif self._status is not None and not self._closing:
                text, self._status = self._status, None
            else:
                self._sender_idle.set()
                self._out_event.clear()
                await self._out_event.wait()
                continue
            self._sender_idle.clear()
            try:
                await ws.send_text(text)
            except Exception:  # the socket is gone: the page left, not a bug
                self._control.clear()
                self._sender_idle.set()
                await self._close_from_task("the page went away")
                return

    # --- tracking -------------------------------------------------------------------------

    async def _track_loop(self) -> None:
        while True:
            frame = await self.slot.take()
            if frame is None:
                return  # the track ended; the peer connection's state change closes the session
            self.touch()
            snapshot, overlay = await self.services.run_vision(self._step, frame)
            self.snapshot = snapshot
            self.frames_processed += 1
            self._fps_window.append(time.monotonic())
            if self._ws is not None:
                self._send_latest("overlay", overlay)

    def _step(self, frame: Any) -> tuple[Snapshot, str]:
        """Vision thread: convert, step the tracker, encode every mask."""
        rgb = frame.to_ndarray(format="rgb24")
        result = self.tracker.step(rgb)
        masks: dict[int, np.ndarray] = {}
        objects = []
        for oid, state in result.objects.items():
            mask = np.asarray(state.mask, dtype=bool)
            masks[int(oid)] = mask
            objects.append(
                p.OverlayObject(
                    id=int(oid),
                    rle=p.RLEMask(**rle_encode(mask)),
                    box=tuple(float(v) for v in state.box) if state.box is not None else None,
                    score=float(state.score),
                    present=bool(state.present),
                )
            )
        pts = frame.pts
        time_s = float(pts * frame.time_base) if pts is not None and frame.time_base else None
        h, w = rgb.shape[:2]
        msg = p.OverlayMessage(
            frame_index=int(result.frame_index),
            pts=int(pts) if pts is not None else None,
            time_s=time_s,
            frame_size=p.FrameSize(width=w, height=h),
            objects=objects,
        )
        snap = Snapshot(int(result.frame_index), rgb, masks)
        self._vision_snapshot = snap  # read only on the vision thread (clicks land on this frame)
        return snap, msg.model_dump_json()

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if self._ws is None:
                continue
            self._send_latest("status", self.status().model_dump_json())

    def status(self) -> p.StatusMessage:
        now = time.monotonic()
        recent = [t for t in self._fps_window if now - t <= 2.0]
        span = (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
        fps = (len(recent) - 1) / span if span > 0 else 0.0
        step_ms = getattr(self.tracker, "last_step_ms", None) if self.tracker is not None else None
        reasoner = self.services.reasoner
        return p.StatusMessage(
            connection=str(getattr(self.pc, "connectionState", "new")),
            fps=round(fps, 2),
            frames_received=self.slot.stats.received,
            frames_processed=self.frames_processed,
            frames_dropped=self.slot.stats.dropped,
            step_ms=round(float(step_ms), 2) if step_ms is not None else None,
            objects=len(self.objects),
            descriptions=reasoner is not None,
            descriptions_off_reason=None if reasoner is not None else self.services.vlm_off_reason,
        )

    async def _watchdog(self) -> None:
        timeout = self.settings.session_idle_timeout_s
        tick = min(1.0, timeout / 4)
        pairing = min(PAIRING_TIMEOUT_S, timeout)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if self._ws is None and now - self.created_at > pairing:
                await self._close_from_task(f"no websocket attached within {pairing:g} s")
                return
            if now - self.last_activity > timeout:
                self.send(
                    p.ErrorMessage(
                        code="session_closed",
                        message=f"session closed after {timeout:g} s without frames or messages; "
                        "reload the page to start again",
                        fatal=True,
                    )
                )
                await self._close_from_task("idle timeout")
                return

    async def _close_from_task(self, reason: str) -> None:
        # close() cancels our own tasks; run it outside them so it is not cancelled halfway.
        asyncio.get_running_loop().create_task(self.close(reason))

    # --- client messages ------------------------------------------------------------------

    async def handle(self, msg: Any) -> None:
        """Act on one parsed client message; person-facing problems become error messages."""
        self.touch()
        try:
            if isinstance(msg, p.ClickMessage):
                label = 1 if msg.positive else 0
                await self._on_prompt(msg, points=[(msg.x, msg.y)], labels=[label])
            elif isinstance(msg, p.BoxMessage):
                await self._on_prompt(msg, box=tuple(msg.box))
            elif isinstance(msg, p.FindMessage):
                self._start_find(msg.phrase)
            elif isinstance(msg, p.DescribeMessage):
                self._require_object(msg.object_id, "describe")
                self.start_describe(msg.object_id, request="describe")
            elif isinstance(msg, p.ChatMessage):
                self._require_object(msg.object_id, "chat")
                self._start_chat(msg.object_id, msg.question)
            elif isinstance(msg, p.RemoveMessage):
                self._require_object(msg.object_id, "remove")
                await self._remove(msg.object_id)
                self._send_objects()
            elif isinstance(msg, p.ResetMessage):
                for oid in list(self.objects):
                    await self._remove(oid)
                self._send_objects()
            elif isinstance(msg, p.PingMessage):
                self.send(p.PongMessage())
        except _Refused as exc:
            self.send(
                p.ErrorMessage(
                    code=exc.code, message=str(exc), object_id=exc.object_id, request=msg.type
                )
            )

    def _require_object(self, oid: int, request: str) -> None:
        if oid not in self.objects:
            known = ", ".join(str(i) for i in sorted(self.objects)) or "none"
            raise _Refused(
                "unknown_object", f"no object {oid} in this session (tracked: {known})", oid
            )

    async def _on_prompt(
        self,
        msg: p.ClickMessage | p.BoxMessage,
        *,
        points: list[tuple[float, float]] | None = None,
        labels: list[int] | None = None,
        box: tuple[float, float, float, float] | None = None,
    ) -> None:
        snap = self.snapshot
        if snap is None:
            raise _Refused(
                "no_frame", "no video frame has arrived yet; wait for the picture, then click"
            )
        h, w = snap.rgb.shape[:2]
        if points is not None:
            x, y = points[0]
            if not (0 <= x < w and 0 <= y < h):
                raise _Refused(
                    "bad_prompt",
                    f"click at ({x:g}, {y:g}) is outside the {w}x{h} frame; click on the picture",
                )
        if msg.object_id is not None:
            self._require_object(msg.object_id, msg.type)
            oid = msg.object_id
            prompt = {
                k: v
                for k, v in (("points", points), ("labels", labels), ("box", box))
                if v is not None
            }
            await self._vision(self.tracker.refine, oid, **prompt)
            return
        if len(self.objects) >= self.settings.max_objects:
            raise _Refused(
                "too_many_objects",
                f"this session already tracks "
                f"{self.settings.max_objects} objects (the maximum); remove one first",
            )
        oid, view = await self._vision(self._add_object, points=points, labels=labels, box=box)
        self.objects[oid] = TrackedObject(oid, msg.type, f"object {oid}")
        self._send_objects(added=oid)
        if self.services.reasoner is not None:
            self.start_describe(oid, request=msg.type, view=view)

    def _add_object(self, **prompt: Any) -> tuple[int, tuple[Snapshot, np.ndarray] | None]:
        """Vision thread: add an object on the newest frame; its id and (frame, mask) there."""
        oid = int(self.tracker.add_object(**{k: v for k, v in prompt.items() if v is not None}))
        state = self.tracker.objects.get(oid)
        snap = self._vision_snapshot
        if state is None or snap is None:
            return oid, None
        return oid, (snap, np.asarray(state.mask, dtype=bool))

    async def _vision(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A tracker call on the vision thread; its ValueError is the person's mistake."""
        try:
            return await self.services.run_vision(fn, *args, **kwargs)
        except ValueError as exc:
            raise _Refused("bad_prompt", str(exc)) from None

    async def _remove(self, oid: int) -> None:
        obj = self.objects.pop(oid, None)
        if obj is None:
            return
        for t in (obj.describe_task, obj.chat_task):
            if t is not None and not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        with contextlib.suppress(ValueError):
            await self.services.run_vision(self.tracker.remove, oid)

    def _send_objects(self, added: int | None = None) -> None:
        self.send(
            p.ObjectsMessage(
                objects=[
                    p.ObjectInfo(id=o.id, label=o.label, source=o.source)  # type: ignore[arg-type]
                    for o in self.objects.values()
                ],
                added=added,
            )
        )

    # --- reasoning ------------------------------------------------------------------------

    def _vlm_or_refuse(self, oid: int | None) -> Any:
        reasoner = self.services.reasoner
        if reasoner is None:
            raise _Refused(
                "vlm_off",
                self.services.vlm_off_reason
                or "descriptions are off: no VLM configured (pass --vlm-url)",
                oid,
            )
        return reasoner

    def _object_view(self, oid: int) -> tuple[Snapshot, np.ndarray]:
        """The newest frame with this object's mask on it."""
        snap = self.snapshot
        mask = snap.masks.get(oid) if snap is not None else None
        if snap is None or mask is None or not mask.any():
            raise _Refused(
                "bad_prompt",
                f"object {oid} is not visible in the newest frame; try again when it is",
                oid,
            )
        return snap, mask

    def start_describe(
        self, oid: int, *, request: str, view: tuple[Snapshot, np.ndarray] | None = None
    ) -> None:
        obj = self.objects[oid]
        reasoner = self._vlm_or_refuse(oid)
        if obj.describe_task is not None and not obj.describe_task.done():
            raise _Refused(
                "busy", f"object {oid} is already being described; wait for its verdict", oid
            )
        try:
            if view is not None and view[1].any():
                snap, mask = view
            else:
                snap, mask = self._object_view(oid)
        except _Refused:
            if request != "describe":
                # A new object with no mask yet: describe it on the first frame that shows it.
                later = self._describe_when_visible(oid, reasoner)
                obj.describe_task = self._object_task(later, oid)
                return
            raise
        obj.describe_task = self._object_task(self._describe(oid, reasoner, snap, mask), oid)

    async def _describe_when_visible(self, oid: int, reasoner: Any) -> None:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and oid in self.objects:
            snap = self.snapshot
            mask = snap.masks.get(oid) if snap is not None else None
            if snap is not None and mask is not None and mask.any():
                await self._describe(oid, reasoner, snap, mask)
                return
            await asyncio.sleep(0.05)
        if oid in self.objects:
            self.send(
                p.ErrorMessage(
                    code="bad_prompt",
                    object_id=oid,
                    request="describe",
                    message=f"object {oid} has an empty mask; click on it again",
                )
            )

    async def _describe(self, oid: int, reasoner: Any, snap: Snapshot, mask: np.ndarray) -> None:
        from workers.reasoning import TokenEvent, VerdictEvent

        self.send(p.DescriptionStartMessage(object_id=oid, frame_index=snap.frame_index))
        try:
            stream = reasoner.describe_verified(snap.rgb, mask)
            async with contextlib.aclosing(stream):
                async for event in stream:
                    if isinstance(event, TokenEvent):
                        self.send(
                            p.DescriptionTokenMessage(
                                object_id=oid, text=event.text, attempt=int(event.attempt)
                            )
                        )
                    elif isinstance(event, VerdictEvent):
                        obj = self.objects.get(oid)
                        if obj is not None:
                            obj.description = event.description
                            obj.label = _short_label(event.description) or obj.label
                        self.send(
                            p.VerdictMessage(
                                object_id=oid,
                                description=event.description,
                                verdict=event.verdict,
                                iou=None if event.iou is None else float(event.iou),
                                attempts=int(event.attempts),
                                box=None
                                if event.box is None
                                else tuple(float(v) for v in event.box),
                            )
                        )
                        if obj is not None:
                            self._send_objects()
        except _vlm_error_types() as exc:
            self.send(
                p.ErrorMessage(
                    code="vlm_error",
                    object_id=oid,
                    request="describe",
                    message=f"could not describe object {oid}: {exc}. Tracking goes on.",
                )
            )

    def _start_chat(self, oid: int, question: str) -> None:
        obj = self.objects[oid]
        reasoner = self._vlm_or_refuse(oid)
        if obj.chat_task is not None and not obj.chat_task.done():
            raise _Refused(
                "busy", f"still answering the last question about object {oid}; wait for it", oid
            )
        snap, mask = self._object_view(oid)
        obj.chat_task = self._object_task(self._chat(obj, reasoner, snap, mask, question), oid)

    async def _chat(
        self, obj: TrackedObject, reasoner: Any, snap: Snapshot, mask: np.ndarray, question: str
    ) -> None:
        # The verified description opens the conversation, so answers build on what was seen.
        history = list(obj.history)
        if obj.description:
            history.insert(0, {"role": "assistant", "content": obj.description})
        pieces: list[str] = []
        try:
            stream = reasoner.chat(snap.rgb, mask, history, question)
            async with contextlib.aclosing(stream):
                async for text in stream:
                    pieces.append(text)
                    self.send(p.ChatTokenMessage(object_id=obj.id, text=text))
        except _vlm_error_types() as exc:
            self.send(
                p.ErrorMessage(
                    code="vlm_error",
                    object_id=obj.id,
                    request="chat",
                    message=f"could not answer about object {obj.id}: {exc}",
                )
            )
            return
        answer = "".join(pieces)
        obj.history.append({"role": "user", "content": question})
        obj.history.append({"role": "assistant", "content": answer})
        self.send(p.ChatDoneMessage(object_id=obj.id, answer=answer))

    def _start_find(self, phrase: str) -> None:
        reasoner = self._vlm_or_refuse(None)
        snap = self.snapshot
        if snap is None:
            raise _Refused("no_frame", "no video frame has arrived yet; wait for the picture")
        self._spawn(self._find(reasoner, snap, phrase), "find")

    async def _find(self, reasoner: Any, snap: Snapshot, phrase: str) -> None:
        try:
            boxes = await reasoner.ground(snap.rgb, phrase)
        except _vlm_error_types() as exc:
            self.send(
                p.ErrorMessage(
                    code="vlm_error", request="find", message=f"could not find {phrase!r}: {exc}"
                )
            )
            return
        found: list[p.FoundObject] = []
        note = None
        for g in boxes:
            if len(self.objects) >= self.settings.max_objects:
                note = f"stopped at {self.settings.max_objects} objects (the maximum)"
                break
            box = tuple(float(v) for v in g.box)
            try:
                oid = int(await self.services.run_vision(self.tracker.add_object, box=box))
            except ValueError as exc:
                note = str(exc)
                continue
            label = getattr(g, "label", None) or phrase
            self.objects[oid] = TrackedObject(oid, "find", label)
            found.append(
                p.FoundObject(object_id=oid, box=box, label=label, score=getattr(g, "score", None))
            )
        if not boxes:
            note = f"nothing matching {phrase!r} in the frame"
        self._send_objects(added=found[0].object_id if found else None)
        self.send(p.FindResultMessage(phrase=phrase, objects=found, message=note))


class _Refused(Exception):
    """A request the session turns down with an error message (and stays usable)."""

    def __init__(self, code: str, message: str, object_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.object_id = object_id


def _release_tracker(tracker: Any) -> None:
    for oid in list(getattr(tracker, "objects", ()) or ()):
        with contextlib.suppress(Exception):
            tracker.remove(oid)


def _short_label(description: str, words: int = 6) -> str:
    first = description.strip().split(".")[0].split(",")[0]
    parts = first.split()
    return " ".join(parts[:words]) + ("…" if len(parts) > words else "")
