"""Soak: live sessions plus a clip job for a long time, with the scripted VLM describing every few seconds.

Starts main.py (random SAM2 weights, CPU) with the scripted OpenAI-compatible VLM of the tests,
connects --sessions aiortc clients streaming a moving shape at --fps, clicks one object in each,
asks one of them for a description every --describe-every-s seconds (round robin), and keeps one
clip job running (a refinement click starts the next when one ends). Each minute it samples the
server's RSS, the overlay lag p95 of that minute (frame sent -> overlay received, every session),
the database size, and from /metrics the server's side of that minute: frames received a second,
mean overlay lag (frame arrival -> overlay queued) and mean tracker step. Nothing lost: as each
clip job finishes, its frames are counted in the API and in the database file (a refinement then
replaces them, so they are checked when done). At the end it fits a line to RSS and lag over the
minutes (a flat service has slopes near 0).

    .venv/bin/python benchmarks/soak.py --minutes 30            # the issue's run
    .venv/bin/python benchmarks/soak.py --minutes 5 --fps 15     # a shorter one on a small CPU
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.live import free_port, make_track, pct  # noqa: E402


def start_app(args: argparse.Namespace, data: Path, vlm_url: str) -> tuple[Any, str]:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "main.py"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += [
        "--weights",
        "random",
        "--sam2-image-size",
        str(args.image_size),
        "--device",
        args.device,
    ]
    cmd += ["--vlm-url", vlm_url, "--data-dir", str(data), "--max-sessions", str(args.sessions)]
    cmd += ["--session-idle-timeout-s", "600", "--torch-threads", str(args.torch_threads)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the app exited while starting")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the app did not become ready within 300 s")


class LiveClient:
    """One aiortc session: frames out, overlays in (pts -> lag)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.lags: list[tuple[float, float]] = []  # (receive time, lag s)
        self.verdicts = 0
        self.asked = 0  # describes sent
        self.refused: collections.Counter[str] = collections.Counter()  # describe errors, by code
        self.track = make_track(args.width, args.height, args.fps)
        self.sent: dict[int, float] = self.track.sent  # pts -> when it was sent
        self.object_id: int | None = None

    async def connect(self, url: str) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from websockets.asyncio.client import connect

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(self.track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            r = await http.post(
                "/api/live/offer", json={"sdp": self.pc.localDescription.sdp, "type": "offer"}
            )
        r.raise_for_status()
        answer = r.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        self.ws = await connect(url.replace("http", "ws", 1) + answer["websocket"], max_size=None)
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for raw in self.ws:
            now = time.monotonic()
            msg = json.loads(raw)
            if msg["type"] == "overlay" and msg["pts"] in self.sent:
                self.lags.append((now, now - self.sent.pop(msg["pts"])))
                # frames sent before this one never get an overlay (dropped): forget them
                for p in [p for p in self.sent if p < msg["pts"]]:
                    del self.sent[p]
            elif msg["type"] == "objects" and msg.get("added") is not None:
                self.object_id = msg["added"]
            elif msg["type"] == "verdict":
                self.verdicts += 1
            elif msg["type"] == "error" and msg.get("request") == "describe":
                self.refused[msg.get("code", "?")] += 1

    async def click(self, w: int, h: int) -> None:
        await self.ws.send(json.dumps({"type": "click", "x": w * 0.4, "y": h / 2}))

    async def describe(self) -> None:
        if self.object_id is not None:
            self.asked += 1
            await self.ws.send(json.dumps({"type": "describe", "object_id": self.object_id}))

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.pc.close()


def rows_in_file(db: Path, clip_id: str, oid: int) -> int:
    """Result rows of the object in the database file, read by a second connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        q = "SELECT COUNT(*) FROM results WHERE item_id = ? AND oid = ?"
        return int(conn.execute(q, (clip_id, oid)).fetchone()[0])
    finally:
        conn.close()


async def clip_loop(
    url: str, clip: Path, stop: asyncio.Event, jobs: list[dict[str, Any]], db: Path
) -> None:
    """Keep one clip job running: upload once, then click again whenever a job ends; each
    finished job's frames are counted in the API and the database file at once."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        with open(clip, "rb") as f:
            r = await http.post("/api/clips", files={"file": ("soak.mp4", f, "video/mp4")})
        r.raise_for_status()
        cid = r.json()["id"]
        body = {"frame": 0, "x": 40.0, "y": 60.0}
        oid = None
        while not stop.is_set():
            r = await http.post(f"/api/clips/{cid}/clicks", json={**body, "object_id": oid})
            r.raise_for_status()
            oid = r.json()["object_id"]
            while not stop.is_set():
                await asyncio.sleep(2)
                info = (await http.get(f"/api/clips/{cid}")).json()
                obj = info["objects"][0]
                job = obj["job"]
                if job["state"] not in ("queued", "running"):
                    rows = await asyncio.to_thread(rows_in_file, db, cid, obj["id"])
                    jobs.append(
                        {
                            "clip": cid,
                            **job,
                            "frame_count": info["frame_count"],
                            "frames_api": obj["frames"],
                            "rows_db": rows,
                        }
                    )
                    break


def metric(text: str, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and not s.labels:
                return s.value
    return None


SERVER_SERIES = (
    "fmu_live_frames_received_total",
    "fmu_overlay_lag_seconds_sum",
    "fmu_overlay_lag_seconds_count",
    "fmu_tracker_step_seconds_sum",
    "fmu_tracker_step_seconds_count",
)


def server_minute(
    now: dict[str, float], before: dict[str, float], seconds: float
) -> dict[str, Any]:
    """The server's side of one minute (`seconds` long), from two /metrics samples."""
    d = {k: now[k] - before.get(k, 0.0) for k in SERVER_SERIES}
    n, steps = d["fmu_overlay_lag_seconds_count"], d["fmu_tracker_step_seconds_count"]
    return {
        "recv_fps": round(d["fmu_live_frames_received_total"] / seconds, 1),
        "server_lag_mean_ms": round(1000 * d["fmu_overlay_lag_seconds_sum"] / n) if n else None,
        "step_mean_ms": round(1000 * d["fmu_tracker_step_seconds_sum"] / steps) if steps else None,
    }


def slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0])


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    import aiortc.rtcrtpsender

    from tests.conftest import spotlight_answerer
    from tests.fakes.openai_server import ScriptedVLMServer
    from tests.test_clip_media import write_clip

    # RTP timestamps start at a random origin; pin it at 0 so the server's pts are our pts.
    aiortc.rtcrtpsender.random32 = lambda: 0  # type: ignore[attr-defined]
    tmp = Path(tempfile.mkdtemp(prefix="fmu-soak-"))
    clip = write_clip(tmp / "soak.mp4", frames=args.clip_frames)
    with ScriptedVLMServer(answer=spotlight_answerer()) as vlm:
        proc, url = start_app(args, tmp / "data", vlm.url)
        server = psutil.Process(proc.pid)
        clients = [LiveClient(args) for _ in range(args.sessions)]
        stop = asyncio.Event()
        jobs: list[dict[str, Any]] = []
        try:
            for c in clients:
                await c.connect(url)
            await asyncio.sleep(5)
            for c in clients:
                await c.click(args.width, args.height)
            db = tmp / "data" / "fmu.sqlite3"
            clip_task = asyncio.create_task(clip_loop(url, clip, stop, jobs, db))
            seen: dict[str, float] = {}
            minutes: list[dict[str, Any]] = []
            t0 = time.monotonic()
            next_describe = t0
            turn = 0
            for minute in range(1, args.minutes + 1):
                while time.monotonic() < t0 + args.minute_s * minute:
                    if time.monotonic() >= next_describe:
                        await clients[turn % len(clients)].describe()
                        turn += 1
                        next_describe += args.describe_every_s
                    await asyncio.sleep(0.5)
                lo = t0 + args.minute_s * (minute - 1)
                lags = [lag * 1000 for c in clients for t, lag in c.lags if t >= lo]
                text = httpx.get(url + "/metrics", timeout=10).text
                now = {k: metric(text, k) or 0.0 for k in SERVER_SERIES}
                row = {
                    "minute": minute,
                    "rss_mb": round(server.memory_info().rss / 2**20, 1),
                    "overlays": len(lags),
                    "lag_p95_ms": None if not lags else round(pct(lags, 95), 1),
                    "db_kb": round((metric(text, "fmu_database_bytes") or 0) / 1024, 1),
                    "describes_asked": sum(c.asked for c in clients),
                    "verdicts": sum(c.verdicts for c in clients),
                    "describes_refused": dict(
                        sum((c.refused for c in clients), collections.Counter())
                    ),
                    "clip_jobs_done": len(jobs),
                    **server_minute(now, seen, args.minute_s),
                }
                seen = now
                minutes.append(row)
                print(json.dumps(row), flush=True)
            stop.set()
            await clip_task
            # nothing lost: every job that finished had all its frames in the API and the file
            lost = [
                j["job_id"]
                for j in jobs
                if j["state"] == "done" and not j["frames_api"] == j["rows_db"] == j["frame_count"]
            ]
            rows = rows_in_file(db, jobs[0]["clip"], 1) if jobs else 0
        finally:
            for c in clients:
                await c.close()
            proc.terminate()
            proc.wait(timeout=60)
    return {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{psutil.cpu_count()} CPUs",
        "args": vars(args),
        "minutes": minutes,
        "rss_slope_mb_per_min": slope([(m["minute"], m["rss_mb"]) for m in minutes[1:]]),
        "lag_p95_slope_ms_per_min": slope(
            [(m["minute"], m["lag_p95_ms"]) for m in minutes[1:] if m["lag_p95_ms"] is not None]
        ),
        "clip_jobs_done": sum(1 for j in jobs if j["state"] == "done"),
        "clip_jobs": jobs,
        "clip_jobs_missing_frames": lost,
        "result_rows_in_db_at_end": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument(
        "--minute-s",
        type=float,
        default=60.0,
        help="how long a row (a 'minute') lasts; shorter for a smoke run of this script",
    )
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--torch-threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--describe-every-s", type=float, default=5.0)
    p.add_argument("--clip-frames", type=int, default=120)
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = p.parse_args()
    report = asyncio.run(soak(args))
    print(json.dumps({k: v for k, v in report.items() if k != "minutes"}, indent=1, default=str))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
