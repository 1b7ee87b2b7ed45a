"""Click to first description token: stateless (encode + decode + Spotlight + request) against
cached (decode + Spotlight + request: the service's path), against a real VLM server.

The seed (FMU-Agent) reports 565.55 ms stateless vs 215.76 ms cached on an RTX 3090 (0.38). This
measures the same two pipelines, step by step, in one run on the same frames and server:

    encode        SAM2 image encoder on the frame (stateless only; cached reuses the features)
    decode        prompt encoder + mask decoder for one click
    spotlight     Spotlight render + resize to the family's grid + JPEG + message building
    first_token   the request until the first streamed piece (thinking counts) arrives

Run (a vLLM server must be up; see README "Development" for the tiny CPU one):
    .venv/bin/python benchmarks/first_token.py --vlm-url http://127.0.0.1:8000/v1 [--runs 10]
        [--image-size 1024] [--frame 1280x720] [--device cpu] [--weights random]
Prints a table and writes benchmarks/out/first_token.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from workers.reasoning import OpenAICompatibleBackend, Reasoner  # noqa: E402
from workers.vision import ImageSegmenter, load_sam2  # noqa: E402

SEED_MS = {"stateless": 565.55, "cached": 215.76}


def _frame(width: int, height: int, seed: int) -> np.ndarray:
    # A smooth scene with a bright disc: camera-like for JPEG, and a click target.
    ys, xs = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    frame = np.stack(
        [xs * 200 // width, ys * 200 // height, (xs + ys) * 100 // (width + height)], -1
    ).astype(np.uint8)
    cx, cy = width // 2 + int(rng.integers(-50, 50)), height // 2 + int(rng.integers(-50, 50))
    frame[(xs - cx) ** 2 + (ys - cy) ** 2 < (height // 6) ** 2] = (230, 40, 40)
    return frame


async def _first_token(reasoner: Reasoner, frame: np.ndarray, mask: np.ndarray) -> float:
    """Seconds from sending the request to its first piece (messages already built)."""
    messages = reasoner.describe_messages(frame, mask)
    t = time.perf_counter()
    async with aclosing(reasoner.backend.stream_chat(messages, max_tokens=8)) as pieces:
        async for _ in pieces:
            return time.perf_counter() - t
    raise RuntimeError("the VLM answered with nothing")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_sam2(
        size=args.sam2_size, weights=args.weights, device=args.device, image_size=args.image_size
    )
    segmenter = ImageSegmenter(model)
    backend = OpenAICompatibleBackend(args.vlm_url, args.vlm_model, first_token_timeout_s=600)
    reasoner = Reasoner(backend, family=args.vlm_family)
    await reasoner.family()
    width, height = (int(v) for v in args.frame.split("x"))
    steps: dict[str, dict[str, list[float]]] = {
        "stateless": {"encode": [], "decode": [], "spotlight": [], "first_token": []},
        "cached": {"decode": [], "spotlight": [], "first_token": []},
    }
    for i in range(args.runs + args.warmup):
        frame = _frame(width, height, i)
        click = [(width // 2, height // 2)]
        # stateless: everything from the frame
        t0 = time.perf_counter()
        segmenter.set_image(frame)
        t1 = time.perf_counter()
        mask, _ = segmenter.segment(click, [1])
        t2 = time.perf_counter()
        reasoner.describe_messages(frame, mask)
        t3 = time.perf_counter()
        first = await _first_token(reasoner, frame, mask)
        stateless = {"encode": t1 - t0, "decode": t2 - t1, "spotlight": t3 - t2}
        stateless["first_token"] = first
        # cached: the frame's features are there already (the live tracker encoded it)
        t0 = time.perf_counter()
        mask, _ = segmenter.segment([(width // 2 + 3, height // 2)], [1])
        t1 = time.perf_counter()
        reasoner.describe_messages(frame, mask)
        t2 = time.perf_counter()
        first = await _first_token(reasoner, frame, mask)
        cached = {"decode": t1 - t0, "spotlight": t2 - t1, "first_token": first}
        if i >= args.warmup:
            for name, v in stateless.items():
                steps["stateless"][name].append(v * 1000)
            for name, v in cached.items():
                steps["cached"][name].append(v * 1000)
    await backend.aclose()
    medians = {
        mode: {name: statistics.median(v) for name, v in s.items()} for mode, s in steps.items()
    }
    totals = {mode: sum(m.values()) for mode, m in medians.items()}
    return {
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cpus",
        "device": str(model.device),
        "image_size": args.image_size,
        "frame": args.frame,
        "runs": args.runs,
        "vlm": {"url": args.vlm_url, "model": await backend.resolve_model()},
        "family": (await reasoner.family()).name,
        "median_ms": medians,
        "total_ms": totals,
        "cached_over_stateless": totals["cached"] / totals["stateless"],
        "pre_vlm_ms": {
            mode: totals[mode] - medians[mode]["first_token"] for mode in ("stateless", "cached")
        },
        "seed_ms": SEED_MS,
        "seed_ratio": SEED_MS["cached"] / SEED_MS["stateless"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vlm-url", required=True)
    parser.add_argument("--vlm-model", default=None, help="default: the first /v1/models lists")
    parser.add_argument("--vlm-family", default="auto")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--frame", default="1280x720")
    parser.add_argument("--sam2-size", default="tiny")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(
        f"{result['machine']}, SAM2 on {result['device']} at {result['image_size']} px, frames "
        f"{result['frame']}, VLM {result['vlm']['model']} ({result['family']}), "
        f"{result['runs']} runs, median ms"
    )
    print("| step | stateless | cached |")
    print("| --- | ---: | ---: |")
    for step in ("encode", "decode", "spotlight", "first_token"):
        cells = [result["median_ms"][m].get(step) for m in ("stateless", "cached")]
        print(f"| {step} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")
    t = result["total_ms"]
    print(f"| **click to first token** | **{t['stateless']:.1f}** | **{t['cached']:.1f}** |")
    p = result["pre_vlm_ms"]
    print(f"| before the request | {p['stateless']:.1f} | {p['cached']:.1f} |")
    print(
        f"cached / stateless: {result['cached_over_stateless']:.2f} (seed: "
        f"{result['seed_ratio']:.2f}, {SEED_MS['cached']} / {SEED_MS['stateless']} ms, RTX 3090)"
    )
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "first_token.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'first_token.json'}")


if __name__ == "__main__":
    main()
