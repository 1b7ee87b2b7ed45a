"""Clip mode's store: the uploaded clips (state.py), their retention, their rows, their jobs.

Uploads live in data_dir/clips/<id>/ under generated names; the clip, its objects (prompts,
labels, descriptions, chat), every finished frame's result and each job's state are saved in the
database (streamer/storage/) as they change, so a restart or a crash loses nothing committed. A
job the last process left running comes back "interrupted" and resumes from where it stopped
(restore.py). Files go when the clip is deleted or evicted (MAX_CLIPS_KEPT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends
from fastapi.requests import HTTPConnection

from streamer import metrics
from streamer.clip import protocol as cp
from streamer.clip.job import Resume, TrackJob
from streamer.clip.limits import ClipLimits
from streamer.clip.restore import restore_clips, resume_point
from streamer.clip.state import Clip, Track
from streamer.http.access import request_owner, short_id
from streamer.http.errors import Refusal, require_vision
from streamer.http.kept import KeptItems
from streamer.storage import clips as rows
from streamer.storage.db import Database
from workers.words import plural

__all__ = ["MAX_CLIPS_KEPT", "Clip", "ClipStore", "Store", "Track", "clip_store"]

log = logging.getLogger("fmu.clips")
MAX_CLIPS_KEPT = 8  # uploaded clips kept at once; the oldest (and its files) goes first
# Overlay videos and browser copies rendered at once (each a whole decode and encode, minutes on
# a long clip); more wait their turn. They run on the default thread pool, which every quick
# read needs too (a frame for describe or Find, export.json, an image's decode): eight renders
# at once held all six threads of a 2-core machine's pool, and an export.json waited 13 s.
RENDERS_AT_ONCE = 2


class ClipStore(KeptItems[Clip]):
    """Every uploaded clip of this app, its objects and jobs; bounded (oldest evicted)."""

    def __init__(self, services: Any, db: Database) -> None:
        super().__init__(services, "clip", "clips", MAX_CLIPS_KEPT)
        self.job_slots = asyncio.Semaphore(self.settings.max_clip_jobs)
        self.render_slots = asyncio.Semaphore(RENDERS_AT_ONCE)
        self.db = db
        self.closing = False  # shutting down: stopped jobs are interrupted, not cancelled

    def get(self, item_id: str) -> Clip:
        clip = super().get(item_id)
        clip.used = time.time()
        return clip

    # -- retention ---------------------------------------------------------------------------

    def in_use(self, clip: Clip) -> bool:
        """A job runs, a page has it open, one of its objects is being described, answered or
        refined, or its proxy or an export.mp4 is being rendered: never removed."""
        return (
            bool(clip.subscribers)
            or any(t.running for t in clip.tracks.values())
            or any(obj.busy() for obj in clip.objects)
            or (clip.proxy_task is not None and not clip.proxy_task.done())
            or clip.export_lock.locked()
        )

    def size_on_disk(self, clip: Clip) -> int:
        return metrics.disk_used(clip.dir)  # the upload, its proxy and its renders

    # -- the database ------------------------------------------------------------------------

    def save_object(self, clip: Clip, oid: int) -> None:
        """Queue the object's row (label, description, verdict, chat, prompts) for saving."""
        obj = clip.objects.objects.get(oid)
        track = clip.tracks.get(oid)
        if obj is None or track is None:
            return
        self.db.submit(rows.save_object, clip.id, obj.row(track.prompts_json()))

    async def restore(self) -> None:
        """Bring back every clip the database holds (restore.py)."""
        await restore_clips(self)

    def _progress(self, clip: Clip, job: TrackJob) -> None:
        """A job moved: publish it, and save its new frames and state in one transaction."""
        if self.closing and job.state == "cancelled":
            job.state = "interrupted"  # stopped by a shutdown, not by a person: resumable
        if self._current(clip, job):  # a job replaced or removed says and saves nothing more
            clip.publish(cp.ProgressMessage(**job.public()))
            self.db.submit(
                rows.record_progress, clip.id, job.obj_id, job.take_fresh(), job.public()
            )

    @staticmethod
    def _current(clip: Clip, job: TrackJob) -> bool:
        """Whether the job is still its object's: one a refinement replaced, or whose object was
        removed, may wind down after its successor started or after `removed` was said, and the
        page would take its words for the object's (a Resume for an object that is gone)."""
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
        """Cancel the clip's jobs, answers and renders, and wait until each has ended (an
        export.mp4 render stops at its next frame; its request answers for itself)."""
        clip.stopping.set()
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
        await clip.objects.clear()
        await self._stop_tasks(clip)
        clip.publish(cp.ClosedMessage(message="this clip was removed from the server"))
        await self.db.call(rows.delete_item, clip.id)
        await asyncio.to_thread(shutil.rmtree, clip.dir, True)

    async def aclose(self) -> None:
        """Shutdown: stop every job (saved as interrupted, resumable); clips and files stay.
        No `closed` to the pages (that says the clip was removed): their sockets drop with the
        server, and each page reconnects and takes the clip from the new server's hello."""
        self.closing = True
        for clip in self.drain():
            await self._stop_tasks(clip)

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
        job = self.job_of(
            clip,
            oid,
            uuid.uuid4().hex[:12],
            model=model,
            on_progress=lambda j: self._progress(clip, j),
            resume=resume,
        )
        track.job = job
        self.db.submit(rows.save_job, clip.id, oid, job.public())
        previous = track.task

        async def run() -> None:
            if previous is not None and not previous.done():
                # The job it replaces winds down first (shielded: a cancel of this job is not
                # passed on to it). A cancel of this job while it waits ends this job here.
                try:
                    await asyncio.shield(previous)
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise
                except Exception:
                    pass  # its own failure was reported by its own done callback
            clip.publish(cp.ProgressMessage(**job.public()))
            async with self.job_slots:
                await job.run()
            _log_end(clip, job)
            if self._current(clip, job):
                clip.publish(cp.JobMessage(**job.public()))

        def finished(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                job.state = "interrupted" if self.closing else "cancelled"
                if self._current(clip, job):
                    clip.publish(cp.JobMessage(**job.public()))
                    self.db.submit(rows.save_job, clip.id, oid, job.public())

        track.task = asyncio.create_task(run())
        track.task.add_done_callback(finished)
        return job

    def job_of(self, clip: Clip, oid: int, job_id: str, **kw: Any) -> TrackJob:
        """A tracking job of the object over its prompts, filling its track's results; `kw`:
        the model (None for a job only restored, not run), on_progress, resume."""
        track = clip.tracks[oid]
        return TrackJob(
            job_id=job_id,
            obj_id=oid,
            path=clip.path,
            info=clip.info,
            prompts=track.prompts,
            run_vision=self.services.run_vision,
            results=track.results,
            encodings=clip.encodings,
            **kw,
        )

    def resume_job(self, clip: Clip, oid: int) -> TrackJob:
        """Go on with an interrupted (or cancelled) job from the frame it had reached."""
        clip.objects.get(oid)
        track = clip.tracks[oid]
        job = track.job
        if track.running or job is None or job.state not in ("interrupted", "cancelled", "failed"):
            state = "running" if track.running else (job.state if job else "none")
            raise Refusal(
                409,
                "busy" if track.running else "not_resumable",
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
        """Forget one object (a remove): an id not there is refused as unknown."""
        clip.objects.get(oid)
        await self.remove_objects(clip, [oid])

    async def remove_objects(self, clip: Clip, oids: list[int]) -> None:
        """Forget these objects: each one's job stops and its row goes. An id already gone is
        skipped (a reset meets the ones a remove, or a second reset, took while it waited)."""
        for oid in oids:
            track = clip.tracks.pop(oid, None)
            # Gone from the objects in the same step as from the tracks (remove pops before its
            # first await): no answer meanwhile sees an object without its track.
            obj = await clip.objects.remove(oid)
            if obj is None and track is None:
                continue
            if track is not None:
                await self.stop_job(track)
            self.db.submit(rows.delete_object, clip.id, oid)
            clip.publish(cp.RemovedMessage(object_id=oid))
        clip.publish(clip.objects.message())


def clip_store(conn: HTTPConnection) -> ClipStore:
    """The app's clip store: create_app builds it and closes it at shutdown."""
    return conn.app.state.clips


Store = Annotated[ClipStore, Depends(clip_store)]


def _log_end(clip: Clip, job: TrackJob) -> None:
    """The server log's line for a job that ran to its end: done, or failed with its traceback
    (the page says why too, in the job's `error`)."""
    who = f"clip {short_id(clip.id)}: object {job.obj_id}"
    if job.state == "done":
        p = job.progress
        log.info("%s tracked through %s (%.1f fps)", who, plural(p.done, "frame"), p.fps)
    elif job.state == "failed":
        log.warning("%s: %s", who, job.error, exc_info=job.failure)
