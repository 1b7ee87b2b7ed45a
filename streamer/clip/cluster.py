"""`fmu-live track --ray`: the same clips, prompts and outputs as `track`, spread over a Ray cluster.

Only `--ray` imports this module (and so Ray). The work is the local run's, unchanged: each actor
holds one `BatchTracker` with its own SAM2 (loaded once, on the actor's vision thread, as the
service does) and tracks whole clips, one at a time. The driver keeps one queue of clips and one
progress bar; a free actor takes the next clip. When a worker dies mid-clip (killed, out of
memory, its node gone), Ray restarts the actor (`max_restarts`) and the driver puts the clip back at
the front of the queue for whichever actor is free next, up to `retries` more times; a clip that
fails on its own (unreadable, no prompts) is reported once, as in the local run.

Results go where every node can write and read them: a path on a shared filesystem, or any fsspec
URL (s3://, gs://, ...). A clip is done when OUT/<clip>/export.json exists; both the driver (before
queueing) and the actor (before tracking) skip done clips, so a rerun resumes. Clip inputs are
paths every node can read (a shared filesystem).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from tqdm import tqdm

from streamer.clip.batch import BatchTracker, ClipOutcome, ObjectPrompt, check_clip_names

log = logging.getLogger("fmu.track.ray")


class ActorStartError(RuntimeError):
    """The tracker actors could not start (SAM2 would not load, the VLM is not configured...)."""


def runtime_env() -> dict[str, Any]:
    """This driver's code (streamer/, workers/) shipped to every node, whatever is installed there."""
    import streamer
    import workers

    return {
        "py_modules": [str(Path(m.__file__).parent) for m in (streamer, workers)],
        "excludes": ["__pycache__"],
    }


def connect(address: str | None) -> None:
    """Join (or, with no address and no RAY_ADDRESS, start) a Ray cluster for this driver."""
    if ray.is_initialized():
        return
    ray.init(
        address=None if address in (None, "local") else address,
        runtime_env=runtime_env(),
        logging_level=logging.WARNING,
        log_to_driver=False,  # actors' own logs stay in the cluster's log folder
    )


def is_url(out: str | Path) -> bool:
    """An fsspec URL (file:// included), staged locally then copied; else a plain path."""
    return "://" in str(out)


def _fs(out: str) -> Any:
    import fsspec

    return fsspec.core.url_to_fs(out)


def export_exists(out: str | Path, clip_name: str) -> bool:
    """Whether OUT/<clip>/export.json is there: the clip is done."""
    if not is_url(out):
        return (Path(out) / clip_name / "export.json").is_file()
    fs, root = _fs(str(out))
    return bool(fs.exists(f"{root.rstrip('/')}/{clip_name}/export.json"))


def _publish(staged: Path, out: str, clip_name: str) -> None:
    """Copy a clip's staged results to the fsspec URL, export.json last (it marks the clip done)."""
    fs, root = _fs(out)
    dest = f"{root.rstrip('/')}/{clip_name}"
    fs.makedirs(dest, exist_ok=True)
    files = sorted(staged.iterdir(), key=lambda f: f.name == "export.json")
    for f in files:
        fs.put_file(str(f), f"{dest}/{f.name}")


