"""Live-mode benchmark: an aiortc client streams a moving shape to the app and measures overlay lag.

Lag is the time from sending a frame to receiving its overlay, matched by the frame's RTP
timestamp (this client fixes its RTP timestamp origin at 0, so the server's pts equals ours).
Reported over the first and the last `--window` seconds: median and p95 lag, processed fps, frames
dropped, tracker step time, and the server's RSS at start and end. Prints a table and writes JSON
to benchmarks/out/.

    python benchmarks/live.py                      # starts the app itself (random weights, 256 px)
    python benchmarks/live.py --url http://HOST:8080  # an app that is already running

Targets: p95 lag <= one tracker step + 150 ms; no growth from the first window to the last; RSS
flat. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from workers.words import plural

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


def make_track(width: int, height: int, fps: float) -> Any:
    """The tests' moving square, 3 px a frame, as an aiortc track paced at `fps`; its `sent` maps
    each frame's pts to the time it was sent."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import make_moving_shape_track

    return make_moving_shape_track(width, height, fps, step=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(
    args: argparse.Namespace, stderr: Any = subprocess.PIPE
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [
        sys.executable,
        str(ROOT / "main.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--weights",
        "random",
        "--sam2-size",
        args.sam2_size,
        "--sam2-image-size",
        str(args.image_size),
        "--device",
        "cpu",
        "--vlm-backend",
        "none",
        "--torch-threads",
        str(args.torch_threads),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"the app exited while starting:\n{err[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the app did not become ready within 300 s")


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    import aiortc.rtcrtpsender
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from websockets.asyncio.client import connect

    # RTP timestamps start at a random origin; pin it at 0 so the server's pts are our pts.
    aiortc.rtcrtpsender.random32 = lambda: 0  # type: ignore[attr-defined]

    overlays: list[tuple[float, int, int]] = []  # (receive time, pts, objects)
    statuses: list[dict[str, Any]] = []
    track = make_track(args.width, args.height, args.fps)
    sent: dict[int, float] = track.sent
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(track)
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        rss_before = (await http.get("/api/live/sessions")).json()["rss_mb"]
        resp = await http.post(
            "/api/live/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}
        )
        if resp.status_code != 200:
            raise SystemExit(f"offer refused: {resp.status_code} {resp.text}")
        answer = resp.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        ws = await connect(url.replace("http", "ws", 1) + answer["websocket"], max_size=None)
        clicked = asyncio.Event()
        first_overlay = asyncio.Event()

        async def reader() -> None:
            async for raw in ws:
                now = time.monotonic()
                msg = json.loads(raw)
                if msg["type"] == "overlay":
                    overlays.append((now, msg["pts"], len(msg["objects"])))
                    first_overlay.set()
                elif msg["type"] == "status":
                    statuses.append(msg)
                elif msg["type"] == "objects" and msg.get("added") is not None:
                    clicked.set()

        read_task = asyncio.create_task(reader())
        await asyncio.wait_for(first_overlay.wait(), 120)
        w, h = args.width, args.height
        for k in range(args.objects):
            x = w * (0.3 + 0.4 * k / max(1, args.objects))
            await ws.send(json.dumps({"type": "click", "x": x, "y": h / 2}))
            await asyncio.wait_for(clicked.wait(), 60)
            clicked.clear()
        t_start = time.monotonic()
        rss_start = (await http.get("/api/live/sessions")).json()["rss_mb"]
        rss_samples = [(0.0, rss_start)]
        while time.monotonic() - t_start < args.duration:
            await asyncio.sleep(5)
            rss_samples.append(
                (
                    round(time.monotonic() - t_start, 1),
                    (await http.get("/api/live/sessions")).json()["rss_mb"],
                )
            )
        t_end = time.monotonic()
        rss_end = rss_samples[-1][1]
        read_task.cancel()
        await ws.close()
        await pc.close()

    def window(lo: float, hi: float) -> dict[str, Any]:
        rows = [(rt, p) for rt, p, n in overlays if p in sent and lo <= sent[p] - t_start < hi]
        lags = [(rt - sent[p]) * 1000 for rt, p in rows]
        gaps = [(b[0] - a[0]) * 1000 for a, b in zip(rows, rows[1:], strict=False)]
        st = [s for s in statuses if s.get("step_ms") is not None]
        sent_n = sum(1 for t in sent.values() if lo <= t - t_start < hi)
        return {
            "frames_sent": sent_n,
            "overlays": len(rows),
            "processed_fps": round(len(rows) / (hi - lo), 2),
            "lag_median_ms": pct(lags, 50),
            "lag_p95_ms": pct(lags, 95),
            "lag_max_ms": max(lags) if lags else None,
            "overlay_interval_median_ms": pct(gaps, 50),
            "step_ms_median": statistics.median(s["step_ms"] for s in st) if st else None,
        }

    dur = t_end - t_start
    first = window(0, args.window)
    last = window(dur - args.window, dur)
    final = statuses[-1] if statuses else {}
    steps = [s["step_ms"] for s in statuses if s.get("step_ms")]
    return {
        "first": first,
        "last": last,
        "duration_s": round(dur, 1),
        "frames_received": final.get("frames_received"),
        "frames_processed": final.get("frames_processed"),
        "frames_dropped": final.get("frames_dropped"),
        "step_ms_median": statistics.median(steps) if steps else None,
        "rss_mb_before_session": rss_before,
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_end,
        "rss_mb_samples": rss_samples,
    }


def fmt(v: Any, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    step = res["step_ms_median"] or 0.0
    target = step + 150
    lines = [
        f"live benchmark: {args.width}x{args.height} @ {args.fps:g} fps for {res['duration_s']} s, "
        f"{plural(args.objects, 'object')}, SAM2 {args.sam2_size} random weights @ {args.image_size} px, "
        "CPU",
        "",
        "| window | overlays/s | overlay interval ms | lag median ms | lag p95 ms | lag max ms "
        "| p95 target ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("first", "last"):
        w = res[name]
        lines.append(
            f"| {name} {args.window:g} s | {fmt(w['processed_fps'], 1)} | "
            f"{fmt(w['overlay_interval_median_ms'])} | {fmt(w['lag_median_ms'])} | "
            f"{fmt(w['lag_p95_ms'])} | {fmt(w['lag_max_ms'])} | {fmt(target)} |"
        )
    lines += [
        "",
        f"frames received {res['frames_received']}, processed {res['frames_processed']}, "
        f"dropped {res['frames_dropped']}; tracker step median {fmt(step)} ms (p95 target = "
        f"step + 150 ms); server RSS {res['rss_mb_start']} MB at start -> "
        f"{res['rss_mb_end']} MB at end (before the session: {res['rss_mb_before_session']} MB)",
    ]
    return "\n".join(lines)


def add_stream_args(ap: argparse.ArgumentParser) -> None:
    """The synthetic camera's rate and size, and the model the started app loads (start_app)."""
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--sam2-size", default="tiny")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument(
        "--torch-threads", type=int, default=0, help="the app's --torch-threads (0: torch's own)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running app (default: start one with random weights)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of streaming")
    ap.add_argument("--window", type=float, default=10.0, help="seconds in the first/last window")
    ap.add_argument("--objects", type=int, default=1, help="objects clicked before measuring")
    add_stream_args(ap)
    args = ap.parse_args()

    proc = None
    url = args.url
    if url is None:
        proc, url = start_app(args)
    try:
        res = asyncio.run(run(args, url))
    finally:
        if proc is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    table = report(res, args)
    print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"live-{time.strftime('%Y%m%d-%H%M%S')}.json"
    res.update(
        args=vars(args),
        machine={
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),
        },
        table=table,
    )
    out.write_text(json.dumps(res, indent=2))
    print(f"\nJSON: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
