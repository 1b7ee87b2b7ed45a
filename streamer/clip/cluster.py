"""`fmu-live track --ray`: the same clips, prompts and outputs as `track`, spread over a Ray cluster.

Only `--ray` imports this module (and so Ray). The work is the local run's, unchanged: each actor
holds one `BatchTracker` with its own SAM2 (loaded once, on the actor's vision thread, as the
service does) and tracks whole clips, one at a time. The driver keeps one queue of clips and one
progress bar; a free actor takes the next clip. When a worker dies mid-clip (killed, out of
memory, its node gone), the driver starts a new actor in its place and puts the clip back at the
front of the queue for whichever actor is free next, up to `retries` more times; a worker that
dies while loading SAM2 is started again a few times, then given up (cluster_dispatch.py). A clip
that fails on its own (unreadable, no prompts) is reported once, as in the local run.

Results go where every node can write and read them: a path on a shared filesystem, or any fsspec
URL (s3://, gs://, ...). A clip is done when OUT/<clip>/export.json exists (as the driver sees it);
the driver and the actor skip clips done with the same prompts and options (run.json, as in the
local run), so a rerun resumes. Clips are on a shared filesystem too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ray
from tqdm import tqdm

from streamer.clip.batch import (
    RAY_ROOM_WAIT_S,
    BatchTracker,
    ClipOutcome,
    check_clip_names,
    clip_prompts,
    failure_detail,
)
from streamer.clip.cluster_dispatch import ActorStartError, dispatch
from streamer.clip.track_output import (
    earlier_at,
    export_exists,
    is_url,
    keep_earlier,
    publish,
    replaced_note,
    run_record,
)
from streamer.clip.track_prompts import ObjectPrompt

log = logging.getLogger("fmu.track.ray")


SHARED = "clips and --out must be on a filesystem every node shares (or --out a URL: s3://...)"


def runtime_env() -> dict[str, Any]:
    """This driver's code (streamer/, workers/) shipped to every node, whatever is installed there."""
    import streamer
    import workers

    return {
        "py_modules": [str(Path(m.__file__).parent) for m in (streamer, workers)],
        "excludes": ["__pycache__"],
    }


def connect(address: str | None) -> None:
    """Join (or, with no address and no RAY_ADDRESS, start) a Ray cluster; ActorStartError at
    once when it cannot be reached (Ray retries for ever). RAY_ADDRESS stands for auto too.

    `--ray` alone is a Ray of its own: ray.init() with no address would also join the last
    cluster `ray start` recorded on this machine (/tmp/ray), even a stale one."""
    if ray.is_initialized():
        return
    if address in (None, "local"):
        address = os.environ.get("RAY_ADDRESS") or "local"
    target = (address == "auto" and os.environ.get("RAY_ADDRESS")) or address
    if target and target not in ("auto", "local"):
        _check_reachable(target)
    try:
        ray.init(
            address=address,
            runtime_env=runtime_env(),
            logging_level=logging.WARNING,
            log_to_driver=False,  # actors' own logs stay in the cluster's log folder
        )
    except ConnectionError as exc:  # auto: no cluster started on this machine
        raise ActorStartError(
            f"cannot join the Ray cluster {target}: {exc} Start one here with `ray start --head` "
            "(each other node: `ray start --address HEAD:6379`), or name one: --ray HOST:6379"
        ) from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """ActorStartError unless something listens at the address's host and port."""
    where = urlsplit(address if "://" in address else f"//{address}")
    if not (where.hostname and re.fullmatch(r".*:\d+", where.netloc)):
        return  # not HOST:PORT (RAY_ADDRESS may hold anything): ray.init says what is wrong
    host, port = where.hostname, int(where.netloc.rsplit(":", 1)[1])
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ActorStartError(
            f"no Ray cluster answers at {address} ({why}): start one there with `ray start "
            "--head`, or check the address (HOST:6379 is the head's GCS port, ray://HOST:10001 "
            "its Ray Client server) and that this machine may reach it"
        ) from None


