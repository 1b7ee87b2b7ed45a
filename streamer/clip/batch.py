"""`fmu-live track`: clips (or folders of clips) plus prompts -> the web export, without the server.

Each clip goes through the service's own clip code: `probe` (the same validation and limits as an
upload), one `TrackJob` per object (forward and backward passes, every SAM2 call on one vision
thread as in the service; `--max-clip-jobs` of them at once, sharing frame encodings),
`export_document` and `render_overlay_video` (the same COCO RLE JSON and overlay MP4 as the page's
export buttons). Results land in OUT/<clip file name>/export.json and overlay.mp4, with run.json
saying what made them (track_output.py): a clip done with the same prompts and options is skipped,
so a rerun resumes; one done with others is refused unless --redo replaces it (two clips of one
file name would share that folder: they are refused). A clip that cannot be read or tracked is
reported and skipped; the others go on.

Prompts, for every clip: `--point X,Y[@FRAME]` and `--box X0,Y0,X1,Y1[@FRAME]` (each one object),
`--find PHRASE[@FRAME]` (the VLM grounds the phrase on that frame; each box is one object), or a
JSON file of per-clip prompts: {"clip.mp4": [{"frame": 0, "points": [[x, y]], "labels": [1]},
{"frame": 3, "box": [x0, y0, x1, y1]}, {"frame": 0, "find": "the red cup"}], "*": [...]}
(read and checked in track_prompts.py).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from streamer.clip.encodings import SharedEncodings
from streamer.clip.job import FramePrompt, TrackJob
from streamer.clip.limits import VideoError
from streamer.clip.state import Track
from streamer.clip.track_output import (
    earlier_run,
    keep_earlier,
    replaced_note,
    run_record,
    write_results,
)
from streamer.clip.track_prompts import ObjectPrompt
from streamer.clip.video_io import VIDEO_SUFFIXES, VideoReader, probe
from workers.reasoning.errors import VLMError, start_hint
from workers.words import plural


@dataclass
class _BatchObject:
    """An object of one clip in a batch: the service's Track, without a session around it."""

    id: int
    label: str | None
    track: Track


@dataclass
class ClipOutcome:
    clip: Path
    state: str  # "done" | "skipped" (already done) | "failed"
    detail: str = ""
    objects: int = 0
    attempts: int = 1  # more than 1 when a worker died on it and it was run again (--ray)


# How long tracker actors waiting for room on a Ray cluster may wait while none runs (track
# --ray-room-wait; cluster.RayPlan): long enough for an autoscaler to add a node.
RAY_ROOM_WAIT_S = 600.0
_RAY_ADDRESS = re.compile(r"(auto|local|ray://[^\s/]+|\[?[\w.:-]+\]?:\d+)")


def check_ray_address(text: str) -> str:
    """A Ray address as `ray.init` takes it, or ValueError saying what one looks like."""
    if _RAY_ADDRESS.fullmatch(text):
        return text
    hint = ""
    if Path(text).exists():
        hint = f"; {text!r} is a file or folder: put the clips before --ray, or write --ray=ADDRESS"
    raise ValueError(
        "--ray takes a cluster address: auto (the cluster `ray start` runs here), HOST:PORT "
        f"(its GCS) or ray://HOST:10001 (Ray Client), got {text!r}{hint}"
    )


def find_clips(inputs: list[Path]) -> list[Path]:
    """The files given, and the video files (by suffix) in the folders given, in name order.

    A file reached twice (given, and in a folder given) is listed once.
    """
    clips: list[Path] = []
    for p in inputs:
        if p.is_dir():
            clips += sorted(
                f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES
            )
        else:
            clips.append(p)
    seen: set[Path] = set()
    unique = []
    for clip in clips:
        if clip.resolve() not in seen:
            seen.add(clip.resolve())
            unique.append(clip)
    return unique


def check_clip_names(clips: list[Path]) -> None:
    """ValueError when two clips share a file name: both would write OUT/<name>/ (the second
    then counted as done without being tracked) and both take --prompts' entry for that name."""
    first: dict[str, Path] = {}
    for clip in clips:
        if clip.name in first:
            raise ValueError(
                f"two clips are named {clip.name!r}: {first[clip.name]} and {clip}; their results "
                f"would share one output folder ({clip.name}/) and one --prompts entry. Rename "
                "one, or track the folders in separate runs with separate --out"
            )
        first[clip.name] = clip


