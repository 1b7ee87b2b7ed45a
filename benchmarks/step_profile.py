"""Where one tracker step's time goes, part by part, and what a refinement click costs.

Made for a GPU, where the first lease showed our step losing to the official one (RESULTS.md, On a
GPU): each part timed alone on the same model (SAM2.1 tiny, seeded random weights), the GPU
waited for inside every timing:

- input: the frame made on the CPU (PIL, as on a CPU) and sent up, against resized on the device;
- encode: encode_image (what the tracker runs), our padding-aware trunk, and sam2's forward_image;
- step: StreamTracker.step with one object, median of --frames steps;
- refine: --refines refinement clicks in a row, each adding a click (so each a click count the
  decoder has not seen), on a fresh tracker; then the same clicks again on another (counts seen);

the last two under each scaled-dot-product-attention policy: torch's default (on a Hopper GPU it
picks cuDNN, which plans each new shape once per process) and cuDNN left out (flash, memory
efficient, math). --profile adds torch.profiler's top operators for 5 steps and 3 refinements.

Prints a table and writes JSON (benchmarks/out/step_profile.json). Not part of the test run.

    .venv/bin/python benchmarks/step_profile.py [--image-size 1024] [--device cuda] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import tracking as bench  # noqa: E402  (the shared helpers)
from tests.sam2_reference import synthetic_clip  # noqa: E402
from workers.vision import ImageSegmenter, StreamTracker, load_sam2  # noqa: E402
from workers.vision.encoder import encode_image, padding_aware_features  # noqa: E402
from workers.vision.inputs import video_frame_tensor  # noqa: E402
from workers.vision.precision import compute_mode  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
POLICIES: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "default": contextlib.nullcontext,
    "no-cudnn": lambda: sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    ),
}


def stats(ms: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": float(np.percentile(ms, 90)),
        "n": len(ms),
    }


def parts(model: Any, frame: np.ndarray, reps: int) -> dict[str, dict[str, float]]:
    device, size = model.device, model.image_size
    image = video_frame_tensor(frame, size, device)
    host_image = ImageSegmenter(model, on_device=False)
    device_image = ImageSegmenter(model, on_device=True)

    def encoded(encode: Callable[[Any, torch.Tensor], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with compute_mode(device, model.fmu_precision):
                return encode(model, image)

        return run

    def ms(fn: Callable[[], Any]) -> dict[str, float]:
        return stats(bench.timed(model, fn, reps, warm=3))

    return {
        "input on the CPU, sent up": ms(
            lambda: video_frame_tensor(frame, size, device, resize_on_device=False).to(device)
        ),
        "input resized on the device": ms(
            lambda: video_frame_tensor(frame, size, device, resize_on_device=True)
        ),
        # image mode's encode (image.py): sam2's transforms on the CPU, or the uint8 image sent up
        "image set_image, input on the CPU": ms(lambda: host_image.set_image(frame)),
        "image set_image, input on the device": ms(lambda: device_image.set_image(frame)),
        "encode_image": ms(encoded(encode_image)),
        "encode: padding-aware trunk": ms(encoded(padding_aware_features)),
        "encode: sam2 forward_image": ms(encoded(lambda m, x: m.forward_image(x))),
    }


def tracking(model: Any, clip: list[np.ndarray]) -> tuple[StreamTracker, int]:
    """A tracker that has followed one object for 15 frames, and the object's id."""
    tracker = StreamTracker(model)
    tracker.step(clip[0])
    obj = tracker.add_object(points=[bench.CLICKS[0]])
    for frame in clip[1:15]:
        tracker.step(frame)
    return tracker, obj


def under(model: Any, clip: list[np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    """Step and refinement times under the current attention policy."""
    tracker, _ = tracking(model, clip)
    frames = iter(range(10**9))
    step = lambda: tracker.step(clip[next(frames) % len(clip)])  # noqa: E731
    steps = bench.timed(model, step, args.frames, warm=3)
    rows = [(40.0 + 20 * i, 40.0 + 10 * i) for i in range(args.refines)]

    def refinements() -> list[float]:
        fresh, oid = tracking(model, clip)
        out = []
        for point in rows:  # each adds a click: a prompt one token longer each time
            start = time.perf_counter()
            fresh.refine(oid, points=[point], labels=[0])
            bench.finished(model)
            out.append((time.perf_counter() - start) * 1000)
        return out

    first, again = refinements(), refinements()
    return {"step": stats(steps), "refine_new_counts": first, "refine_seen_counts": again}


def profile(model: Any, clip: list[np.ndarray]) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    tracker, obj = tracking(model, clip)
    cuda = model.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    tables = []
    for name, work in (
        ("5 steps", lambda: [tracker.step(clip[i]) for i in range(5)]),
        (
            "3 refinements",
            lambda: [tracker.refine(obj, points=[(60.0, 60.0)], labels=[0]) for _ in range(3)],
        ),  # fmt: skip
    ):
        with torch_profile(activities=activities) as prof:
            work()
            bench.finished(model)
        averages = prof.key_averages()
        for key in ("self_cpu_time_total", *(("self_cuda_time_total",) if cuda else ())):
            table = averages.table(sort_by=key, row_limit=12, max_name_column_width=48)
            tables.append(f"\n{name}, by {key}:\n{table}")
    return "".join(tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=30, help="timed steps per policy")
    parser.add_argument("--refines", type=int, default=6, help="refinement clicks in a row")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per part")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables")
    parser.add_argument("--out", default=str(OUT / "step_profile.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # sam2's "no _C extension" per frame
    model = load_sam2(
        size="tiny", weights="random", device=args.device, image_size=args.image_size, seed=0
    )
    clip = synthetic_clip(30, bench.HEIGHT, bench.WIDTH)
    results: dict[str, Any] = {
        "machine": {
            "device": str(model.device),
            "gpu": torch.cuda.get_device_name() if model.device.type == "cuda" else None,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "precision": model.fmu_precision.name,
        },
        "args": vars(args),
        "parts": parts(model, clip[3], args.reps),
        "policies": {},
    }
    for name, policy in POLICIES.items():
        with policy():
            results["policies"][name] = under(model, clip, args)
    print_table(results)
    if args.profile:
        print(profile(model, clip))
    bench.write_json(args.out, results)


def print_table(r: dict[str, Any]) -> None:
    m, parts = r["machine"], r["parts"]
    print(
        f"{m['gpu'] or m['device']}, torch {m['torch']}, {m['precision']}, SAM2.1 tiny @ "
        f"{r['args']['image_size']} px, {bench.WIDTH}x{bench.HEIGHT} frames\n"
    )
    rows = [[k, f"{v['median_ms']:.2f}", f"{v['p90_ms']:.2f}"] for k, v in parts.items()]
    print(bench.markdown_table(["part", "median ms", "p90 ms"], rows))

    def ms(values: list[float]) -> str:
        return ", ".join(f"{v:.0f}" for v in values)

    rows = [
        [name, f"{p['step']['median_ms']:.1f} ({p['step']['p90_ms']:.1f})",
         ms(p["refine_new_counts"]), ms(p["refine_seen_counts"])]
        for name, p in r["policies"].items()
    ]  # fmt: skip
    header = ["attention", "step median (p90) ms", "refinements, new click counts ms"]
    print("\n" + bench.markdown_table([*header, "same counts again ms"], rows))


if __name__ == "__main__":
    main()
