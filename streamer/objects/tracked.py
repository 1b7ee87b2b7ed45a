"""One object of a table (table.py), in every mode: its label, description and verdict, its chat
(the last CHAT_HISTORY_TURNS turns), the describe, chat and auto-refine under way for it and their
share of the VLM, and the row the database keeps of it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from streamer.objects.events import (
    ChatTurn,
    FindCheck,
    KeptObjectInfo,
    ObjectInfo,
    ObjectSource,
)
from streamer.objects.labels import label_from_description
from streamer.objects.refusal import ObjectRefused
from streamer.objects.share import VLM_SHARED_KINDS, VLMShare

CHAT_HISTORY_TURNS = 8  # question/answer pairs kept per object; older ones fall off


@dataclass
class TrackedObject:
    id: int
    source: ObjectSource
    label: str
    description: str | None = None
    verdict: str | None = None
    iou: float | None = None  # of the verdict
    attempts: int | None = None
    note: str | None = None  # why the verdict is unverified before all its attempts ran
    find_check: FindCheck | None = None  # checked Find's verdict on it, if Find started it
    history: collections.deque[dict[str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=2 * CHAT_HISTORY_TURNS)
    )
    # Live runs describe/chat as tasks; Clip and Image stream them in the response, each
    # stream run by a task of `streams` (http/claim.py), so a remove stops them all the same;
    # `refine_before_start` stops an auto-refine request of theirs whose stream has not started.
    describe_task: asyncio.Task[Any] | None = None
    chat_task: asyncio.Task[Any] | None = None
    refine_task: asyncio.Task[Any] | None = None
    streams: set[asyncio.Task[Any]] = field(default_factory=set, repr=False, compare=False)
    refine_steps: int = 0  # clicks the running (or last) auto-refine applied
    refine_stop: Callable[[], bool] | None = field(default=None, repr=False)  # objects/vlm.py
    refine_before_start: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    share: VLMShare | None = field(default=None, repr=False, compare=False)  # its table's
    _running: set[str] = field(default_factory=set)
    _share_held: set[str] = field(default_factory=set)  # kinds whose share a starter holds
    _waiting_kinds: set[str] = field(default_factory=set)  # kinds waiting for their share

    def info(self) -> ObjectInfo:
        return ObjectInfo(
            id=self.id,
            label=self.label,
            source=self.source,
            description=self.description,
            verdict=self.verdict,  # type: ignore[arg-type]
            find_check=self.find_check,
        )

    def kept(self) -> KeptObjectInfo:
        """What a kept clip or image shows of the object: its info, its verdict's IoU and
        attempts, and the chat so far."""
        return KeptObjectInfo(
            **self.info().model_dump(),
            iou=self.iou,
            attempts=self.attempts,
            note=self.note,
            chat=[ChatTurn(**t) for t in self.history],  # type: ignore[arg-type]
        )

    def described(
        self,
        description: str,
        verdict: str,
        iou: float | None = None,
        attempts: int | None = None,
        note: str | None = None,
    ) -> None:
        self.description, self.verdict = description, verdict
        self.iou, self.attempts, self.note = iou, attempts, note
        self.label = label_from_description(description) or self.label

    def chat_history(self) -> list[dict[str, str]]:
        """The conversation so far, opened by the checked description (answers build on it)."""
        history = list(self.history)
        if self.description:
            history.insert(0, {"role": "assistant", "content": self.description})
        return history

    def remember(self, question: str, answer: str) -> None:
        self.history.append({"role": "user", "content": question})
        self.history.append({"role": "assistant", "content": answer})

    def check_idle(self, kind: str) -> None:
        """Refuse as busy while a `kind` (describe, chat) of this object is under way, or about to
        be (Live: its task is started but has not begun; any mode: it waits for its share)."""
        task = {"describe": self.describe_task, "chat": self.chat_task}.get(kind, self.refine_task)
        if self.busy(kind) or (task is not None and not task.done()):
            self._busy(kind)

    def _busy(self, kind: str) -> None:
        what = {
            "describe": "already being described; wait for its verdict",
            "chat": "still answering the last question; wait for it",
        }.get(kind, "already being refined by the VLM; stop that first")
        raise ObjectRefused("busy", f"object {self.id} is {what}", self.id)

    @contextlib.contextmanager
    def running(self, kind: str) -> Iterator[None]:
        """One describe, one chat and one auto-refine at a time per object; a second one is
        refused as busy. Each also holds one of its table's VLM share, refused as busy past it:
        whoever holds this slot (objects/vlm.py's streams, http/claim.py's Claim on a request's
        arrival) holds both."""
        if kind in self._running:
            self._busy(kind)
        shared = kind in VLM_SHARED_KINDS and kind not in self._share_held
        share = self.share if shared else None
        with contextlib.nullcontext() if share is None else share.slot(self.id):
            self._running.add(kind)
            try:
                yield
            finally:
                self._running.discard(kind)

    async def take_share(self, kind: str, stack: contextlib.ExitStack) -> None:
        """Wait for `kind`'s turn in the table's VLM share and hold it on `stack`, which whoever
        starts the request closes at its end (a Claim, Live's task); the stream's running() then
        takes only this object's own slot. Past the share a describe, chat or auto-refine waits,
        in the order they came, instead of being refused: a person who clicks three objects at
        once gets three descriptions."""
        share = self.share if kind in VLM_SHARED_KINDS else None
        if share is None:
            return
        self._waiting_kinds.add(kind)  # a second one of this object's meanwhile is refused
        try:
            await share.turn(self.id)
        finally:
            self._waiting_kinds.discard(kind)
        stack.enter_context(share.slot(self.id))  # no await since the turn came: it is taken
        self._share_held.add(kind)
        stack.callback(self._share_held.discard, kind)

    def tasks(self) -> list[asyncio.Task[Any]]:
        tasks = (self.describe_task, self.chat_task, self.refine_task, *self.streams)
        return [t for t in tasks if t is not None and not t.done()]

    def busy(self, kind: str | None = None) -> bool:
        """A describe, chat or auto-refine of this object (or its `kind` slot) is under way, or
        waits its turn in the VLM share (retention keeps it)."""
        if kind is not None:
            return kind in self._running or kind in self._waiting_kinds
        return bool(self._running or self._waiting_kinds or self.tasks())

    def row(self, prompts_json: str) -> dict[str, Any]:
        """What the database keeps of the object, in every mode; the mode gives its prompts."""
        return {
            "oid": self.id,
            "source": self.source,
            "label": self.label,
            "description": self.description,
            "verdict": self.verdict,
            "iou": self.iou,
            "attempts": self.attempts,
            "note": self.note,
            "history": json.dumps(list(self.history)),
            "prompts": prompts_json,
            "find_check": self.find_check,
        }