class ClipTracker:
    """A Ray actor: one SAM2 (on its own vision thread) tracking whole clips, one at a time."""

    def __init__(self, settings: Any, tracker: dict[str, Any]) -> None:
        from streamer.clip.video_io import ClipLimits
        from streamer.services import Services, build_reasoner, load_vision_model

        reasoner = None
        if tracker.pop("needs_vlm"):
            reasoner, off = build_reasoner(settings)
            if reasoner is None:
                raise RuntimeError(off)
        self.services = Services(settings, reasoner=reasoner)
        # Loaded on the thread that steps it (see Services.run_vision): once per actor.
        self.services.vision_model = self.services._executor.submit(
            load_vision_model, settings
        ).result()
        self.out = tracker.pop("out")
        self.tracker = BatchTracker(
            self.services,
            out=Path(self.out),  # a URL's clips are staged in a temp folder instead
            limits=ClipLimits.from_settings(settings),
            progress=False,
            on_frames=self._on_frames,
            **tracker,
        )
        self.now: dict[str, Any] = {"clip": None, "done": 0, "total": 0}

    def _on_frames(self, clip: Path, done: int, total: int) -> None:
        self.now = {"clip": clip.name, "done": done, "total": total}

    async def ready(self) -> int:
        return os.getpid()

    async def progress(self) -> dict[str, Any]:
        """Which clip this actor is on and how far (called while `track` runs)."""
        return {"pid": os.getpid(), **self.now}

    async def track(self, clip: str) -> ClipOutcome:
        path = Path(clip)
        self.now = {"clip": path.name, "done": 0, "total": 0}
        try:
            if not is_url(self.out):
                return await self.tracker.track(path)
            if await asyncio.to_thread(export_exists, self.out, path.name):
                return ClipOutcome(path, "skipped", "already done")
            with tempfile.TemporaryDirectory(prefix="fmu-track-") as tmp:
                self.tracker.out = Path(tmp)
                outcome = await self.tracker.track(path)
                if outcome.state == "done":
                    await asyncio.to_thread(_publish, Path(tmp) / path.name, self.out, path.name)
                    outcome.detail = f"{self.out.rstrip('/')}/{path.name}"
                return outcome
        except Exception as exc:  # one bad clip never stops the batch, as in the local run
            return ClipOutcome(path, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            self.now = {"clip": None, "done": 0, "total": 0}


@dataclass
class RayPlan:
    """How the archive is spread: actors, what each reserves, and how often a clip is rerun."""

    actors: int | None = None  # None: one per GPU in the cluster, else one per cpus_per_actor CPUs
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs and --device allows
    retries: int = 2  # reruns of a clip whose worker died


def _actor_shape(plan: RayPlan, device: str) -> tuple[int, float, float]:
    resources = ray.cluster_resources()
    gpus = plan.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 and device != "cpu" else 0.0
    if plan.actors is not None:
        return plan.actors, plan.cpus_per_actor, gpus
    if gpus:
        count = int(resources.get("GPU", 0) // gpus)
    else:
        count = int(resources.get("CPU", 1) // plan.cpus_per_actor)
    return max(1, count), plan.cpus_per_actor, gpus


def track_on_ray(
    settings: Any,
    clips: list[Path],
    *,
    out: str | Path,
    prompts: list[ObjectPrompt],
    per_clip: dict[str, list[ObjectPrompt]] | None = None,
    video: bool = True,
    progress: bool = True,
    plan: RayPlan | None = None,
    needs_vlm: bool = False,
    on_progress: Callable[[list[dict[str, Any]]], None] | None = None,
    timings: dict[str, float] | None = None,
) -> list[ClipOutcome]:
    """Track every clip on the connected Ray cluster; the outcomes in the clips' order.

    `on_progress` gets each actor's `{"pid", "clip", "done", "total"}` about twice a second;
    `timings`, when given, gets `actors_ready_s` and `clips_s` (start-up apart from the work).
    """
    check_clip_names(clips)  # outputs are OUT/<clip name>/: two of one name would share one
    started = time.perf_counter()
    plan = plan or RayPlan()
    out = str(out)
    if not is_url(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    outcomes: dict[int, ClipOutcome] = {}
    queue: deque[tuple[int, int]] = deque()  # (clip index, attempt)
    for i, clip in enumerate(clips):
        if export_exists(out, clip.name):
            outcomes[i] = ClipOutcome(clip, "skipped", "already done")
        else:
            queue.append((i, 1))
    bar = tqdm(total=len(clips), initial=len(outcomes), unit="clip", disable=not progress)
    if not queue:
        bar.close()
        return [outcomes[i] for i in range(len(clips))]

    count, cpus, gpus = _actor_shape(plan, settings.device)
    actor_cls = ray.remote(ClipTracker).options(
        num_cpus=cpus,
        num_gpus=gpus,
        max_restarts=-1,  # a dead worker's actor comes back (its clip is requeued by us)
        max_task_retries=0,
    )
    tracker_args = {
        "out": out,
        "prompts": prompts,
        "per_clip": per_clip,
        "video": video,
        "needs_vlm": needs_vlm,
    }
    actors = [actor_cls.remote(settings, dict(tracker_args)) for _ in range(min(count, len(queue)))]
    try:
        try:
            ray.get([a.ready.remote() for a in actors])  # SAM2 loaded everywhere, or why not
        except RayActorError as exc:
            raise ActorStartError(f"the tracker actors could not start: {exc}") from None
        ready = time.perf_counter()
        _drive(actors, clips, queue, outcomes, plan.retries, bar, on_progress)
        if timings is not None:
            timings.update(actors_ready_s=ready - started, clips_s=time.perf_counter() - ready)
    finally:
        bar.close()
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
    return [outcomes[i] for i in range(len(clips))]


def _drive(
    actors: list[Any],
    clips: list[Path],
    queue: deque[tuple[int, int]],
    outcomes: dict[int, ClipOutcome],
    retries: int,
    bar: Any,
    on_progress: Callable[[list[dict[str, Any]]], None] | None,
) -> None:
    free = list(actors)
    running: dict[Any, tuple[Any, int, int]] = {}  # task ref -> (actor, clip index, attempt)
    asking: dict[Any, Any] = {}  # progress ref -> actor
    reviving: dict[Any, Any] = {}  # ready ref -> an actor Ray is restarting
    last: dict[Any, dict[str, Any]] = {}
    next_poll = 0.0
    shown = ""
    while queue or running:
        if not free and not running and not reviving:
            raise ActorStartError("every tracker actor is gone and none came back")
        while free and queue:
            actor = free.pop(0)
            i, attempt = queue.popleft()
            running[actor.track.remote(str(clips[i]))] = (actor, i, attempt)
        if time.monotonic() >= next_poll:
            busy = {a for a, _, _ in running.values()} - set(asking.values())
            asking.update({a.progress.remote(): a for a in busy})
            next_poll = time.monotonic() + 0.5
        ready, _ = ray.wait([*running, *asking, *reviving], num_returns=1, timeout=0.5)
        for ref in ready:
            if ref in asking:
                actor = asking.pop(ref)
                with contextlib.suppress(RayActorError, ActorUnavailableError):
                    last[actor] = ray.get(ref)
                continue
            if ref in reviving:
                actor = reviving.pop(ref)
                try:
                    ray.get(ref)
                    free.append(actor)  # back, with SAM2 loaded again
                except ActorUnavailableError:  # still restarting: ask again shortly
                    time.sleep(0.2)
                    reviving[actor.ready.remote()] = actor
                except RayActorError:
                    log.warning("a tracker actor is gone for good")
                continue
            actor, i, attempt = running.pop(ref)
            last.pop(actor, None)
            try:
                outcome = ray.get(ref)
                outcome.attempts = attempt
                free.append(actor)
            except (RayActorError, ActorUnavailableError) as exc:
                # The worker died under this clip: Ray restarts its actor (max_restarts), and
                # the clip goes back to the front of the queue for the next actor that is free.
                reviving[actor.ready.remote()] = actor
                why = str(exc).strip().splitlines()[0][:200]
                if attempt <= retries:
                    log.warning("the worker tracking %s died (%s); rerunning it", clips[i], why)
                    queue.appendleft((i, attempt + 1))
                    continue
                outcome = ClipOutcome(
                    clips[i], "failed", f"its worker died {attempt} times: {why}", attempts=attempt
                )
            outcomes[i] = outcome
            bar.update(1)
        frames = sum(p.get("done", 0) for p in last.values())
        status = f"{len(running)} running, {frames} frames into them"
        if status != shown:
            bar.set_postfix_str(status, refresh=True)
            shown = status
        if on_progress is not None and last:
            on_progress([p for a, p in last.items() if any(a is r[0] for r in running.values())])
