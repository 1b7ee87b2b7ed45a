"""Clip mode's state: uploaded clips, their objects (the shared ObjectTable), tracks and jobs.

Uploads live in data_dir/clips/<id>/ under generated names and are removed when the clip is
deleted, evicted (MAX_CLIPS_KEPT) or the app shuts down: clips do not survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.requests import HTTPConnection
from pydantic import BaseModel

from streamer.clip import protocol as cp
from streamer.clip.job import FramePrompt, TrackJob
from streamer.clip.video_io import ClipLimits, VideoInfo
from streamer.http.errors import require_vision
from streamer.http.kept import KeptItems
from streamer.objects.results import MaskResult
from streamer.objects.table import ObjectTable, TrackedObject

MAX_CLIPS_KEPT = 8  # uploaded clips kept at once; the oldest (and its files) goes first


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
    subscribers: set[asyncio.Queue[BaseModel]] = field(default_factory=set)
    export_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    proxy_task: asyncio.Task[None] | None = None

    @property
    def dir(self) -> Path:
        return self.path.parent

    def object_public(self, obj: TrackedObject) -> cp.ClipObjectInfo:
        track = self.tracks[obj.id]
        return cp.ClipObjectInfo(
            **obj.info().model_dump(),
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

    def publish(self, message: BaseModel) -> None:
        for q in list(self.subscribers):
            if q.full():  # a slow page loses old progress, never the newest
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(message)

    def frame_index(self, body: cp.AtFrame) -> int:
        info = self.info
        if body.frame is not None:
            if body.frame >= info.frame_count:
                raise HTTPException(
                    422, f"frame must be in 0..{info.frame_count - 1}, got {body.frame}"
                )
            return body.frame
        if body.t is None:
            raise HTTPException(
                422,
                "say which frame: send t (the video's currentTime, seconds) or frame (an index)",
            )
        return info.index_at(body.t)


class ClipStore(KeptItems[Clip]):
    """Every uploaded clip of this app, its objects and jobs; bounded (oldest evicted)."""

    def __init__(self, services: Any) -> None:
        super().__init__(services, "clip", "clips", MAX_CLIPS_KEPT)
        self.job_slots = asyncio.Semaphore(self.settings.max_clip_jobs)

    def limits(self) -> ClipLimits:
        return ClipLimits.from_settings(self.settings)

    async def add(self, clip: Clip) -> None:
        for old in self.put(clip.id, clip):
            await self.discard(old)

    async def discard(self, clip: Clip) -> None:
        tasks = [t.task for t in clip.tracks.values() if t.task]
        tasks += [o_task for o in clip.objects for o_task in o.tasks()]
        if clip.proxy_task:
            tasks.append(clip.proxy_task)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        clip.publish(cp.ClosedMessage(message="this clip was removed from the server"))
        await asyncio.to_thread(shutil.rmtree, clip.dir, True)

    async def aclose(self) -> None:
        for clip in self.drain():
            await self.discard(clip)

    # -- tracking jobs ---------------------------------------------------------------------

    def start_job(self, clip: Clip, oid: int) -> TrackJob:
        """(Re)track the object through the whole clip from its prompts."""
        model = require_vision(self.services)
        track = clip.tracks[oid]
        if track.running:
            track.task.cancel()  # type: ignore[union-attr]  # a refinement re-runs from scratch
        track.results = {}
        job = TrackJob(
            job_id=uuid.uuid4().hex[:12],
            obj_id=oid,
            path=clip.path,
            info=clip.info,
            prompts=track.prompts,
            model=model,
            run_vision=self.services.run_vision,
            results=track.results,
            on_progress=lambda j: clip.publish(cp.ProgressMessage(**j.public())),
        )
        track.job = job
        previous = track.task

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(BaseException):
                    await previous
            clip.publish(cp.ProgressMessage(**job.public()))
            async with self.job_slots:
                await job.run()
            clip.publish(cp.JobMessage(**job.public()))

        def finished(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                job.state = "cancelled"
                clip.publish(cp.JobMessage(**job.public()))

        track.task = asyncio.create_task(run())
        track.task.add_done_callback(finished)
        return job

    @staticmethod
    async def stop_job(track: Track) -> None:
        """Cancel the object's job, if one runs, and wait until it has let go of the clip."""
        if track.running:
            track.task.cancel()  # type: ignore[union-attr]
            with contextlib.suppress(BaseException):
                await track.task  # type: ignore[misc]

    async def remove_object(self, clip: Clip, oid: int) -> None:
        clip.objects.get(oid)
        track = clip.tracks.pop(oid, None)
        if track is not None:
            await self.stop_job(track)
        await clip.objects.remove(oid)
        clip.publish(cp.RemovedMessage(object_id=oid))
        clip.publish(clip.objects.message())


def clip_store(conn: HTTPConnection) -> ClipStore:
    """The app's clip store: create_app builds it and closes it at shutdown."""
    return conn.app.state.clips


Store = Annotated[ClipStore, Depends(clip_store)]
