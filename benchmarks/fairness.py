"""Fairness benchmark: a live session's processed fps alone, beside a clip job, and beside another
session's click flood (the vision thread's scheduler, streamer/scheduler.py).

    python benchmarks/fairness.py            # starts the app itself (random weights, 256 px, CPU)

Targets (issue 16): with a clip job running, at least 70% of the solo fps; under another
session's 2,000-click flood, at least 90% of its fps beside that same session without the flood
(two cameras share one vision thread, so the pair is the base). Prints a table and writes JSON to benchmarks/out/.
Traffic goes to 127.0.0.1 only, bounded in count and time. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.live import OUT, add_stream_args, make_track, start_app  # noqa: E402


class LivePeer:
    """One aiortc session; counts the overlays it receives."""

    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url, self.args = url, args
        self.overlays: list[float] = []
        self.answers = 0

    async def open(self) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from websockets.asyncio.client import connect

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(make_track(self.args.width, self.args.height, self.args.fps))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            resp = await http.post(
                "/api/live/offer", json={"sdp": self.pc.localDescription.sdp, "type": "offer"}
            )
        resp.raise_for_status()
        answer = resp.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        self.ws = await connect(self.url.replace("http", "ws", 1) + answer["websocket"])
        self.first = asyncio.Event()
        self.added = asyncio.Event()
        self.reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self.first.wait(), 120)
        await self.ws.send(json.dumps({"type": "click", "x": self.args.width * 0.4, "y": 120}))
        await asyncio.wait_for(self.added.wait(), 60)

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg["type"] == "overlay":
                self.overlays.append(time.monotonic())
                self.first.set()
            elif msg["type"] == "objects" and msg.get("added") is not None:
                self.added.set()
            elif msg["type"] in ("objects", "error"):
                self.answers += 1

    def fps(self, t0: float, t1: float) -> float:
        return sum(1 for t in self.overlays if t0 <= t < t1) / (t1 - t0)

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.pc.close()


async def measure(peer: LivePeer, seconds: float) -> float:
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    return peer.fps(t0, time.monotonic())


async def clip_jobs(url: str, clip: Path, stop: asyncio.Event) -> int:
    """Keep one clip job running (a new one when the last ends) until stopped."""
    started = 0
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        with open(clip, "rb") as f:
            up = await http.post("/api/clips", files={"file": ("c.mp4", f, "video/mp4")})
        up.raise_for_status()
        cid = up.json()["id"]
        while not stop.is_set():
            r = await http.post(f"/api/clips/{cid}/clicks", json={"x": 100, "y": 120, "frame": 0})
            r.raise_for_status()
            started += 1
            oid = r.json()["object_id"]
            while not stop.is_set():
                info = (await http.get(f"/api/clips/{cid}")).json()
                job = next((o.get("job") for o in info["objects"] if o["id"] == oid), None)
                if not job or job.get("state") in ("done", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.5)
            await http.delete(f"/api/clips/{cid}/objects/{oid}")
    return started


async def flood(peer: LivePeer, clicks: int) -> None:
    for i in range(clicks):
        x = 20 + (i * 7) % (peer.args.width - 40)
        await peer.ws.send(json.dumps({"type": "click", "x": x, "y": 120, "object_id": 1}))


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    from tests.test_clip_media import write_clip

    clip = write_clip(Path(tempfile.mkdtemp()) / "c.mp4", frames=600, width=320, height=240)
    a = LivePeer(url, args)
    await a.open()
    await asyncio.sleep(3)  # past the first steps
    solo = await measure(a, args.duration)

    stop = asyncio.Event()
    jobs = asyncio.create_task(clip_jobs(url, clip, stop))
    await asyncio.sleep(5)  # the job is running
    beside_clip = await measure(a, args.duration)
    stop.set()
    started = await jobs

    b = LivePeer(url, args)
    await b.open()
    await asyncio.sleep(3)
    beside_session = await measure(a, args.duration)  # two cameras share the thread: the base
    sender = asyncio.create_task(flood(b, args.clicks))
    beside_flood = await measure(a, args.duration)
    await sender
    flood_answers = b.answers
    await b.close()
    await a.close()
    return {
        "solo_fps": solo,
        "beside_clip_fps": beside_clip,
        "beside_session_fps": beside_session,
        "beside_flood_fps": beside_flood,
        "clip_jobs_started": started,
        "flood_clicks_sent": args.clicks,
        "flood_answers_seen": flood_answers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running app (default: start one with random weights)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds measured per case")
    ap.add_argument("--clicks", type=int, default=2000)
    add_stream_args(ap)
    args = ap.parse_args()
    proc = None
    url = args.url
    if url is None:
        # the app's log goes to a file: an unread pipe fills and stalls the app's event loop
        OUT.mkdir(parents=True, exist_ok=True)
        log = open(OUT / "fairness-app.log", "wb")  # noqa: SIM115 - the app's lifetime
        proc, url = start_app(args, stderr=log)
    try:
        res = asyncio.run(run(args, url))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    solo = res["solo_fps"] or float("nan")
    print("| case | live fps | share of solo | target |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| alone | {res['solo_fps']:.2f} | 100% | - |")
    print(
        f"| beside a clip job | {res['beside_clip_fps']:.2f} | {res['beside_clip_fps'] / solo:.0%} | 70% |"
    )
    pair = res["beside_session_fps"] or float("nan")
    print(f"| beside another live session | {pair:.2f} | {pair / solo:.0%} | - |")
    print(
        f"| beside that session's {args.clicks}-click flood | {res['beside_flood_fps']:.2f} | "
        f"{res['beside_flood_fps'] / pair:.0%} of the pair's | 90% |"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    res["machine"] = f"{platform.machine()} {platform.system()} {platform.release()}"
    path = OUT / f"fairness-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