class ClipTracker:
    """A Ray actor: one SAM2 (on its own vision thread) tracking whole clips, one at a time.

    Made in two steps, so the driver can tell an actor still waiting for room on the cluster
    (`placed` not answered) from one loading SAM2 (`load` not answered)."""

    def __init__(self, settings: Any, tracker: dict[str, Any]) -> None:
        device = actor_device(settings.device, ray.get_gpu_ids())
        if device != settings.device:
            settings = settings.model_copy(update={"device": device})
        self.settings, self.args = settings, tracker
        self.out: str = tracker["out"]
        self.tracker: BatchTracker | None = None
        self.loading: asyncio.Future[None] | None = None
        self.now: dict[str, Any] = {"clip": None, "done": 0, "total": 0}

    async def placed(self) -> int:
        return os.getpid()

    async def load(self) -> int:
        """SAM2 (and the VLM client) loaded; asked again (after ActorUnavailableError), the same
        load is awaited, never a second one."""
        if self.loading is None:
            self.loading = asyncio.ensure_future(self._load())
        await self.loading
        return os.getpid()

    async def _load(self) -> None:
        from streamer.clip.limits import ClipLimits
        from streamer.services import Services, build_reasoner, load_vision_model

        settings, tracker = self.settings, dict(self.args)
        reasoner = None
        if tracker.pop("needs_vlm"):
            reasoner, off = build_reasoner(settings)
            if reasoner is None:
                raise RuntimeError(off)
        self.services = Services(settings, reasoner=reasoner)
        # Loaded on the thread that steps it (see Services.run_vision): once per actor.
        self.services.vision_model = await asyncio.wrap_future(
            self.services._executor.submit(load_vision_model, settings)
        )
        tracker.pop("out")
        self.tracker = BatchTracker(
            self.services,
            out=Path(self.out),  # a URL's clips are staged in a temp folder instead
            limits=ClipLimits.from_settings(settings),
            progress=False,
            on_frames=self._on_frames,
            **tracker,
        )

    def _on_frames(self, clip: Path, done: int, total: int) -> None:
        self.now = {"clip": clip.name, "done": done, "total": total}

    async def progress(self) -> dict[str, Any]:
        """Which clip this actor is on and how far (called while `track` runs)."""
        return {"pid": os.getpid(), **self.now}

    async def track(self, clip: str) -> ClipOutcome:
        if self.tracker is None:
            raise RuntimeError("ClipTracker.track before its load")  # the driver awaits load
        path = Path(clip)
        self.now = {"clip": path.name, "done": 0, "total": 0}
        try:
            if not path.is_file():  # there on the driver (it listed it), not on this node
                where = ray.util.get_node_ip_address()
                return ClipOutcome(path, "failed", f"no such file on node {where}: {SHARED}")
            if not is_url(self.out):
                return await self.tracker.track(path)
            now = self.tracker.record_for(path)
            earlier = await asyncio.to_thread(earlier_at, self.out, path.name, now)
            kept = keep_earlier(earlier, has_prompts=bool(now["prompts"]), redo=self.tracker.redo)
            if kept is not None:
                return ClipOutcome(path, *kept)
            with tempfile.TemporaryDirectory(prefix="fmu-track-") as tmp:
                self.tracker.out = Path(tmp)
                outcome = await self.tracker.track(path)
                if outcome.state == "done":
                    await asyncio.to_thread(publish, Path(tmp) / path.name, self.out, path.name)
                    where = f"{self.out.rstrip('/')}/{path.name}"
                    outcome.detail = where + replaced_note(earlier)
                return outcome
        except Exception as exc:  # one bad clip never stops the batch, as in the local run
            return ClipOutcome(path, "failed", failure_detail(exc))
        finally:
            self.now = {"clip": None, "done": 0, "total": 0}


def actor_device(device: str, gpu_ids: list[Any]) -> str:
    """An actor's SAM2 device: Ray shows it only its own GPUs (CUDA_VISIBLE_DEVICES), from 0, so
    --device cuda:N may name one it cannot see; `cuda` is its own."""
    if gpu_ids and device.startswith("cuda:"):
        return "cuda"
    return device


