"""Benchmark: our clip job (StreamTracker both ways, decoding as it goes) vs sam2's official predictor on the same clip, plus image-mode click latency.

Each measured side runs in its own subprocess so peak RSS (getrusage ru_maxrss) is its own:
  ours      streamer.clip.job.TrackJob on the MP4: forward from the click frame, then backward
  official  SAM2VideoPredictor.init_state(JPEG folder) + add_new_points_or_box on the click frame
            + propagate_in_video forward from it + propagate_in_video(reverse=True)
Both use SAM2.1 tiny with the same seeded random weights at the same image size, on the CPU.
Image mode: ImageSegmenter.set_image (encode) vs segment (decoder-only click), medians.

  python benchmarks/clip.py                      # 1,000 frames 640x360, image size 256
  python benchmarks/clip.py --frames 200 --json out.json
  python benchmarks/clip.py --frames 200 --objects 3   # 3 objects: all at once vs one after another

Prints a table and writes JSON. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_figures(frames: int, wall: float, baseline: float) -> dict[str, Any]:
    """One worker's row: frames tracked, wall time, rate, and memory at its peak and before."""
    return {
        "frames": frames,
        "wall_s": wall,
        "fps": frames / wall,
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline,
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load(image_size: int) -> Any:
    from workers.vision import load_sam2

    device = os.environ.get("FMU_BENCH_DEVICE", "cpu")  # the driver's --device
    return load_sam2("tiny", weights="random", device=device, image_size=image_size, seed=0)


def click_point(frame: int, width: int, height: int) -> tuple[float, float]:
    side = max(8, min(width, height) // 4)
    x0 = int((width - side) * (frame % 200) / 199)
    return x0 + side / 2, (height - side) // 2 + side / 2


def object_points(frame: int, width: int, height: int, objects: int) -> list[tuple[float, float]]:
    """One click per object on `frame`: the moving square, then points along the top band."""
    top = [(width * (k + 1) / objects, height * 0.15) for k in range(objects - 1)]
    return [click_point(frame, width, height), *top]


# -- workers (run in subprocesses) -----------------------------------------------------------------


def worker_ours(
    clip: Path,
    anchor: int,
    image_size: int,
    objects: int = 1,
    together: bool = True,
    stagger: int = 0,
    catch_up: float | None = None,
) -> dict[str, Any]:
    """Each object's clip job, as the service and `fmu-live track` run them: all at once,
    sharing the frames' encodings (together), or one after another, each encoding every frame
    (what `fmu-live track` did before encodings were shared). With `stagger`, each job after the
    first starts once the one before has stepped that many frames (a person's next click), and
    `catch_up` is SharedEncodings' (0: a job waits only for one at most 8 frames behind)."""
    import functools
    from concurrent.futures import ThreadPoolExecutor

    from streamer.clip.encodings import SharedEncodings
    from streamer.clip.job import FramePrompt, TrackJob
    from streamer.clip.limits import ClipLimits
    from streamer.clip.video_io import probe

    # as the service does: the model is loaded on the one thread that runs every SAM2 call
    # (streamer.services.Services.run_vision says why)
    pool = ThreadPoolExecutor(1, thread_name_prefix="sam2")
    model = pool.submit(load, image_size).result()
    info = probe(clip, ClipLimits(3600, 3840, 2160))
    baseline = current_rss_mb()

    async def run_vision(fn: Any, *a: Any, **k: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(fn, *a, **k)
        )

    shared = None
    if together:
        shared = SharedEncodings() if catch_up is None else SharedEncodings(catch_up=catch_up)
    jobs = [
        TrackJob(
            job_id=f"bench{n}",
            obj_id=n + 1,
            path=clip,
            info=info,
            prompts={anchor: FramePrompt([point], [1])},
            model=model,
            run_vision=run_vision,
            results={},
            encodings=shared,
        )
        for n, point in enumerate(object_points(anchor, info.width, info.height, objects))
    ]

    ended: list[float] = []

    async def run_one(n: int) -> None:
        if stagger and n:
            while jobs[n - 1].progress.done < stagger:
                await asyncio.sleep(0.005)
        await jobs[n].run()
        ended.append(time.perf_counter() - t0)

    async def run() -> None:
        if together:
            await asyncio.gather(*map(run_one, range(len(jobs))))
        else:
            for n in range(len(jobs)):
                await run_one(n)

    t0 = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - t0
    assert all(job.state == "done" for job in jobs), [job.error for job in jobs]
    figures = run_figures(len(jobs[0].results), wall, baseline)
    figures["first_done_s"] = min(ended)
    if shared is not None:  # this process's /metrics counter: only these jobs moved it
        from streamer.metrics import REGISTRY

        for source in ("encoded", "shared"):
            figures[source] = (
                REGISTRY.get_sample_value("fmu_clip_frames_encoded_total", {"source": source})
                or 0.0  # none counted yet: no sample
            )
    return figures


def worker_official(
    frames_dir: Path,
    anchor: int,
    image_size: int,
    width: int,
    height: int,
    propagate: bool = True,
    objects: int = 1,
) -> dict[str, Any]:
    import torch

    model = load(image_size)
    baseline = current_rss_mb()
    seen: set[int] = set()
    t0 = time.perf_counter()
    with torch.inference_mode():
        state = model.init_state(video_path=str(frames_dir))
        for n, (x, y) in enumerate(object_points(anchor, width, height, objects)):
            model.add_new_points_or_box(
                state, frame_idx=anchor, obj_id=n + 1, points=[[x, y]], labels=[1]
            )
        if not propagate:
            # Only what init_state holds (every frame at model resolution): a lower bound on the
            # official predictor's peak, for clip lengths where propagating takes too long here.
            return {
                "frames": 0,
                "wall_s": time.perf_counter() - t0,
                "fps": None,
                "peak_rss_mb": peak_rss_mb(),
                "baseline_rss_mb": baseline,
                "init_only": True,
            }
        for idx, _, masks in model.propagate_in_video(state, start_frame_idx=anchor):
            (masks > 0).cpu().numpy()  # what a caller does with each frame's masks
            seen.add(idx)
        for idx, _, masks in model.propagate_in_video(state, start_frame_idx=anchor, reverse=True):
            (masks > 0).cpu().numpy()
            seen.add(idx)
    wall = time.perf_counter() - t0
    return run_figures(len(seen), wall, baseline)


def worker_image(image_size: int, width: int, height: int, clicks: int) -> dict[str, Any]:
    import numpy as np

    from tests.test_clip_media import square_frame
    from workers.vision import ImageSegmenter

    model = load(image_size)
    seg = ImageSegmenter(model)
    image = square_frame(100, width, height)
    seg.set_image(image)  # warm-up
    encodes = []
    for _ in range(3):
        t0 = time.perf_counter()
        seg.set_image(image)
        encodes.append(time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    seg.segment(points=[(width / 2, height / 2)], labels=[1])  # warm-up
    decodes = []
    for _ in range(clicks):
        p = (float(rng.uniform(0, width - 1)), float(rng.uniform(0, height - 1)))
        t0 = time.perf_counter()
        seg.segment(points=[p], labels=[1])
        decodes.append(time.perf_counter() - t0)
    return {
        "encode_ms": 1000 * statistics.median(encodes),
        "click_ms": 1000 * statistics.median(decodes),
        "clicks": clicks,
    }


# -- driver ----------------------------------------------------------------------------------------


THREADS = 1
DEVICE = "cpu"


def run_worker(args: list[str]) -> dict[str, Any]:
    # OMP_NUM_THREADS before torch is imported: on a shared 2-core box, 2 intra-op threads
    # oversubscribe the CPU and a step can take 10x longer (see benchmarks/RESULTS.md).
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(THREADS),
        "MKL_NUM_THREADS": str(THREADS),
        "FMU_BENCH_DEVICE": DEVICE,
    }
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_jpegs(clip: Path, dest: Path) -> None:
    """The official predictor reads a folder of <index>.jpg frames."""
    from PIL import Image

    from streamer.clip.limits import ClipLimits
    from streamer.clip.video_io import VideoReader, probe

    info = probe(clip, ClipLimits(3600, 3840, 2160))
    dest.mkdir(parents=True, exist_ok=True)
    with VideoReader(clip, info) as r:
        for i, rgb in r.frames(0):
            Image.fromarray(rgb).save(dest / f"{i:05d}.jpg", quality=95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument(
        "--objects",
        type=int,
        default=1,
        help="objects clicked on the click frame; above 1, ours also runs its jobs one after "
        "another (no shared encodings) beside all at once",
    )
    ap.add_argument(
        "--stagger",
        type=int,
        default=0,
        help="with --objects 2 or more: each object's job starts once the one before has "
        "stepped this many frames (a person's next click); ours then also runs with a job "
        "waiting only for one at most 8 frames behind (the rule before 2026-12-05's catch-up)",
    )
    ap.add_argument(
        "--device",
        default="cpu",
        help="where SAM2 runs (cuda: ours only, with --skip-official; ours against the official "
        "predictor on a GPU, both in bf16, is benchmarks/tracking.py)",
    )
    ap.add_argument("--json", "--out", type=Path, default=ROOT / "benchmarks" / "out" / "clip.json")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads in each measured process"
    )
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument(
        "--official-init-only",
        action="store_true",
        help="official side: init_state + click only (its frame store), no propagation: a lower "
        "bound on its peak RSS where propagating the whole clip takes too long",
    )
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        kind, *rest = a.worker
        if kind == "ours":
            res = worker_ours(
                Path(rest[0]),
                int(rest[1]),
                int(rest[2]),
                int(rest[3]),
                rest[4] == "together",
                int(rest[5]),
                None if rest[6] == "default" else float(rest[6]),
            )
        elif kind in ("official", "official_init"):
            res = worker_official(
                Path(rest[0]),
                int(rest[1]),
                int(rest[2]),
                int(rest[3]),
                int(rest[4]),
                propagate=kind == "official",
                objects=int(rest[5]),
            )
        else:
            res = worker_image(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]))
        print(json.dumps(res))
        return

    from tests.test_clip_media import write_clip

    if a.device != "cpu" and not a.skip_official:
        ap.error("--device other than cpu needs --skip-official (benchmarks/tracking.py compares)")
    global THREADS, DEVICE
    THREADS, DEVICE = a.threads, a.device

    anchor = a.frames // 2  # click in the middle: half forward, half backward
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(
            Path(tmp) / "bench.mp4", frames=a.frames, width=a.width, height=a.height, gop=50
        )
        ours_args = ["ours", str(clip), str(anchor), str(a.image_size), str(a.objects)]
        stagger = str(a.stagger if a.objects > 1 else 0)
        ours = run_worker([*ours_args, "together", stagger, "default"])
        # the reference for sharing: the same jobs one after another, each encoding every frame
        ours_apart = run_worker([*ours_args, "apart", "0", "default"]) if a.objects > 1 else None
        # staggered: the same jobs, a job ahead waiting only for one at most 8 frames behind
        ours_paced = (
            run_worker([*ours_args, "together", stagger, "0"])
            if a.objects > 1 and a.stagger
            else None
        )
        official = None
        if not a.skip_official:
            frames_dir = Path(tmp) / "jpg"
            write_jpegs(clip, frames_dir)
            official = run_worker(
                [
                    "official_init" if a.official_init_only else "official",
                    str(frames_dir),
                    str(anchor),
                    str(a.image_size),
                    str(a.width),
                    str(a.height),
                    str(a.objects),
                ]
            )
    image = run_worker(["image", str(a.image_size), str(a.width), str(a.height), str(a.clicks)])

    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_start": os.getloadavg(),
        },
        "config": {
            "threads": a.threads,
            "frames": a.frames,
            "width": a.width,
            "height": a.height,
            "image_size": a.image_size,
            "model": "sam2.1 tiny, random weights (seed 0)",
            "device": a.device,
            "click_frame": anchor,
            "objects": a.objects,
            "stagger": a.stagger,
        },
        "ours": ours,
        "ours_one_after_another": ours_apart,
        "ours_pace_only": ours_paced,
        "official": official,
        "image": image,
    }
    if official:
        report["ratios"] = {
            "fps_ours_over_official": ours["fps"] / official["fps"] if official["fps"] else None,
            "peak_rss_ours_over_official": ours["peak_rss_mb"] / official["peak_rss_mb"],
            "rss_growth_ours_over_official": (ours["peak_rss_mb"] - ours["baseline_rss_mb"])
            / max(1e-9, official["peak_rss_mb"] - official["baseline_rss_mb"]),
        }
    if ours_apart:
        report.setdefault("ratios", {})["fps_together_over_one_after_another"] = (
            ours["fps"] / ours_apart["fps"]
        )
    if ours_paced:
        report["ratios"]["fps_catch_up_over_pace_only"] = ours["fps"] / ours_paced["fps"]
        report["ratios"]["first_done_catch_up_over_pace_only"] = (
            ours["first_done_s"] / ours_paced["first_done_s"]
        )
    report["image"]["click_over_encode"] = image["click_ms"] / image["encode_ms"]
    where = f"CPU ({os.cpu_count()} cores)"
    if a.device != "cpu":
        import torch

        where = f"{a.device} ({torch.cuda.get_device_name(torch.device(a.device))})"
    report["machine"]["device"] = where
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    print(
        f"clip: {a.frames} frames {a.width}x{a.height}, {a.objects} object(s) clicked on frame "
        f"{anchor}, SAM2.1 tiny random, image size {a.image_size}, {where}"
    )
    print("| | frames | wall s | fps | first object done s | peak RSS MiB | RSS above model MiB |")
    print("|---|---|---|---|---|---|---|")
    together = "all at once" if not a.stagger else f"each started {a.stagger} frames after"
    rows = (
        (f"ours (clip jobs, {together})" if ours_apart else "ours (clip job)", ours),
        (f"ours (clip jobs, {together}, pace 8 only)", ours_paced),
        ("ours (clip jobs, one after another)", ours_apart),
        ("official predictor", official),
    )
    for name, r in rows:
        if r:
            fps = "init only" if r["fps"] is None else f"{r['fps']:.2f}"
            first = f"{r['first_done_s']:.1f}" if "first_done_s" in r else ""
            print(
                f"| {name} | {r['frames']} | {r['wall_s']:.1f} | {fps} | {first} | "
                f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} |"
            )
    if official:
        q = report["ratios"]
        fr = q["fps_ours_over_official"]
        print(
            f"| ratio ours/official | | | {'n/a' if fr is None else f'{fr:.2f}'} | | "
            f"{q['peak_rss_ours_over_official']:.2f} | {q['rss_growth_ours_over_official']:.2f} |"
        )
    if ours_apart:
        print(
            f"| ratio {together} / one after another | | | "
            f"{report['ratios']['fps_together_over_one_after_another']:.2f} | | | |"
        )
    if ours_paced:
        q = report["ratios"]
        print(
            f"| ratio catch-up / pace 8 only | | | {q['fps_catch_up_over_pace_only']:.2f} | "
            f"{q['first_done_catch_up_over_pace_only']:.2f} | | |"
        )
    for name, r in (("", ours), (", pace 8 only", ours_paced)):
        if r and "encoded" in r:
            print(f"ours{name}: {r['encoded']:.0f} frames encoded, {r['shared']:.0f} shared")
    print(
        f"image mode: encode {image['encode_ms']:.1f} ms, click (decoder only) {image['click_ms']:.1f} ms, "
        f"ratio {image['click_over_encode']:.3f} (target <= 0.10)"
    )


if __name__ == "__main__":
    main()