def clip_prompts(
    prompts: list[ObjectPrompt], per_clip: dict[str, list[ObjectPrompt]], clip_name: str
) -> list[ObjectPrompt]:
    """A clip's prompts: those for every clip, then --prompts' "*" entry, then its own."""
    return [*prompts, *per_clip.get("*", []), *per_clip.get(clip_name, [])]


class PromptError(ValueError):
    """A prompt that does not fit the clip it is given for (a frame past its end, a Find without
    a VLM); the message says what to change."""


def find_needs_vlm(model: str, phrase: str | None = None) -> str:
    """What `track` says when a Find prompt is given and no VLM is (`model`: --vlm-model)."""
    what = f"--find {phrase!r}" if phrase else "--find"
    return (
        f"{what} needs a VLM to ground its phrase: {start_hint(model)}, or pass "
        "--vlm-backend transformers to load --vlm-model in this process (slow on CPU)"
    )


# What a person can act on from the message alone: a clip that cannot be used, a prompt that does
# not fit it, a VLM that is down or misconfigured.
USER_ERRORS = (VideoError, PromptError, VLMError)


def failure_detail(exc: Exception) -> str:
    """Why a clip failed, as its outcome line says it: a user error in its own words; anything
    else with its type in front, so a bug report says what it was."""
    return str(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {exc}"


class BatchTracker:
    """Track every clip with the service's clip job; one clip at a time, `max_clip_jobs` of its
    objects at once."""

    def __init__(
        self,
        services: Any,
        *,
        out: Path,
        limits: Any,
        prompts: list[ObjectPrompt],
        per_clip: dict[str, list[ObjectPrompt]] | None = None,
        video: bool = True,
        progress: bool = True,
        on_frames: Callable[[Path, int, int], None] | None = None,
        redo: bool = False,
    ) -> None:
        self.services = (
            services  # streamer.services.Services: the model, the vision thread, the VLM
        )
        self.out = out
        self.limits = limits
        self.prompts = prompts
        self.per_clip = per_clip or {}
        self.video = video
        self.progress = progress
        self.on_frames = on_frames  # (clip, frames done, frames in all) as tracking goes
        self.redo = redo  # replace results made with other prompts or options (else refused)

    def record_for(self, clip: Path) -> dict[str, Any]:
        """The clip's run.json for this run: its prompts and the options its masks depend on."""
        from workers.vision.precision import model_precision

        prompts = clip_prompts(self.prompts, self.per_clip, clip.name)
        model = self.services.vision_model
        precision = None if model is None else model_precision(model).name
        settings = self.services.settings
        return run_record(prompts, settings, video=self.video, precision=precision, clip=clip)

    async def run(
        self, clips: list[Path], on_outcome: Callable[[ClipOutcome], None] | None = None
    ) -> list[ClipOutcome]:
        """Track the clips one after another; `on_outcome` gets each clip's as it ends."""
        check_clip_names(clips)
        outcomes = []
        for clip in clips:
            try:
                outcome = await self.track(clip)
            except Exception as exc:  # one bad clip never stops the batch
                outcome = ClipOutcome(clip, "failed", failure_detail(exc))
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        return outcomes

    async def _objects(self, clip: Path, info: Any, prompts: list[ObjectPrompt]) -> list[Any]:
        """The clip's objects (the service's ClipObject), Find phrases grounded first."""
        objects: list[_BatchObject] = []
        for p in prompts:
            if not 0 <= p.frame < info.frame_count:
                raise PromptError(
                    f"prompt frame {p.frame} is outside the clip (0..{info.frame_count - 1})"
                )
            n = len(objects) + 1
            if p.find is None:
                prompt = FramePrompt(list(p.points), list(p.labels), p.box)
                objects.append(_BatchObject(n, None, Track(prompts={p.frame: prompt})))
                continue
            if self.services.reasoner is None:
                raise PromptError(find_needs_vlm(self.services.settings.vlm_model, p.find))
            frame = await asyncio.to_thread(_read_frame, VideoReader, clip, info, p.frame)
            for g in await self.services.reasoner.ground(frame, p.find):
                box = tuple(float(v) for v in g.box)
                prompt = FramePrompt(box=box)  # type: ignore[arg-type]
                objects.append(
                    _BatchObject(
                        len(objects) + 1, g.label or p.find, Track(prompts={p.frame: prompt})
                    )
                )
        return objects

    async def track(self, clip: Path) -> ClipOutcome:
        dest = self.out / clip.name
        prompts = clip_prompts(self.prompts, self.per_clip, clip.name)
        record = self.record_for(clip)
        earlier = earlier_run(dest, record)
        kept = keep_earlier(earlier, has_prompts=bool(prompts), redo=self.redo)
        if kept is not None:
            return ClipOutcome(clip, *kept)
        if not prompts:
            return ClipOutcome(
                clip,
                "failed",
                "no prompts for this clip (give --point, --box, --find or --prompts)",
            )
        try:
            info = await asyncio.to_thread(probe, clip, self.limits)
        except (VideoError, OSError) as exc:
            return ClipOutcome(clip, "failed", str(exc))
        objects = await self._objects(clip, info, prompts)
        if not objects:
            return ClipOutcome(
                clip, "failed", "nothing to track: the Find phrases matched no object"
            )

        def on_progress(job: TrackJob) -> None:
            bar.n = sum(j.progress.done for j in jobs)
            bar.refresh()
            if self.on_frames is not None:
                self.on_frames(clip, bar.n, bar.total)

        # As many objects at once as the service runs clip jobs; those started together walk
        # the frames in step and encode each frame once between them (encodings.py).
        encodings = SharedEncodings()
        slots = asyncio.Semaphore(self.services.settings.max_clip_jobs)

        async def run(job: TrackJob) -> None:
            async with slots:
                await job.run()
            if job.state == "failed":  # the clip fails with it: its other objects stop here
                for task in tasks:
                    if task is not asyncio.current_task():
                        task.cancel()

        jobs = [
            TrackJob(
                job_id=uuid.uuid4().hex[:12],
                obj_id=obj.id,
                path=clip,
                info=info,
                prompts=obj.track.prompts,
                model=self.services.vision_model,
                run_vision=self.services.run_vision,
                results=obj.track.results,
                on_progress=on_progress,
                encodings=encodings,
            )
            for obj in objects
        ]
        # The bar counts the frames of every object's passes from the start, so it only grows.
        total = sum(job.progress.total for job in jobs)
        bar = tqdm(total=total, desc=clip.name, unit="frame", disable=not self.progress)
        tasks = [asyncio.ensure_future(run(job)) for job in jobs]
        try:
            ended = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            bar.close()
        for exc in ended:
            if isinstance(exc, Exception):  # a bug (a job's own failure is its state)
                raise exc
        for job in sorted(jobs, key=lambda j: j.state != "failed"):  # the failure, not its siblings
            if job.state != "done":
                return ClipOutcome(clip, "failed", f"object {job.obj_id}: {job.error or job.state}")

        await write_results(dest, clip, info, objects, record, video=self.video)
        detail = f"{dest}{replaced_note(earlier)}{_undecoded_note(info, objects)}"
        return ClipOutcome(clip, "done", detail, len(objects))


def _undecoded_note(info: Any, objects: list[Any]) -> str:
    """What the line says of frames the file could not decode: tracking went past them (as in
    the service), so they have no masks in export.json and the overlay video, and '' when none."""
    tracked = set().union(*(o.track.results for o in objects))
    lost = [i for i in range(info.frame_count) if i not in tracked]
    if not lost:
        return ""
    named = ", ".join(map(str, lost[:5])) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
    return (
        f" ({plural(len(lost), 'frame')} of {info.frame_count} could not be decoded, the file "
        f"may be damaged there, and {'has' if len(lost) == 1 else 'have'} no masks: {named})"
    )


def _read_frame(reader_cls: Any, clip: Path, info: Any, index: int) -> Any:
    with reader_cls(clip, info) as reader:
        return reader.frame(index)
