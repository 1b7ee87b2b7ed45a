"""Streaming peers benchmark: our StreamTracker beside the trackers people would pick for streaming.

In one run, on the same frames (a synthetic 640x360 clip of moving shapes, decoded from JPEG),
for each image size and object count:

- ours: StreamTracker.step, fp32, and bf16 (torch autocast; on a CPU without AMX-BF16 or
  AVX512-BF16 it is emulated and far slower, so it gets only --bf16-frames frames there);
- official: sam2's SAM2VideoPredictor (init_state + propagate_in_video) on the same weights as
  ours; it loads the whole clip up front, outside its step time;
- hf-sam2: transformers' Sam2VideoModel streaming (init_video_session, one frame per call),
  SAM2.1 hiera-tiny architecture built from its config with its own seeded random init (not our
  weights: the timings depend on the architecture, not on the values);
- hf-edgetam: transformers' EdgeTamVideoModel streaming, EdgeTAM's architecture (timm RepViT-M1
  backbone) built from its config with seeded random init.

Every predictor gets the clicks on frame 0 and its step is timed frame by frame, interleaved
(one frame of each in turn), so machine load lands on all alike. A step is what a caller
waits for to get the frame's masks at the frame's size: ours and transformers' include the
resize and normalisation of the frame; the official predictor's frames are preprocessed in
init_state. Ratios ours / peer compare medians from the same run.

Memory: each predictor then runs alone in a fresh subprocess at the first size with one object
for --rss-frames frames, its RSS (on CUDA: allocated GPU memory) sampled every 100 frames
(growth per 100 frames, a least-squares slope from frame 100 on).

Prints tables and writes JSON (benchmarks/out/peers.json). Not part of the test run.

    .venv/bin/python benchmarks/peers.py [--sizes 256 512] [--objects 1 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tracking import (  # noqa: E402  (the same clicks and predictors)
    CLICKS,
    finished,
    memory_mb,
    official_frames,
    ours_frames,
    write_json,
)
from tests.sam2_reference import synthetic_clip, write_jpeg_folder  # noqa: E402
from workers.vision import load_sam2  # noqa: E402
from workers.vision.precision import cpu_bf16_feature  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
CLIP_LEN = 60  # distinct frames, cycled
HEIGHT, WIDTH = 360, 640
PREDICTORS = ("ours-fp32", "ours-bf16", "official", "hf-sam2", "hf-edgetam")
WARM = 3  # first timed frames dropped: clicks, allocator warm-up, first-frame consolidation

Stepper = Iterator[float]  # each next() runs one frame and returns its seconds


# -- predictors -------------------------------------------------------------------------------


def official(model: Any, folder: Path, n_objects: int, n_frames: int, bf16: bool) -> Stepper:
    def mode() -> contextlib.AbstractContextManager[Any]:
        # entered per call: autocast state is per thread and the predictors are interleaved
        if bf16:
            return torch.autocast(model.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    return official_frames(model, folder, n_objects, n_frames, mode)


def hf_model(kind: str, image_size: int, device: str, bf16: bool) -> tuple[Any, Any]:
    """(model, processor) of transformers' streaming video model, built from its config."""
    import transformers as tf

    side = image_size
    feature_sizes = [[side // 4, side // 4], [side // 8, side // 8], [side // 16, side // 16]]
    common = {
        "image_size": side,
        "prompt_encoder_config": {"image_size": side},
        "memory_attention_rope_feat_sizes": [side // 16, side // 16],
    }
    torch.manual_seed(0)
    if kind == "hf-sam2":
        # the default vision config is SAM2.1 hiera-tiny (38.9 M parameters, as sam2's)
        config = tf.Sam2VideoConfig(
            vision_config={"backbone_feature_sizes": feature_sizes}, **common
        )
        model = tf.Sam2VideoModel(config)
    else:
        # A default EdgeTamVisionConfig() fetches the timm backbone's config from the hub, and
        # transformers builds one to diff against whenever a config is printed: skip that diff.
        tf.EdgeTamVisionConfig.has_no_defaults_at_init = True
        backbone = tf.TimmWrapperConfig(
            architecture="repvit_m1",
            model_args={"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]},
        )
        vision = tf.EdgeTamVisionConfig(
            backbone_config=backbone, backbone_feature_sizes=feature_sizes
        )
        model = tf.EdgeTamVideoModel(tf.EdgeTamVideoConfig(vision_config=vision, **common))
    model = model.eval().to(device, dtype=torch.bfloat16 if bf16 else torch.float32)
    size = {"height": side, "width": side}
    processor = tf.Sam2VideoProcessor(
        image_processor=tf.Sam2ImageProcessor(size=size),
        video_processor=tf.Sam2VideoVideoProcessor(size=size),
    )
    return model, processor


def hf(model: Any, processor: Any, clip: list[np.ndarray], n_objects: int, bf16: bool) -> Stepper:
    """transformers' documented streaming loop: one frame per call, masks at the frame's size."""
    device = str(model.device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    session = processor.init_video_session(inference_device=device, dtype=dtype)
    clicks = CLICKS[:n_objects]
    for i in range(sys.maxsize):
        frame = clip[i % len(clip)]
        start = time.perf_counter()
        inputs = processor(images=frame, device=device, return_tensors="pt")
        if i == 0:
            processor.add_inputs_to_inference_session(
                session,
                frame_idx=0,
                obj_ids=list(range(1, n_objects + 1)),
                input_points=[[[list(p)] for p in clicks]],
                input_labels=[[[1] for _ in clicks]],
                original_size=inputs.original_sizes[0],
            )
        with torch.inference_mode():
            out = model(inference_session=session, frame=inputs.pixel_values[0].to(dtype))
            processor.post_process_masks(
                [out.pred_masks.float()], original_sizes=inputs.original_sizes, binarize=True
            )
        finished(model)
        yield time.perf_counter() - start


# -- runs -------------------------------------------------------------------------------------


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds[min(WARM, len(seconds) - 1) :]]  # a short run keeps its last
    return {
        "median_ms": statistics.median(ms),
        "p95_ms": float(np.percentile(ms, 95)),
        "n": len(ms),
    }


def build(
    name: str,
    n_objects: int,
    frames: int,
    sam2: Any,
    clip: list[np.ndarray],
    folder: Path,
    args: argparse.Namespace,
) -> Stepper:
    bf16_peers = args.peer_precision == "bf16"
    if name == "ours-fp32":
        return ours_frames(sam2, clip, n_objects, "fp32")
    if name == "ours-bf16":
        return ours_frames(sam2, clip, n_objects, "bf16")
    if name == "official":
        return official(sam2, folder, n_objects, frames, bf16_peers)
    model, processor = hf_model(name, sam2.image_size, args.device, bf16_peers)
    return hf(model, processor, clip, n_objects, bf16_peers)


def step_times(
    image_size: int, n_objects: int, frames: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Every predictor, interleaved frame by frame, on one size and object count."""
    sam2 = load_sam2(
        "tiny", weights="random", device=args.device, image_size=image_size, seed=0,
        compile=args.compile, precision="fp32",
    )  # fmt: skip
    clip = synthetic_clip(CLIP_LEN, HEIGHT, WIDTH)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        decoded = write_jpeg_folder([clip[i % CLIP_LEN] for i in range(frames + 1)], folder)
        clip = decoded[:CLIP_LEN]
        steppers = {
            name: build(name, n_objects, frames + 1, sam2, clip, folder, args)
            for name in args.predictors
        }
        limit = {name: frames for name in steppers}
        if "ours-bf16" in limit:
            limit["ours-bf16"] = min(frames, args.bf16_frames)
        times: dict[str, list[float]] = {name: [] for name in steppers}
        for i in range(frames):
            for name, stepper in steppers.items():
                if i < limit[name]:
                    times[name].append(next(stepper))
            if args.verbose and i % 10 == 0:
                print(f"  {image_size}px {n_objects} obj: frame {i}", file=sys.stderr, flush=True)
    return {name: summary(t) for name, t in times.items()}


def rss_run(name: str, frames: int, args: argparse.Namespace) -> dict[str, float]:
    """One predictor alone in this process: RSS every 100 frames (MiB)."""
    image_size = args.sizes[0]
    sam2 = load_sam2(
        "tiny", weights="random", device=args.device, image_size=image_size, seed=0,
        precision="fp32",
    )  # fmt: skip
    clip = synthetic_clip(CLIP_LEN, HEIGHT, WIDTH)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        count = frames + 1 if name == "official" else CLIP_LEN
        decoded = write_jpeg_folder([clip[i % CLIP_LEN] for i in range(count)], folder)
        clip = decoded[:CLIP_LEN]
        stepper = build(name, 1, frames + 1, sam2, clip, folder, args)
        out = {"0": memory_mb(args.device)}  # before the first frame (official: clip loaded)
        for i in range(1, frames + 1):
            next(stepper)
            if i % 100 == 0 or i == frames:
                out[str(i)] = memory_mb(args.device)
    return out


def rss_in_subprocess(name: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable, __file__, "--rss-only", name, "--rss-frames", str(args.rss_frames),
        "--sizes", str(args.sizes[0]), "--device", args.device, "--threads", str(args.threads),
        "--peer-precision", args.peer_precision,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_per_100(rss: dict[str, float]) -> float:
    """Least-squares slope of RSS over frames from frame 100 on, MiB per 100 frames."""
    points = [(int(k), v) for k, v in rss.items() if int(k) >= 100]
    if len(points) < 2:
        return float("nan")
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0] * 100)


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--frames", type=int, default=40, help="timed frames at the first size")
    parser.add_argument(
        "--large-frames", type=int, default=20, help="timed frames at the other sizes"
    )
    parser.add_argument(
        "--bf16-frames",
        type=int,
        default=0,
        help="cap on ours-bf16's timed frames (0: all on a CPU or GPU with native bf16, else 8)",
    )
    parser.add_argument("--rss-frames", type=int, default=300, help="0 skips the RSS runs")
    parser.add_argument("--predictors", nargs="+", default=list(PREDICTORS), choices=PREDICTORS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile ours and official")
    parser.add_argument(
        "--peer-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the official predictor (autocast) and transformers' models (weights and session)",
    )
    parser.add_argument("--rss-only", choices=PREDICTORS, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    parser.add_argument("--out", default=str(OUT / "peers.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # sam2's "no _C extension, skipping hole filling"
    if args.threads:
        torch.set_num_threads(args.threads)
    native = torch.device(args.device).type == "cuda" or cpu_bf16_feature() is not None
    if not args.bf16_frames:
        args.bf16_frames = sys.maxsize if native else 8

    if args.rss_only:
        print(json.dumps(rss_run(args.rss_only, args.rss_frames, args)))
        return

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load = psutil.getloadavg()
    results: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": psutil.cpu_count(),
            "native_bf16": cpu_bf16_feature() or ("cuda" if native else None),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        },
        "args": {k: v for k, v in vars(args).items() if k != "rss_only"},
        "started": started,
        "frame": f"{WIDTH}x{HEIGHT}",
        "steps": {},
    }
    for s, size in enumerate(args.sizes):
        frames = args.frames if s == 0 else args.large_frames
        for n in args.objects:
            results["steps"][f"{size}/{n}"] = step_times(size, n, frames, args)
            print_steps(results["steps"])
    if args.rss_frames:
        results["rss_mb"] = {}
        for name in args.predictors:
            if name == "ours-bf16" and not native:
                continue  # emulated bf16: too slow for hundreds of frames, and memory is ours-fp32's
            results["rss_mb"][name] = rss_in_subprocess(name, args)
    results["load_average"] = {"start": load, "end": psutil.getloadavg()}
    print_tables(results)
    write_json(args.out, results)


def print_steps(steps: dict[str, Any]) -> None:
    print(json.dumps(steps), file=sys.stderr, flush=True)


def _ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> str:
    return f"{a['median_ms'] / b['median_ms']:.2f}" if a and b else "-"


def print_tables(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"device {m['device']} ({m['cores']} cores, {m['torch_threads']} torch threads, native "
        f"bf16: {m['native_bf16']}), SAM2.1 tiny, frames {r['frame']}, load average "
        f"{r['load_average']['start'][0]:.1f} -> {r['load_average']['end'][0]:.1f}"
    )
    names = list(next(iter(r["steps"].values())))
    print("\n| size / objects | " + " | ".join(f"{n} median (p95) ms" for n in names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for key, s in r["steps"].items():
        cells = [f"{s[n]['median_ms']:.0f} ({s[n]['p95_ms']:.0f}), n={s[n]['n']}" for n in names]
        print(f"| {key} | " + " | ".join(cells) + " |")
    peers = [n for n in ("official", "hf-sam2", "hf-edgetam") if n in names]
    print(
        "\n| size / objects | "
        + " | ".join(f"ours fp32 / {p}" for p in peers)
        + " | ours bf16 / official | ours bf16 / ours fp32 |"
    )
    print("| --- |" + " ---: |" * (len(peers) + 2))
    for key, s in r["steps"].items():
        ours32, ours16 = s.get("ours-fp32"), s.get("ours-bf16")
        cells = [_ratio(ours32, s.get(p)) for p in peers]
        cells += [_ratio(ours16, s.get("official")), _ratio(ours16, ours32)]
        print(f"| {key} | " + " | ".join(cells) + " |")
    rss = r.get("rss_mb")
    if rss:
        marks = sorted({int(k) for v in rss.values() for k in v})
        shown = [k for k in marks if k in (0, 100, 200, marks[-1]) or k % 500 == 0]
        print(
            f"\n| {'CUDA allocated' if 'cuda' in m['device'] else 'RSS'} MiB, "
            f"{r['args']['sizes'][0]} px, 1 object | "
            + " | ".join(f"frame {k}" for k in shown)
            + " | growth / 100 frames |"
        )
        print("| --- |" + " ---: |" * (len(shown) + 1))
        for name, values in rss.items():
            cells = [f"{values[str(k)]:.0f}" if str(k) in values else "-" for k in shown]
            print(f"| {name} | " + " | ".join(cells) + f" | {growth_per_100(values):.1f} |")


if __name__ == "__main__":
    main()
