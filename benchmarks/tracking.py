"""Tracking benchmark: our StreamTracker beside sam2's official SAM2VideoPredictor, same weights.

Both run in one process on the same synthetic clip (moving shapes) and the same random weights,
interleaved frame by frame so machine load hits both alike. Measured:

- per-frame step time (median, p95) with 1 and 3 objects, and the ratio ours / official;
- process RSS at frames 200 / 1000 / 3000 with two objects (the official predictor until it is
  clearly growing, capped by --official-frames: it keeps every frame and every output);
- click latency (add_object on an encoded frame) as a % of a one-object step;
- image mode: decode-only segment() against set_image() (the encode).

Prints a table and writes JSON to benchmarks/out/tracking.json. Not part of the test run.

    .venv/bin/python benchmarks/tracking.py [--frames 3000] [--image-size 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sam2_reference import synthetic_clip, write_jpeg_folder  # noqa: E402
from workers.vision import ImageSegmenter, StreamTracker, load_sam2  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
CLIP_LEN = 60  # distinct frames, cycled for long runs
HEIGHT, WIDTH = 360, 640
CLICKS = [(190.0, 125.0), (410.0, 200.0), (150.0, 305.0)]  # disc, square, bar


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def memory_mb(device: str | torch.device) -> float:
    """What a predictor's state grows: host RSS on a CPU, allocated GPU memory on CUDA."""
    if torch.device(device).type == "cuda":
        gc.collect()
        return torch.cuda.memory_allocated() / 2**20
    return rss_mb()


def finished(model: Any) -> None:
    """Wait for the work queued on the model's GPU, so a timed step is the time a caller waits for
    its masks: the official predictor (and transformers') return masks still being computed on
    CUDA, and an image encode returns nothing at all. A no-op on a CPU."""
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(ms), "p95_ms": pct(ms, 95), "n": len(ms)}


