"""Live overlay modes in headless Chromium: the latency each adds to what a person sees.

A fake camera (a .y4m whose frames carry their index as a bar code) feeds the page; the app runs
in this process with SAM2 tiny (seeded random weights, CPU) and records which camera frame each
overlay was computed on. For each mode the page is sampled on every animation frame for
`--seconds`, after one object is clicked:

- live video (the default): the picture is the camera itself; the masks drawn are
  `camera frame now - frame the masks were computed on` behind it.
- synced: the picture is the frame the masks were computed on (checked, every sample); it is
  that many frames behind the camera. The page also reports it in ms (its status line).

Figures are in camera frames (1000 / --fps ms each) and ms. Prints a table and writes JSON to
benchmarks/out/.

    python benchmarks/overlay_sync.py [--seconds 30] [--fps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
sys.path.insert(0, str(ROOT))

# One sample of what the page shows: the camera's frame now, the overlay drawn, the synced picture.
SAMPLE = """() => {
  const readBarCode = READ_BAR_CODE;
  const video = document.getElementById('live-video');
  const overlay = document.querySelector('[data-testid=overlay]');
  const synced = document.querySelector('[data-testid=synced-frame]');
  const status = document.querySelector('[data-testid=status]').textContent;
  const late = /synced, (\\d+) ms late/.exec(status);
  return {
    camera: readBarCode(video),
    overlayIndex: overlay.dataset.frameIndex == null ? null : Number(overlay.dataset.frameIndex),
    synced: synced.hidden ? null : readBarCode(synced),
    syncedIndex: synced.hidden ? null : Number(synced.dataset.frameIndex),
    lateMs: late ? Number(late[1]) : null,
  };
}"""


def pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright, expect

    from streamer.app import create_app
    from streamer.live import tracking
    from streamer.settings import Settings
    from tests.browser import (
        READ_BAR_CODE,
        open_with_camera,
        recording_bar_codes,
        write_indexed_y4m,
    )
    from tests.conftest import ServerThread
    from workers.vision import load_sam2

    computed_on: dict[int, int] = {}  # overlay frame_index -> camera frame it was computed on

    tracking.LiveTracker.step = recording_bar_codes(  # type: ignore[method-assign]
        tracking.LiveTracker.step, computed_on
    )
    loop_frames = min(
        256, 8 * args.fps
    )  # an 8 s loop (the bar code has 8 bits): lags below it are unambiguous
    tmp = Path(tempfile.mkdtemp(prefix="overlay-sync-"))
    clip = write_indexed_y4m(tmp / "indexed.y4m", frames=loop_frames, fps=args.fps)
    model = load_sam2(size="tiny", weights="random", device="cpu", image_size=256, seed=0)
    app = create_app(
        Settings(weights="random", sam2_image_size=256, device="cpu"), vision_model=model
    )
    results: dict[str, Any] = {}
    sample = SAMPLE.replace("READ_BAR_CODE", READ_BAR_CODE)
    with ServerThread(app) as server:
        async with async_playwright() as pw:
            context, page = await open_with_camera(pw, tmp / "profile", clip)
            await page.goto(server.base_url)
            status = page.get_by_test_id("status")
            await expect(status).to_contain_text("fps", timeout=120_000)
            box = await page.get_by_test_id("stage").bounding_box()
            assert box is not None
            await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=60_000)
            for mode in ("live video", "synced"):
                if mode == "synced":
                    await page.get_by_test_id("synced-toggle").check()
                    await expect(status).to_contain_text("synced", timeout=120_000)
                samples = []
                end = time.monotonic() + args.seconds
                while time.monotonic() < end:
                    samples.append(await page.evaluate(sample))
                    await page.wait_for_timeout(1000 / args.fps)
                results[mode] = summarize(mode, samples, computed_on, loop_frames, args.fps)
            await context.close()
    return results


def summarize(
    mode: str,
    samples: list[dict[str, Any]],
    computed_on: dict[int, int],
    loop_frames: int,
    fps: int,
) -> dict[str, Any]:
    def behind(now: int, then: int) -> int:
        return (now - then) % loop_frames

    picture, masks, mismatched, late_ms = [], [], 0, []
    for s in samples:
        if s["camera"] is None:
            continue
        if mode == "synced":
            if s["synced"] is None or s["syncedIndex"] not in computed_on:
                continue
            picture.append(behind(s["camera"], s["synced"]))
            masks.append(behind(s["synced"], computed_on[s["syncedIndex"]]))
            mismatched += computed_on[s["syncedIndex"]] != s["synced"]
            if s["lateMs"] is not None:
                late_ms.append(s["lateMs"])
        else:
            if s["overlayIndex"] not in computed_on:
                continue
            picture.append(0)
            masks.append(behind(s["camera"], computed_on[s["overlayIndex"]]))
    ms = 1000 / fps
    return {
        "samples": len(picture),
        "picture_behind_camera_frames_median": statistics.median(picture) if picture else None,
        "picture_behind_camera_ms_median": statistics.median(picture) * ms if picture else None,
        "picture_behind_camera_ms_p95": (pct(picture, 95) or 0) * ms if picture else None,
        "masks_behind_picture_frames_median": statistics.median(masks) if masks else None,
        "masks_behind_picture_ms_median": statistics.median(masks) * ms if masks else None,
        "masks_behind_picture_ms_p95": (pct(masks, 95) or 0) * ms if masks else None,
        "synced_picture_not_its_masks_frame": mismatched,
        "status_ms_late_median": statistics.median(late_ms) if late_ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="sampling time per mode")
    parser.add_argument("--fps", type=int, default=30, help="the fake camera's frame rate")
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    print(
        "| mode | samples | picture behind camera, median / p95 ms | masks behind picture, "
        "median / p95 ms | synced frame mismatches |"
    )
    print("| --- | ---: | --- | --- | ---: |")
    for mode, r in results.items():
        pic = (
            f"{r['picture_behind_camera_ms_median']:.0f} / {r['picture_behind_camera_ms_p95']:.0f}"
        )
        msk = f"{r['masks_behind_picture_ms_median']:.0f} / {r['masks_behind_picture_ms_p95']:.0f}"
        print(
            f"| {mode} | {r['samples']} | {pic} | {msk} | "
            f"{r['synced_picture_not_its_masks_frame']} |"
        )
    print(
        f"synced: the status line's 'ms late', median {results['synced']['status_ms_late_median']}"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"overlay-sync-{int(time.time())}.json"
    meta = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "args": vars(args),
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
