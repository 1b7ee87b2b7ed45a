"""Benchmark: `fmu-live track` locally vs on Ray (2 single-CPU actors) over the same archive.

  python benchmarks/ray_track.py                    # 20 clips of 12 frames at 96x64, SAM2 128 px
  python benchmarks/ray_track.py --clips 40 --json out.json

Both sides run the same code (streamer.clip.batch.BatchTracker) with SAM2.1 tiny, seeded random
weights, one torch thread, on the CPU. Local: one process, clips one after another. Ray: a local
Ray (num_cpus=2) with two ClipTracker actors taking clips from one queue. Start-up (SAM2 load;
Ray start and the actors' SAM2 loads) is timed apart from the archive itself, which starts once
SAM2 is loaded (local) or both actors are ready (Ray). Ray overhead per
clip = (Ray wall x actors - local wall) / clips, in actor-seconds: what each clip costs beyond the
local work (task dispatch, progress polls, results through the object store, and two actors
sharing two loaded cores). Prints a table and writes JSON. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_archive(folder: Path, clips: int, frames: int) -> list[Path]:
    from tests.test_clip_media import write_clip

    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_clip(folder / f"clip{i:03d}.mp4", frames=frames, width=96, height=64)
        for i in range(clips)
    ]


def local_run(settings: Any, clips: list[Path], out: Path, prompts: list[Any]) -> dict[str, Any]:
    from streamer.clip.batch import BatchTracker
    from streamer.clip.limits import ClipLimits
    from streamer.services import Services, load_vision_model

    t0 = time.perf_counter()
    services = Services(settings)

    async def run() -> tuple[float, list[Any]]:
        services.vision_model = await services.run_vision(load_vision_model, settings)
        t1 = time.perf_counter()
        tracker = BatchTracker(
            services,
            out=out,
            limits=ClipLimits.from_settings(settings),
            prompts=prompts,
            video=False,
            progress=False,
        )
        outcomes = await tracker.run(clips)
        await services.aclose()
        return t1, outcomes

    t1, outcomes = asyncio.run(run())
    t2 = time.perf_counter()
    assert all(o.state == "done" for o in outcomes), outcomes
    return {"startup_s": t1 - t0, "archive_s": t2 - t1}


def ray_run(settings: Any, clips: list[Path], out: Path, prompts: list[Any]) -> dict[str, Any]:
    import ray

    from streamer.clip import cluster

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=cluster.runtime_env())
    t1 = time.perf_counter()
    timings: dict[str, float] = {}
    outcomes = cluster.track_on_ray(
        settings, clips, out=out, prompts=prompts, video=False, progress=False,
        plan=cluster.RayPlan(actors=2), timings=timings,
    )  # fmt: skip
    t2 = time.perf_counter()
    round_trip = dispatch_round_trip_ms(clips[0])
    ray.shutdown()
    assert all(o.state == "done" for o in outcomes), outcomes
    # archive_s: the clips themselves, once both actors hold SAM2 (as local's archive_s).
    return {
        "ray_init_s": t1 - t0,
        "actors_ready_s": timings["actors_ready_s"],
        "archive_s": timings["clips_s"],
        "total_s": t2 - t0,
        "dispatch_round_trip_ms": round_trip,
    }


def dispatch_round_trip_ms(clip: Path, calls: int = 200) -> float:
    """Median ms of one actor call that returns a clip's outcome: Ray's own cost per clip."""
    import statistics

    import ray

    from streamer.clip.batch import ClipOutcome

    @ray.remote(num_cpus=0)
    class Echo:
        def track(self, path: str) -> ClipOutcome:
            return ClipOutcome(Path(path), "done", "x" * 80, 1)

    echo = Echo.remote()  # type: ignore[attr-defined]
    ray.get(echo.track.remote(str(clip)))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        ray.get(echo.track.remote(str(clip)))
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from streamer.clip.track_prompts import parse_point
    from streamer.settings import Settings

    settings = Settings(
        weights="random", sam2_image_size=args.image_size, device="cpu", torch_threads=1
    )
    prompts = [parse_point("12,32")]
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_archive(Path(tmp) / "clips", args.clips, args.frames)
        local = local_run(settings, clips, Path(tmp) / "local", prompts)
        remote = ray_run(settings, clips, Path(tmp) / "ray", prompts)
    n = args.clips
    overhead = (remote["archive_s"] * 2 - local["archive_s"]) / n
    rows = [
        ("local, 1 process", local["archive_s"], 60 * n / local["archive_s"]),
        ("Ray, 2 x 1-CPU actors", remote["archive_s"], 60 * n / remote["archive_s"]),
    ]
    print(
        f"{n} clips x {args.frames} frames, 96x64, SAM2.1 tiny random @ {args.image_size} px, CPU"
    )
    print(f"{'run':<24}{'archive s':>10}{'clips/min':>11}")
    for name, wall, rate in rows:
        print(f"{name:<24}{wall:>10.1f}{rate:>11.1f}")
    print(
        f"Ray overhead per clip: {overhead:.2f} actor-s (local {local['archive_s'] / n:.2f} s/clip)"
    )
    print(
        "Ray's own cost per clip (one actor call returning an outcome, median): "
        f"{remote['dispatch_round_trip_ms']:.2f} ms"
    )
    print(
        f"start-up: local SAM2 load {local['startup_s']:.1f} s; ray.init {remote['ray_init_s']:.1f} s, "
        f"2 actors started with SAM2 {remote['actors_ready_s']:.1f} s"
    )
    result = {
        "clips": n, "frames": args.frames, "image_size": args.image_size, "local": local,
        "ray": remote, "ray_overhead_actor_s_per_clip": overhead,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