def _precision(model: Any) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA, as StreamTracker uses, so both sides compute in the same precision.
    Entered around each call rather than across a yield: autocast state is per thread, and the
    two predictors' frames are interleaved."""
    if model.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def official_frames(
    model: Any,
    folder: Path,
    n_objects: int,
    n_frames: int,
    precision: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> Iterator[float]:
    """Per-frame seconds of init_state + clicks + propagate_in_video, one frame per next().
    `precision` (default: _precision) is entered around each call."""
    mode = precision or (lambda: _precision(model))
    state = model.init_state(str(folder))
    for obj_id, point in enumerate(CLICKS[:n_objects], start=1):
        with mode():
            model.add_new_points_or_box(
                state, 0, obj_id, points=np.array([point]), labels=np.array([1])
            )
    frames = model.propagate_in_video(state, max_frame_num_to_track=n_frames)
    while True:
        start = time.perf_counter()
        try:
            with mode():
                next(frames)
            finished(model)
        except StopIteration:
            return
        yield time.perf_counter() - start


def ours_frames(
    model: Any, clip: list[np.ndarray], n_objects: int, precision: str | None = None
) -> Iterator[float]:
    """Per-frame seconds of StreamTracker.step (frame 0 carries the clicks, as above)."""
    tracker = StreamTracker(model, precision=precision)
    for i in range(sys.maxsize):
        frame = clip[i % len(clip)]
        start = time.perf_counter()
        tracker.step(frame)
        if i == 0:
            for point in CLICKS[:n_objects]:
                tracker.add_object(points=[point])
        finished(model)
        yield time.perf_counter() - start


def step_times(model: Any, clip: list[np.ndarray], folder: Path, n_objects: int, n: int) -> dict:
    ours, official = (
        ours_frames(model, clip, n_objects),
        official_frames(model, folder, n_objects, n),
    )
    ours_ms, official_ms = [], []
    for _ in range(n):  # interleaved: a load spike lands on both
        ours_ms.append(next(ours) * 1000)
        official_ms.append(next(official) * 1000)
    warm = 10  # first frames: clicks, allocator warm-up, the official first-frame consolidation
    o, r = summary(ours_ms[warm:]), summary(official_ms[warm:])
    return {"ours": o, "official": r, "ratio_median": o["median_ms"] / r["median_ms"]}


def rss_ours(model: Any, clip: list[np.ndarray], frames: int) -> dict[int, float]:
    marks = {m for m in (200, 1000, 3000, frames) if m <= frames}
    out: dict[int, float] = {0: memory_mb(model.device)}
    for i, _ in enumerate(ours_frames(model, clip, 2), start=1):
        if i in marks:
            out[i] = memory_mb(model.device)
        if i >= frames:
            return out
    return out


def rss_official(model: Any, folder: Path, frames: int) -> dict[int, float]:
    marks = {m for m in (200, 500, 1000, 3000, frames) if m <= frames}
    out: dict[int, float] = {0: memory_mb(model.device)}
    for i, _ in enumerate(official_frames(model, folder, 2, frames), start=1):
        if i in marks:
            out[i] = memory_mb(model.device)
        if i >= frames:
            break
    return out


def timed(model: Any, fn: Callable[[], Any], reps: int, warm: int = 0) -> list[float]:
    """Milliseconds of `reps` calls after `warm` untimed ones, the GPU waited for in each."""
    for _ in range(warm):
        fn()
        finished(model)
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        finished(model)
        out.append((time.perf_counter() - start) * 1000)
    return out


def click_latency(model: Any, clip: list[np.ndarray]) -> dict[str, float]:
    tracker = StreamTracker(model)
    tracker.step(clip[0])
    tracker.add_object(points=[CLICKS[0]])
    steps = []
    for frame in clip[1:21]:
        tracker.step(frame)
        steps.append(tracker.last_step_ms)

    def click() -> None:
        tracker.remove(tracker.add_object(points=[CLICKS[1]]))

    clicks = timed(model, click, 20)
    obj = next(iter(tracker.objects))
    refines = timed(model, lambda: tracker.refine(obj, points=[(100.0, 100.0)], labels=[0]), 10)
    step = statistics.median(steps)
    return {
        "step_ms": step,
        "add_object_ms": statistics.median(clicks),
        "add_object_pct_of_step": 100 * statistics.median(clicks) / step,
        "refine_ms": statistics.median(refines),
        "refine_pct_of_step": 100 * statistics.median(refines) / step,
    }


def image_mode(model: Any, clip: list[np.ndarray]) -> dict[str, float]:
    seg = ImageSegmenter(model)
    encode = timed(model, lambda: seg.set_image(clip[5]), 10)
    decode = timed(model, lambda: seg.segment(points=[CLICKS[0]], labels=[1]), 30)
    return {
        "set_image_ms": statistics.median(encode),
        "segment_ms": statistics.median(decode),
        "segment_pct_of_encode": 100 * statistics.median(decode) / statistics.median(encode),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames for our RSS run")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--timing-frames", type=int, default=120, help="frames per step-time run")
    parser.add_argument(
        "--official-frames",
        type=int,
        default=1000,
        help="cap on the official RSS run (it loads the whole clip and keeps it)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image encoder and memory attention (shared by both predictors; "
        "on CUDA both also run under bf16 autocast)",
    )
    parser.add_argument("--out", default=str(OUT / "tracking.json"), help="JSON file to write")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # sam2's "no _C extension, skipping hole filling" per frame
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_sam2(
        size=args.size,
        weights="random",
        device=args.device,
        image_size=args.image_size,
        seed=0,
        compile=args.compile,
        # as _precision gives the official predictor: bf16 on CUDA, fp32 elsewhere
        precision="bf16" if torch.device(args.device).type == "cuda" else "fp32",
    )
    clip = synthetic_clip(CLIP_LEN, HEIGHT, WIDTH)
    results: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": psutil.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        },
        "args": vars(args),
        "frame": f"{WIDTH}x{HEIGHT}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        longest = max(args.timing_frames, args.official_frames)
        # the official predictor reads JPEGs; both read the same decoded pixels
        decoded = write_jpeg_folder([clip[i % CLIP_LEN] for i in range(longest)], folder)
        clip = decoded[:CLIP_LEN]
        results["steps"] = {
            str(n): step_times(model, clip, folder, n, args.timing_frames) for n in (1, 3)
        }
        results["click"] = click_latency(model, clip)
        results["image"] = image_mode(model, clip)
        results["rss_mb"] = {"ours": rss_ours(model, clip, args.frames)}
        results["rss_mb"]["official"] = rss_official(model, folder, args.official_frames)

    print_table(results)
    write_json(args.out, results)


def write_json(out: str, results: dict[str, Any]) -> None:
    """The run's figures as JSON at `out` (folders made), and where they went."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {path}")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (RESULTS.md's form): the first column left, the others right-aligned."""
    lines = [header, ["---"] + ["---:"] * (len(header) - 1), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"device {m['device']} ({m['cores']} cores, {m['torch_threads']} torch threads), "
        f"SAM2.1 {r['args']['size']} @ {r['args']['image_size']}, frames {r['frame']}\n"
    )
    header = ["objects", "ours median ms", "ours p95", "official median ms", "official p95"]
    steps = [
        [n, *(f"{s[who][k]:.1f}" for who in ("ours", "official") for k in ("median_ms", "p95_ms")),
         f"{s['ratio_median']:.2f}"]
        for n, s in r["steps"].items()
    ]  # fmt: skip
    print(markdown_table([*header, "ratio"], steps))
    rss = r["rss_mb"]
    marks = sorted({int(k) for who in rss.values() for k in who})
    what = "CUDA allocated" if "cuda" in str(r["machine"]["device"]) else "RSS"
    memory = [
        [who, *(f"{values[k]:.0f}" if k in values else "-" for k in marks)]
        for who, values in rss.items()
    ]
    print("\n" + markdown_table([f"{what} MiB, 2 objects", *(f"frame {k}" for k in marks)], memory))
    c, i = r["click"], r["image"]
    print(
        f"\nclick: add_object {c['add_object_ms']:.1f} ms = {c['add_object_pct_of_step']:.0f}% of "
        f"a one-object step ({c['step_ms']:.1f} ms); refine {c['refine_ms']:.1f} ms = "
        f"{c['refine_pct_of_step']:.0f}%"
    )
    print(
        f"image: segment {i['segment_ms']:.1f} ms = {i['segment_pct_of_encode']:.0f}% of "
        f"set_image {i['set_image_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
