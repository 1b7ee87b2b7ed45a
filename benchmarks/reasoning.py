"""Reasoning benchmarks: Spotlight render time by frame size, and our own per-request overhead.

Run:  .venv/bin/python benchmarks/reasoning.py  [--repeats N] [--requests N]
Prints a table and writes benchmarks/out/reasoning.json.

Overhead is measured two ways, both reported:
- stages: each client stage of a describe request at 720p timed directly (render, resize, JPEG,
  base64, message and JSON body building; the SSE wire is the openai client's, inside end to end);
- end to end: a full Reasoner.describe against a zero-latency OpenAI-compatible server running in
  its own process (as vLLM would), minus the server handler's own time (which it reports). What is
  left is our overhead plus localhost HTTP and the server's uvicorn framing: an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402

from workers.reasoning import OpenAICompatibleBackend, Reasoner, render_spotlight  # noqa: E402
from workers.reasoning.images import encode_jpeg, fit_image  # noqa: E402

SIZES = [(640, 480), (1280, 720), (3840, 2160)]
SPOTLIGHT_TARGET_MS = 3.0
OVERHEAD_TARGET_MS = 15.0


def _frame(w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _camera_like(w: int, h: int) -> np.ndarray:
    """Noise blurred to camera-like detail over gradients: JPEG cost depends on content, and pure
    noise (the Spotlight frames) would overstate it about 2x."""
    noise = cv2.GaussianBlur(_frame(w, h), (0, 0), 2.0)
    ys, xs = np.mgrid[0:h, 0:w]
    ramp = np.stack([xs * 127 // w, ys * 127 // h, (xs + ys) * 127 // (w + h)], -1)
    return (noise // 2 + ramp).astype(np.uint8)


def _mask(w: int, h: int, fraction: float) -> np.ndarray:
    """An ellipse covering about `fraction` of the frame, off-centre."""
    mask = np.zeros((h, w), dtype=np.uint8)
    ax = int(np.sqrt(fraction * w * h / np.pi * w / h))
    ay = int(np.sqrt(fraction * w * h / np.pi * h / w))
    cv2.ellipse(mask, (w * 3 // 5, h * 2 // 5), (max(ax, 1), max(ay, 1)), 20, 0, 360, 1, -1)
    return mask.astype(bool)


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def bench_spotlight(repeats: int) -> list[dict]:
    rows = []
    for w, h in SIZES:
        frame = _frame(w, h)
        n = max(repeats // 4, 20) if w * h > 4_000_000 else repeats
        for label, fraction in (("large (15%)", 0.15), ("small (0.5%, +crop)", 0.005)):
            mask = _mask(w, h, fraction)
            ms = _median_ms(lambda f=frame, m=mask: render_spotlight(f, m), n)
            rows.append({"size": f"{w}x{h}", "object": label, "median_ms": round(ms, 3), "n": n})
    return rows


def bench_stages(repeats: int, max_side: int = 768) -> dict[str, float]:
    frame, mask = _camera_like(1280, 720), _mask(1280, 720, 0.15)
    spot = render_spotlight(frame, mask)
    fitted = fit_image(spot.image, max_side)
    jpeg = encode_jpeg(fitted)
    b64 = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    reasoner = Reasoner(backend=None, max_side=max_side, family="qwen2.5-vl")  # type: ignore[arg-type]
    messages = reasoner.describe_messages(frame, mask)
    return {
        "render_spotlight": _median_ms(lambda: render_spotlight(frame, mask), repeats),
        "resize_to_grid": _median_ms(lambda: fit_image(spot.image, max_side), repeats),
        "jpeg_encode": _median_ms(lambda: encode_jpeg(fitted), repeats),
        "base64": _median_ms(lambda: base64.b64encode(jpeg).decode(), repeats),
        "describe_messages_total": _median_ms(
            lambda: reasoner.describe_messages(frame, mask), repeats
        ),
        "json_body": _median_ms(lambda: json.dumps({"model": "m", "messages": messages}), repeats),
        "image_bytes": float(len(b64)),
    }


async def _end_to_end(url: str, requests: int) -> dict[str, float]:
    frame, mask = _camera_like(1280, 720), _mask(1280, 720, 0.15)
    backend = OpenAICompatibleBackend(url, "bench", max_in_flight=1)
    reasoner = Reasoner(backend, family="qwen2.5-vl")
    totals = []
    for i in range(requests + 5):
        t = time.perf_counter()
        text = "".join([p async for p in reasoner.describe(frame, mask)])
        if i >= 5:  # the first few warm the connection and caches
            totals.append((time.perf_counter() - t) * 1000)
        assert text
    async with httpx.AsyncClient() as client:
        stats = (await client.get(url.removesuffix("/v1") + "/_stats")).json()
    await backend.aclose()
    server_ms = [s * 1000 for s in stats["server_time_s"][5:]]
    paired = [t - s for t, s in zip(totals, server_ms, strict=True)]
    return {
        "requests": requests,
        "total_median_ms": statistics.median(totals),
        "server_handler_median_ms": statistics.median(server_ms),
        "ours_median_ms": statistics.median(paired),
        "ours_p90_ms": sorted(paired)[int(0.9 * (len(paired) - 1))],
    }


def bench_end_to_end(requests: int) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_server"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the scripted server did not start (got {url!r})")
        return asyncio.run(_end_to_end(url, requests))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()

    spot = bench_spotlight(args.repeats)
    stages = bench_stages(args.repeats)
    e2e = bench_end_to_end(args.requests)

    print(f"\nSpotlight render (median of {args.repeats}; 4K: fewer)")
    print("| frame | object | median ms |")
    print("| --- | --- | ---: |")
    for r in spot:
        print(f"| {r['size']} | {r['object']} | {r['median_ms']:.3f} |")
    print(
        f"\nPer-describe client stages at 1280x720 (median ms; target sum <= {OVERHEAD_TARGET_MS})"
    )
    print("| stage | median ms |")
    print("| --- | ---: |")
    for k, v in stages.items():
        print(
            f"| {k} | {v:.3f} |" if k != "image_bytes" else f"| data URL size (bytes) | {int(v)} |"
        )
    print(f"\nEnd to end, zero-latency server in its own process ({args.requests} requests)")
    print("| measure | ms |")
    print("| --- | ---: |")
    for k, v in e2e.items():
        if k != "requests":
            print(f"| {k} | {v:.3f} |")

    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python benchmarks/reasoning.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "opencv": cv2.__version__,
            "numpy": np.__version__,
        },
        "targets_ms": {"spotlight_720p": SPOTLIGHT_TARGET_MS, "overhead_720p": OVERHEAD_TARGET_MS},
        "spotlight": spot,
        "stages_720p_ms": stages,
        "end_to_end_720p": e2e,
    }
    (out / "reasoning.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / 'reasoning.json'}")


if __name__ == "__main__":
    main()
