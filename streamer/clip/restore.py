"""Clip mode after a restart: every clip the database holds comes back with its objects, results
and jobs; a job the last process left running comes back "interrupted" (resumable). Rows whose
files are gone, files no row owns and the part files and renders the last process left in a
clip's folder are removed, and logged. An interrupted (or cancelled) job goes on from the nearest
frame it had reached that can seed it (resume_point).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.clip.job import FramePrompt, Resume, start_frames
from streamer.clip.state import Clip, Track
from streamer.objects.results import MaskResult
from streamer.storage import clips as rows
from workers.words import plural

if TYPE_CHECKING:
    from streamer.clip.store import ClipStore

log = logging.getLogger("fmu.clips")


async def restore_clips(store: ClipStore) -> None:
    """Bring back every clip the database holds, mark jobs the last process left running as
    interrupted, and reconcile: rows whose files are gone and files with no row are removed
    (and logged)."""
    interrupted = await store.db.call(rows.interrupt_running)
    if interrupted:
        log.warning(
            "%s stopped by the last shutdown or crash: interrupted, resumable",
            plural(interrupted, "clip job"),
        )

    async def load(row: dict[str, Any], path: Path) -> tuple[Clip, list[str]]:
        if not path.is_file():
            raise FileNotFoundError(f"no file at {path}")
        clip = await _load(store, row, path)
        return clip, [clip.id]  # its folder

    await store.restore_rows(load)


async def _load(store: ClipStore, row: dict[str, Any], path: Path) -> Clip:
    info, playable, mime = rows.info_from_json(row["info"])
    clip = Clip(
        id=row["id"],
        filename=row["filename"],
        path=path,
        info=info,
        playable=playable,
        mime=mime,
        objects=store.new_table(row),
        descriptions=store.services.reasoner is not None,
        created=row["created"],
        used=row["used"],
    )
    if stale := await asyncio.to_thread(_sweep, clip.dir):
        log.warning("clip %s: removed what the last process left unfinished: %s", clip.id, stale)
    proxy = clip.dir / "proxy.mp4"
    if not playable:
        if proxy.is_file():
            clip.proxy_path, clip.proxy_state = proxy, "ready"
        else:  # the last process stopped while rendering it: render it again
            from streamer.clip.playback import make_proxy

            clip.proxy_state = "running"
            clip.proxy_task = asyncio.create_task(make_proxy(clip, store.render_slots))
    data = await store.db.call(rows.load_clip, clip.id)
    for o in data["objects"]:
        obj = clip.objects.add_row(o)
        track = Track(
            prompts=Track.prompts_from_json(o["prompts"]),
            results=data["results"].get(o["oid"], {}),
        )
        clip.tracks[obj.id] = track
        j = data["jobs"].get(obj.id)
        if j is not None and track.prompts:
            job = store.job_of(clip, obj.id, j["job_id"], model=None)
            job.state = j["state"]
            job.error = j["error"]
            job.position = j["position"]
            job.progress.phase, job.progress.done = j["phase"], j["done"]
            job.progress.total = j["total"]
            track.job = job
    return clip


def _sweep(folder: Path) -> str:
    """Remove the files a clip's folder holds only while a process runs: part files (a render,
    a thumbnail, a browser copy cut off by the stop) and export.mp4 renders (each request renders
    its own; the newest is kept only until the next). Names what went, or ""."""
    gone = sorted({*folder.glob("*.part*"), *folder.glob("export-*.mp4")})
    for path in gone:
        path.unlink(missing_ok=True)
    return ", ".join(p.name for p in gone)


def resume_point(
    phase: str,
    position: int | None,
    prompts: dict[int, FramePrompt],
    results: dict[int, MaskResult],
) -> Resume | None:
    """Where a job interrupted at frame `position` of `phase` goes on from: the nearest frame it
    had reached that has a prompt that can start the object (its own) or a visible result
    (re-seeded with that box), or None (start over from the clicks)."""
    starts = start_frames(prompts)
    if phase == "backward" and position is None and starts:
        position = starts[-1]  # saved between the passes by an earlier version: where it starts
    if phase not in ("forward", "backward") or position is None or not starts:
        return None
    if phase == "forward":
        candidates = range(position, starts[0] - 1, -1)
    else:
        candidates = range(position, starts[-1] + 1)
    for frame in candidates:
        if frame in starts:
            return phase, frame, None
        r = results.get(frame)
        if r is not None and r.present and r.box is not None:
            return phase, frame, FramePrompt(box=tuple(r.box))  # type: ignore[arg-type]
    return None