@dataclass
class RayPlan:
    """How the archive is spread: actors, what each reserves, and how often a clip is rerun."""

    actors: int | None = None  # None: one per GPU in the cluster, else one per cpus_per_actor CPUs
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs and --device allows
    retries: int = 2  # reruns of a clip whose worker died
    # How long actors waiting for room on the cluster may keep a run in which none runs waiting
    # (another job holds the room, or the node that had it is gone), before they are given up.
    room_wait_s: float = RAY_ROOM_WAIT_S


def _actor_shape(plan: RayPlan, device: str) -> tuple[int, float, float]:
    resources = ray.cluster_resources()
    gpus = plan.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 and device != "cpu" else 0.0
    _check_fits(plan.cpus_per_actor, gpus)
    if plan.actors is not None:
        return plan.actors, plan.cpus_per_actor, gpus
    if gpus:
        count = int(resources.get("GPU", 0) // gpus)
    else:
        count = int(resources.get("CPU", 1) // plan.cpus_per_actor)
    return max(1, count), plan.cpus_per_actor, gpus


def _check_fits(cpus: float, gpus: float) -> None:
    """ActorStartError when no live node fits one actor (Ray would keep it pending for ever)."""
    nodes = _live_nodes()
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    raise ActorStartError(
        f"no node of the cluster can hold a tracker actor ({cpus:g} CPU, {gpus:g} GPU); its "
        f"nodes have: {_have(nodes)}. Lower --ray-cpus-per-actor, or add such a node"
    )


def _live_nodes() -> list[dict[str, float]]:
    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def _have(nodes: list[dict[str, float]]) -> str:
    have = "; ".join(f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in nodes)
    return have or "none alive"


def _no_room(cpus: float, gpus: float) -> str:
    """Why actors wait for room: what one needs against what the cluster has free now."""
    free, nodes = ray.available_resources(), _live_nodes()
    return (
        f"each needs {cpus:g} CPU, {gpus:g} GPU; free now: {free.get('CPU', 0):g} CPU, "
        f"{free.get('GPU', 0):g} GPU (its live nodes have: {_have(nodes)}). Another job holds "
        "the room or the node that had it is gone: free it, add a node, or lower --ray-actors"
    )


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
    redo: bool = False,
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
        given = clip_prompts(prompts, per_clip or {}, clip.name)
        now = run_record(given, settings, video=video, clip=clip)
        earlier = earlier_at(out, clip.name, now)
        kept = keep_earlier(earlier, has_prompts=bool(now["prompts"]), redo=redo)
        if kept is not None:
            outcomes[i] = ClipOutcome(clip, *kept)
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
        max_restarts=0,  # a dead worker's actor is replaced by `dispatch`, which counts deaths
        max_task_retries=0,
    )
    tracker_args = dict(
        out=out, prompts=prompts, per_clip=per_clip, video=video, needs_vlm=needs_vlm, redo=redo
    )
    actors: list[Any] = []

    def start() -> Any:
        actors.append(actor_cls.remote(settings, dict(tracker_args)))
        return actors[-1]

    try:
        # Clips start on the first actor ready; one with no room yet joins when Ray places it.
        count = min(count, len(queue))
        ready = dispatch(
            start, count, clips, queue, outcomes, plan.retries, bar, on_progress,
            room_wait_s=plan.room_wait_s, no_room=lambda: _no_room(cpus, gpus),
        )  # fmt: skip
        for i, o in outcomes.items():  # on a node's own disk (done, or skipped from a past run)
            if o.state != "failed" and not export_exists(out, clips[i].name):
                where = f"{out.rstrip('/')}/{clips[i].name}"
                why = f"tracked, but {where} is not there as this machine sees it: {SHARED}"
                outcomes[i] = ClipOutcome(clips[i], "failed", why, o.objects, o.attempts)
        if timings is not None:
            ready = ready or time.perf_counter()
            timings.update(actors_ready_s=ready - started, clips_s=time.perf_counter() - ready)
    finally:
        bar.close()
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
    return [outcomes[i] for i in range(len(clips))]
