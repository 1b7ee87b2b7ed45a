"""What the server holds of one clip: its file's facts, its objects (the shared ObjectTable) and,
per object, a Track (prompts per frame, results per frame, the tracking job).

The store (store.py) keeps Clips and runs their jobs; the database rows are in streamer/storage/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel

from streamer.clip import protocol as cp
from streamer.clip.encodings import SharedEncodings
from streamer.clip.job import FramePrompt, TrackJob
from streamer.clip.video_io import VideoInfo
from streamer.objects.results import MaskResult
from streamer.objects.table import ObjectTable
from streamer.objects.tracked import TrackedObject


class Feed(asyncio.Queue[BaseModel]):
    """What one page's clip websocket has yet to send, in order. A job's progress is latest-only:
    a newer one takes its job's waiting one's place, so a slow page is never behind on progress,
    and the bound (maxsize) is left to the messages that must not be lost (a job's end, a removal,
    an object list, which Clip.publish drops oldest first only for a page that stopped reading)."""

    def _put(self, item: BaseModel) -> None:
        if (key := _latest_only(item)) is not None:
            for i, waiting in enumerate(self._queue):  # type: ignore[attr-defined]
                if _latest_only(waiting) == key:
                    self._queue[i] = item  # type: ignore[attr-defined]
                    return
        super()._put(item)  # type: ignore[misc]


def _latest_only(message: BaseModel) -> tuple[str, str | None] | None:
    """The slot of a message only the newest of which matters: a job's progress (the job's, not
    the object's: a newer job's goes after the older one's end), an export's."""
    if isinstance(message, cp.ProgressMessage):
        return ("progress", message.job_id)
    if isinstance(message, cp.ExportMessage):
        return ("export", None)
    return None


@dataclass
class Track:
    """One object's prompts, per-frame results and tracking job."""

    prompts: dict[int, FramePrompt] = field(default_factory=dict)
    results: dict[int, MaskResult] = field(default_factory=dict)
    job: TrackJob | None = None
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def present_frames(self) -> list[int]:
        return [i for i in sorted(self.results) if self.results[i].present]

    def prompts_json(self) -> str:
        return json.dumps(
            {
                str(f): {"points": p.points, "labels": p.labels, "box": p.box}
                for f, p in self.prompts.items()
            }
        )

    @staticmethod
    def prompts_from_json(text: str) -> dict[int, FramePrompt]:
        return {
            int(f): FramePrompt(
                [tuple(pt) for pt in p["points"]],  # type: ignore[misc]
                list(p["labels"]),
                None if p["box"] is None else tuple(p["box"]),
            )
            for f, p in json.loads(text).items()
        }

    def prompts_public(self) -> list[dict[str, Any]]:
        return [
            {"frame": f, "points": [list(p) for p in pr.points], "labels": pr.labels, "box": pr.box}
            for f, pr in sorted(self.prompts.items())
        ]


@dataclass
class Clip:
    id: str
    filename: str
    path: Path
    info: VideoInfo
    playable: bool
    mime: str
    objects: ObjectTable
    descriptions: bool = False
    proxy_path: Path | None = None
    proxy_state: str = "none"  # none | running | ready | failed
    tracks: dict[int, Track] = field(default_factory=dict)
    # Its jobs' frame encodings, shared by those that walk its frames together (encodings.py).
    encodings: SharedEncodings = field(default_factory=SharedEncodings, repr=False)
    subscribers: set[Feed] = field(default_factory=set)
    export_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # held by an export.mp4 render
    last_export: Path | None = None  # the newest export.mp4 render, kept in its folder
    exports_answering: set[Path] = field(default_factory=set)  # renders being sent: not deleted
    proxy_task: asyncio.Task[None] | None = None
    # Set when it is deleted or the server stops: its renders (proxy, export.mp4) end at their
    # next frame, each in its thread, rather than run on for minutes holding a render slot.
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    created: float = field(default_factory=time.time)
    used: float = field(default_factory=time.time)  # last opened or changed (retention: LRU)

    @property
    def dir(self) -> Path:
        return self.path.parent

    def object_public(self, obj: TrackedObject) -> cp.ClipObjectInfo:
        track = self.tracks[obj.id]
        return cp.ClipObjectInfo(
            **obj.kept().model_dump(),
            frames=len(track.results),
            job=cp.JobInfo(**track.job.public()) if track.job else None,
        )

    def public(self) -> cp.ClipInfo:
        return cp.ClipInfo(
            id=self.id,
            filename=self.filename,
            **self.info.public(),
            video_url=f"/api/clips/{self.id}/video",
            playable=self.playable or self.proxy_state == "ready",
            proxy=self.proxy_state,  # type: ignore[arg-type]
            descriptions=self.descriptions,
            objects=[self.object_public(o) for o in self.objects],
        )

    def state(self) -> str:
        """One word for the library: tracking, interrupted, failed, done or new."""
        states = {t.job.state for t in self.tracks.values() if t.job is not None}
        for word, among in (
            ("tracking", {"queued", "running"}),
            ("interrupted", {"interrupted"}),
            ("failed", {"failed"}),
        ):
            if states & among:
                return word
        return "done" if states else "new"

    def summary(self) -> cp.ClipSummary:
        return cp.ClipSummary(
            id=self.id,
            filename=self.filename,
            created=self.created,
            duration_s=round(self.info.duration_s, 3),
            frame_count=self.info.frame_count,
            width=self.info.width,
            height=self.info.height,
            objects=len(self.objects),
            state=self.state(),  # type: ignore[arg-type]
        )

    def publish(self, message: BaseModel) -> None:
        for q in list(self.subscribers):
            # Full: a page that stopped reading. The oldest goes (a reconnect's hello has all).
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(message)

    def frame_index(self, body: cp.AtFrame) -> int:
        info = self.info
        if body.frame is not None:
            return self.check_frame(body.frame, "frame")
        if body.t is None:
            raise HTTPException(
                422,
                "say which frame: send t (the video's currentTime, seconds) or frame (an index)",
            )
        return info.index_at(body.t)

    def check_frame(self, index: int, what: str) -> int:
        """A frame index of this clip, or a 422 that names the range."""
        if not 0 <= index < self.info.frame_count:
            raise HTTPException(
                422, f"{what} must be in 0..{self.info.frame_count - 1}, got {index}"
            )
        return index
