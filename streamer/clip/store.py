"""Clip mode's state: uploaded clips, their objects (the shared ObjectTable), tracks and jobs.

Uploads live in data_dir/clips/<id>/ under generated names; the clip, its objects (prompts,
labels, descriptions, chat), every finished frame's result and each job's state are saved in the
database (streamer/storage/) as they change, so a restart or a crash loses nothing committed. A
job the last process left running comes back "interrupted" and resumes from where it stopped. Files
go when the clip is deleted or evicted (MAX_CLIPS_KEPT).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.requests import HTTPConnection
from pydantic import BaseModel

from streamer import metrics
from streamer.clip import protocol as cp
from streamer.clip.job import FramePrompt, Resume, TrackJob, resume_point
from streamer.clip.video_io import ClipLimits, VideoInfo
from streamer.http.access import ANONYMOUS_OWNER, request_owner
from streamer.http.errors import require_vision
from streamer.http.kept import KeptItems
from streamer.objects.results import MaskResult
from streamer.objects.table import ObjectTable, TrackedObject
from streamer.storage import clips as rows
from streamer.storage.db import Database

log = logging.getLogger("fmu.clips")
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
    subscribers: set[asyncio.Queue[BaseModel]] = field(default_factory=set)
    export_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    proxy_task: asyncio.Task[None] | None = None
    created: float = field(default_factory=time.time)
    used: float = field(default_factory=time.time)  # last opened or changed (retention: LRU)

    @property
    def dir(self) -> Path:
        return self.path.parent

    def object_public(self, obj: TrackedObject) -> cp.ClipObjectInfo:
        track = self.tracks[obj.id]
        return cp.ClipObjectInfo(
            **obj.info().model_dump(),
            frames=len(track.results),
            job=cp.JobInfo(**track.job.public()) if track.job else None,
            iou=obj.iou,
            attempts=obj.attempts,
            chat=[cp.ChatTurn(**t) for t in obj.history],  # type: ignore[arg-type]
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

    def __init__(self, services: Any, db: Database) -> None:
        super().__init__(services, "clip", "clips", MAX_CLIPS_KEPT)
        self.job_slots = asyncio.Semaphore(self.settings.max_clip_jobs)
        self.db = db
        self.closing = False  # shutting down: stopped jobs are interrupted, not cancelled
        self.removed: collections.deque[cp.RemovedClip] = collections.deque(maxlen=50)

    def get(self, item_id: str) -> Clip:
        clip = super().get(item_id)
        clip.used = time.time()
        return clip

    # -- retention ---------------------------------------------------------------------------

    @staticmethod
    def in_use(clip: Clip) -> bool:
        """A job runs, a page has it open, or its proxy is being rendered: never removed."""
        return (
            bool(clip.subscribers)
            or any(t.running for t in clip.tracks.values())
            or (clip.proxy_task is not None and not clip.proxy_task.done())
        )

    async def enforce_retention(self, spare: str | None = None) -> list[cp.RemovedClip]:
        """Delete clips unused for --keep-days, then the least recently used ones while the data
        dir is over --disk-budget-mb; never one in use, nor `spare` (the clip just uploaded)."""
        settings = self.settings
        gone: list[cp.RemovedClip] = []
        now = time.time()
        idle = sorted(
            (c for c in self.items.values() if not self.in_use(c) and c.id != spare),
            key=lambda c: c.used,
        )
        if settings.keep_days > 0:
            for clip in list(idle):
                days = (now - clip.used) / 86400
                if days > settings.keep_days:
                    why = f"not opened for {days:.1f} days (kept {settings.keep_days:g})"
                    gone.append(await self._retire(clip, why))
                    idle.remove(clip)
        if settings.disk_budget_mb > 0:
            budget = settings.disk_budget_mb * 1_000_000
            used = await asyncio.to_thread(metrics.disk_used, Path(settings.data_dir))
            while used > budget and idle:
                clip = idle.pop(0)
                size = await asyncio.to_thread(metrics.disk_used, clip.dir)
                why = (
                    f"the data dir held {used / 1e6:.1f} MB, over the "
                    f"{settings.disk_budget_mb} MB budget; this was the least recently used clip"
                )
                gone.append(await self._retire(clip, why))
                used -= size
        return gone

    async def _retire(self, clip: Clip, reason: str) -> cp.RemovedClip:
        self.pop(clip.id)
        await self.discard(clip)
        note = cp.RemovedClip(id=clip.id, filename=clip.filename, at=time.time(), reason=reason)
        self.removed.appendleft(note)
        log.warning("retention removed clip %s (%s): %s", clip.id, clip.filename, reason)
        return note

    # -- the database ------------------------------------------------------------------------

    def save_object(self, clip: Clip, oid: int) -> None:
        """Queue the object's row (label, description, verdict, chat, prompts) for saving."""
        obj = clip.objects.objects.get(oid)
        track = clip.tracks.get(oid)
        if obj is None or track is None:
            return
        self.db.submit(rows.save_object, clip.id, obj.row(track.prompts_json()))

    async def restore(self) -> None:
        """Bring back every clip the database holds, mark jobs the last process left running as
        interrupted, and reconcile: rows whose files are gone and files with no row are removed
        (and logged)."""
        interrupted = await self.db.call(rows.interrupt_running)
        if interrupted:
            log.warning(
                "%d clip job(s) were stopped by the last shutdown or crash: interrupted, resumable",
                interrupted,
            )
        data_dir = Path(self.settings.data_dir)
        known: set[str] = set()
        for row in await self.db.call(rows.items, "clip"):
            path = data_dir / row["media"]
            if not path.is_file():
                log.warning(
                    "clip %s (%s): its file %s is gone; forgetting the clip",
                    row["id"],
                    row["filename"],
                    path,
                )
                await self.db.call(rows.delete_item, row["id"])
                continue
            clip = await self._load(row, path)
            known.add(clip.id)
            self.items[clip.id] = (
                clip  # restored clips count towards MAX_CLIPS_KEPT on the next upload
            )
            self.owners[clip.id] = row["owner"] or ANONYMOUS_OWNER  # still theirs after a restart
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name not in known:
                    log.warning(
                        "removing %s: no clip in the database owns it (an upload cut off by a crash?)",
                        entry,
                    )
                    await asyncio.to_thread(_remove, entry)
        if known:
            log.info("restored %d clip(s) from the database", len(known))

    async def _load(self, row: dict[str, Any], path: Path) -> Clip:
        info, playable, mime = rows.info_from_json(row["info"])
        clip = Clip(
            id=row["id"],
            filename=row["filename"],
            path=path,
            info=info,
            playable=playable,
            mime=mime,
            objects=self.new_table(),
            descriptions=self.services.reasoner is not None,
            created=row["created"],
            used=row["used"],
        )
        proxy = clip.dir / "proxy.mp4"
        if not playable:
            if proxy.is_file():
                clip.proxy_path, clip.proxy_state = proxy, "ready"
            else:  # the last process stopped while rendering it: render it again
                from streamer.clip.playback import make_proxy

                clip.proxy_state = "running"
                clip.proxy_task = asyncio.create_task(make_proxy(clip))
        data = await self.db.call(rows.load_clip, clip.id)
        for o in data["objects"]:
            obj = clip.objects.add(o["source"], o["label"], oid=o["oid"])
            obj.description, obj.verdict = o["description"], o["verdict"]
            obj.iou, obj.attempts = o["iou"], o["attempts"]
            obj.history.extend(json.loads(o["history"]))
            track = Track(
                prompts=Track.prompts_from_json(o["prompts"]),
                results=data["results"].get(o["oid"], {}),
            )
            clip.tracks[obj.id] = track
            j = data["jobs"].get(obj.id)
            if j is not None and track.prompts:
                job = TrackJob(
                    job_id=j["job_id"],
                    obj_id=obj.id,
                    path=clip.path,
                    info=clip.info,
                    prompts=track.prompts,
                    model=None,
                    run_vision=self.services.run_vision,
                    results=track.results,
                )
                job.state = j["state"]
                job.error = j["error"]
                job.position = j["position"]
                job.progress.phase, job.progress.done = j["phase"], j["done"]
                job.progress.total = j["total"]
                track.job = job
        return clip

    def _progress(self, clip: Clip, job: TrackJob) -> None:
        """A job moved: publish it, and save its new frames and state in one transaction."""
        if self.closing and job.state == "cancelled":
            job.state = "interrupted"  # stopped by a shutdown, not by a person: resumable
        clip.publish(cp.ProgressMessage(**job.public()))
        if self._current(clip, job):  # a job replaced by a refinement's saves nothing more
            self.db.submit(
                rows.record_progress, clip.id, job.obj_id, job.take_fresh(), job.public()
            )

    @staticmethod
    def _current(clip: Clip, job: TrackJob) -> bool:
        track = clip.tracks.get(job.obj_id)
        return track is not None and track.job is job

    def limits(self) -> ClipLimits:
        return ClipLimits.from_settings(self.settings)

    async def add(self, clip: Clip) -> None:
        """Keep a new clip: its row is committed before the upload is answered."""
        media = str(clip.path.relative_to(Path(self.settings.data_dir)))
        info = rows.info_json(clip.info, playable=clip.playable, mime=clip.mime)
        size = clip.path.stat().st_size
        await self.db.call(
            rows.insert_clip, clip.id, clip.filename, media, info, size, request_owner.get()
        )
        for old in self.put(clip.id, clip):
            await self.discard(old)

    @staticmethod
    async def _stop_tasks(clip: Clip) -> None:
        """Cancel the clip's jobs, answers and proxy encode, and wait until each has ended."""
        tasks = [t.task for t in clip.tracks.values() if t.task]
        tasks += [o_task for o in clip.objects for o_task in o.tasks()]
        if clip.proxy_task:
            tasks.append(clip.proxy_task)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    async def discard(self, clip: Clip) -> None:
        await self._stop_tasks(clip)
        clip.publish(cp.ClosedMessage(message="this clip was removed from the server"))
        await self.db.call(rows.delete_item, clip.id)
        await asyncio.to_thread(shutil.rmtree, clip.dir, True)

    async def aclose(self) -> None:
        """Shutdown: stop every job (saved as interrupted, resumable); clips and files stay."""
        self.closing = True
        for clip in self.drain():
            await self._stop_tasks(clip)
            clip.publish(cp.ClosedMessage(message="the server is restarting; open the clip again"))

    # -- tracking jobs ---------------------------------------------------------------------

    def start_job(self, clip: Clip, oid: int, resume: Resume | None = None) -> TrackJob:
        """(Re)track the object through the whole clip from its prompts, or go on from `resume`
        (an interrupted job: the results it had are kept)."""
        model = require_vision(self.services)
        track = clip.tracks[oid]
        if track.running:
            track.task.cancel()  # type: ignore[union-attr]  # a refinement re-runs from scratch
        self.save_object(clip, oid)
        if resume is None:
            track.results = {}
            self.db.submit(rows.clear_results, clip.id, oid)
        job = TrackJob(
            job_id=uuid.uuid4().hex[:12],
            obj_id=oid,
            path=clip.path,
            info=clip.info,
            prompts=track.prompts,
            model=model,
            run_vision=self.services.run_vision,
            results=track.results,
            on_progress=lambda j: self._progress(clip, j),
            resume=resume,
        )
        track.job = job
        self.db.submit(rows.save_job, clip.id, oid, job.public())
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
                job.state = "interrupted" if self.closing else "cancelled"
                clip.publish(cp.JobMessage(**job.public()))
                if self._current(clip, job):
                    self.db.submit(rows.save_job, clip.id, oid, job.public())

        track.task = asyncio.create_task(run())
        track.task.add_done_callback(finished)
        return job

    def resume_job(self, clip: Clip, oid: int) -> TrackJob:
        """Go on with an interrupted (or cancelled) job from the frame it had reached."""
        clip.objects.get(oid)
        track = clip.tracks[oid]
        job = track.job
        if track.running or job is None or job.state not in ("interrupted", "cancelled", "failed"):
            state = "running" if track.running else (job.state if job else "none")
            raise HTTPException(
                409,
                f"object {oid}'s job is {state}: only an interrupted, cancelled or failed job resumes",
            )
        where = resume_point(job.progress.phase, job.position, track.prompts, track.results)
        return self.start_job(clip, oid, resume=where)

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
        self.db.submit(rows.delete_object, clip.id, oid)
        clip.publish(cp.RemovedMessage(object_id=oid))
        clip.publish(clip.objects.message())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clip_store(conn: HTTPConnection) -> ClipStore:
    """The app's clip store: create_app builds it and closes it at shutdown."""
    return conn.app.state.clips


Store = Annotated[ClipStore, Depends(clip_store)]
