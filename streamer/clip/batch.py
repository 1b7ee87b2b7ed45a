"""`fmu-live track`: clips (or folders of clips) plus prompts -> the web export, without the server.

Each clip goes through the service's own clip code: `probe` (the same validation and limits as an
upload), one `TrackJob` per object (forward and backward passes, every SAM2 call on one vision
thread as in the service), `export_document` and `render_overlay_video` (the same COCO RLE JSON and
overlay MP4 as the page's export buttons). Results land in OUT/<clip file name>/export.json and
overlay.mp4, with run.json saying what made them (track_output.py): a clip done with the same
prompts and options is skipped, so a rerun resumes; one done with others is refused unless --redo
replaces it (two clips of one file name would share that folder: they are refused). A clip that
cannot be read or tracked is reported and skipped; the others go on.

Prompts, for every clip: `--point X,Y[@FRAME]` and `--box X0,Y0,X1,Y1[@FRAME]` (each one object),
`--find PHRASE[@FRAME]` (the VLM grounds the phrase on that frame; each box is one object), or a
JSON file of per-clip prompts: {"clip.mp4": [{"frame": 0, "points": [[x, y]], "labels": [1]},
{"frame": 3, "box": [x0, y0, x1, y1]}, {"frame": 0, "find": "the red cup"}], "*": [...]}.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from streamer.clip.job import FramePrompt, TrackJob
from streamer.clip.state import Track
from streamer.clip.track_output import (
    earlier_run,
    keep_earlier,
    replaced_note,
    run_record,
    write_results,
)
from streamer.clip.video_io import VIDEO_SUFFIXES, VideoError, VideoReader, probe
from streamer.objects.requests import check_box
from streamer.objects.table import NEGATIVE_FIRST, starts_an_object
from workers.reasoning.errors import VLMError, start_hint

_NUM = r"-?\d+(?:\.\d+)?"


@dataclass
class ObjectPrompt:
    """One object to track: clicks and/or a box on a frame, or a phrase to Find there."""

    frame: int = 0
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    find: str | None = None


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


def _split_frame(spec: str) -> tuple[str, int]:
    body, _, frame = spec.rpartition("@") if "@" in spec else (spec, "", "0")
    if not frame.isdigit():
        raise ValueError(f"the frame after @ must be a whole number, got {spec!r}")
    return body, int(frame)


def parse_point(spec: str) -> ObjectPrompt:
    """'X,Y[@FRAME]' -> a one-click object."""
    body, frame = _split_frame(spec)
    m = re.fullmatch(rf"\s*({_NUM})\s*,\s*({_NUM})\s*", body)
    if not m:
        raise ValueError(f"a point is X,Y or X,Y@FRAME (pixels), got {spec!r}")
    return ObjectPrompt(frame, [(float(m[1]), float(m[2]))], [1])


def parse_box(spec: str) -> ObjectPrompt:
    """'X0,Y0,X1,Y1[@FRAME]' -> a box-prompted object."""
    body, frame = _split_frame(spec)
    m = re.fullmatch(rf"\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*", body)
    if not m:
        raise ValueError(f"a box is X0,Y0,X1,Y1 or X0,Y0,X1,Y1@FRAME (pixels), got {spec!r}")
    return ObjectPrompt(frame, box=check_box([float(m[i]) for i in range(1, 5)]))


def parse_find(spec: str) -> ObjectPrompt:
    """'PHRASE[@FRAME]' -> objects the VLM finds for the phrase on that frame."""
    body, frame = _split_frame(spec) if re.search(r"@\d+$", spec) else (spec, 0)
    if not body.strip():
        raise ValueError("--find needs a phrase, e.g. --find 'the red cup'")
    return ObjectPrompt(frame, find=body.strip())


PROMPT_KEYS = frozenset({"frame", "points", "labels", "box", "find"})


def _object_prompt(item: Any) -> ObjectPrompt:
    """One entry of a prompts file as an ObjectPrompt; ValueError saying what is wrong with it."""
    if not isinstance(item, dict):
        raise ValueError("a prompt must be a JSON object")
    unknown = sorted(set(item) - PROMPT_KEYS)
    if unknown:
        raise ValueError(
            f"unknown {'key' if len(unknown) == 1 else 'keys'} {unknown}; a prompt has {sorted(PROMPT_KEYS)}"
        )
    raw = item.get("points") or []
    if not (isinstance(raw, list) and all(isinstance(p, list) and len(p) == 2 for p in raw)):
        raise ValueError('"points" is a list of [x, y] pairs, e.g. [[320, 240]]')
    points = [(float(x), float(y)) for x, y in raw]
    labels = list(item.get("labels", [1] * len(points)))  # not int(): it read 1.9, true as 1
    box = check_box([float(v) for v in item["box"]]) if item.get("box") is not None else None
    if len(labels) != len(points):
        raise ValueError(f'{len(points)} "points" but {len(labels)} "labels"')
    if any(type(v) is not int or v not in (0, 1) for v in labels):  # 2, 3: SAM2's box corners
        raise ValueError('"labels" are 1 (a positive click) or 0 (a negative one), JSON integers')
    if points and not starts_an_object(labels, box):  # every mode's rule
        raise ValueError(f"{NEGATIVE_FIRST} (here: a click labelled 1 or a box starts one)")
    find = item.get("find")
    if find is not None and not (isinstance(find, str) and find.strip()):
        raise ValueError('"find" is a phrase (a non-empty string)')
    if not (points or box or find):
        raise ValueError('nothing to track: give "points", "box" or "find"')
    frame = item.get("frame", 0)
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise ValueError(f'"frame" is a frame number (0 or more), got {frame!r}')
    return ObjectPrompt(frame, points, labels, box, find.strip() if find else None)  # type: ignore[arg-type]


def load_prompts_file(path: Path) -> dict[str, list[ObjectPrompt]]:
    """Per-clip prompts from JSON (see the module docstring); '*' applies to every clip.

    ValueError naming the file, the clip and the entry when one is not a prompt.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the prompts file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"the prompts file {path} must map clip names to lists of prompts")
    out: dict[str, list[ObjectPrompt]] = {}
    for name, items in doc.items():
        if not isinstance(items, list):
            raise ValueError(f"{path}: the prompts for {name!r} must be a list of objects")
        prompts = []
        for n, item in enumerate(items):
            try:
                prompts.append(_object_prompt(item))
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(
                    f"{path}: prompt {n} of {name!r} ({json.dumps(item)[:80]}): {exc}"
                ) from None
        out[name] = prompts
    return out


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
    """Track every clip with the service's clip job; one clip at a time, objects one after another."""

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

    async def run(self, clips: list[Path]) -> list[ClipOutcome]:
        check_clip_names(clips)
        outcomes = []
        for clip in clips:
            try:
                outcome = await self.track(clip)
            except Exception as exc:  # one bad clip never stops the batch
                outcome = ClipOutcome(clip, "failed", failure_detail(exc))
            outcomes.append(outcome)
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

        done_before = 0

        def on_progress(job: TrackJob) -> None:
            bar.n = done_before + job.progress.done
            bar.refresh()
            if self.on_frames is not None:
                self.on_frames(clip, bar.n, bar.total)

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
            )
            for obj in objects
        ]
        # The bar counts the frames of every object's passes from the start, so it only grows.
        total = sum(job.progress.total for job in jobs)
        bar = tqdm(total=total, desc=clip.name, unit="frame", disable=not self.progress)
        try:
            for job in jobs:
                await job.run()
                if job.state != "done":
                    return ClipOutcome(
                        clip, "failed", f"object {job.obj_id}: {job.error or job.state}"
                    )
                done_before += job.progress.total
        finally:
            bar.close()

        await write_results(dest, clip, info, objects, record, video=self.video)
        return ClipOutcome(clip, "done", f"{dest}{replaced_note(earlier)}", len(objects))


def _read_frame(reader_cls: Any, clip: Path, info: Any, index: int) -> Any:
    with reader_cls(clip, info) as reader:
        return reader.frame(index)
