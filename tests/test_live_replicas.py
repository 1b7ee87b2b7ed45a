"""Two app processes behind Debian's HAProxy, started here with the project's docker/haproxy.cfg.

Replica A takes 1 live session, replica B 2. Live sessions (real aiortc peers) are opened through
the load balancer only; where each landed is asked of the replicas themselves. A second pair runs
with an access token, as replicas that serve the network do, and keeps images and clips.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveClient, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
W, H = 160, 120

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs Debian's haproxy"),
]


TOKEN = "replicas-share-this-token"


class Replica:
    def __init__(self, name: str, max_sessions: int, data: Path, token: str | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.log = data.with_suffix(".log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--host", "127.0.0.1", "--port", str(self.port),
             "--weights", "random", "--sam2-image-size", "128", "--device", "cpu",
             "--torch-threads", "1", "--max-sessions", str(max_sessions), "--data-dir", str(data),
             *(["--auth-token", token] if token else [])],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"replica {self.name} exited; see {self.log.name}"
        with contextlib.suppress(httpx.HTTPError):
            capacity = httpx.get(f"{self.url}/api/live/capacity", headers=self.headers, timeout=2)
            return capacity.status_code == 200
        return False

    def sessions(self) -> int:
        return int(httpx.get(f"{self.url}/api/live/sessions", timeout=5).json()["sessions"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Balancer:
    def __init__(self, replicas: list[Replica], token: str | None = None) -> None:
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **{k: v for k, v in os.environ.items() if k != "FMU_AUTH_TOKEN"},
            **({"FMU_AUTH_TOKEN": token} if token else {}),
            "FMU_LB_BIND": f"127.0.0.1:{self.port}",
            "FMU_LB_STATS_BIND": f"127.0.0.1:{self.stats_port}",
            **{f"FMU_REPLICA_{i + 1}": f"127.0.0.1:{r.port}" for i, r in enumerate(replicas)},
        }
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(ROOT / "docker" / "haproxy.cfg")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def states(self) -> dict[str, str]:
        """HAProxy's view of each replica: UP, NOLB (full: no new sessions), DOWN..."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2).text
        except httpx.HTTPError:
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            r["svname"]: r["status"]
            for r in rows
            if r["pxname"] == "fmu_replicas" and r["svname"] != "BACKEND"
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def replicas_behind_haproxy(
    tmp_path: Path, token: str | None = None
) -> Iterator[tuple[Replica, Replica, Balancer]]:
    a = Replica("A", 1, tmp_path / "a", token)
    b = Replica("B", 2, tmp_path / "b", token)
    lb = None
    try:
        deadline = time.monotonic() + 300
        while not (a.ready() and b.ready()):
            assert time.monotonic() < deadline, "the replicas did not load SAM2 within 300 s"
            time.sleep(0.5)
        lb = Balancer([a, b], token)
        yield a, b, lb
    finally:
        if lb is not None:
            lb.stop()
        a.stop()
        b.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Replica, Replica, Balancer]]:
    with replicas_behind_haproxy(tmp_path) as replicas:
        yield replicas


@pytest.fixture
def guarded_cluster(tmp_path: Path) -> Iterator[tuple[Replica, Replica, Balancer]]:
    with replicas_behind_haproxy(tmp_path, TOKEN) as replicas:
        yield replicas


async def ws_refusal(base_url: str, session_id: str) -> tuple[int | None, str]:
    """Open a session's websocket; the close code and the error message it was refused with."""
    from websockets.exceptions import InvalidStatus

    probe = LiveClient(base_url)
    try:
        await probe.open_ws(f"/api/live/sessions/{session_id}/ws")
    except InvalidStatus as exc:  # refused before the upgrade (the balancer's own answer)
        return exc.response.status_code, exc.response.body.decode()
    await probe.wait_for(lambda: probe.close_code is not None, 20, "the websocket to close")
    errors = probe.of_type("error")
    return probe.close_code, errors[0]["message"] if errors else ""


async def holder(session_id: str, a: Replica, b: Replica) -> Replica:
    """The replica that holds the session: it says 'already attached', the other 'unknown'."""
    codes = {r.name: (await ws_refusal(r.url, session_id))[0] for r in (a, b)}
    assert sorted(codes.values()) == [4404, 4409], codes
    return a if codes["A"] == 4409 else b


async def test_sessions_spread_stick_fill_and_move_off_a_stopped_replica(
    cluster: tuple[Replica, Replica, Balancer], moving_shape: Any
) -> None:
    a, b, lb = cluster
    await wait_until(lambda: lb.states() == {"replica1": "UP", "replica2": "UP"}, 90, "both UP")
    clients: list[LiveClient] = []
    try:
        # Two sessions land on different replicas (least connections).
        for _ in range(2):
            c = LiveClient(lb.url)
            clients.append(c)
            await c.connect(moving_shape(W, H))
            await c.wait_message("hello", timeout=30)  # its websocket reached its replica
        assert (a.sessions(), b.sessions()) == (1, 1)
        homes = [await holder(c.session_id or "", a, b) for c in clients]
        assert {r.name for r in homes} == {"A", "B"}

        # Every later request of a session reaches its replica: a second websocket is refused
        # as "already attached" by the holder, never as "unknown" by the other replica.
        for c in clients:
            for _ in range(4):
                code, message = await ws_refusal(lb.url, c.session_id or "")
                assert code == 4409, message
        # The session works through the balancer: a click starts an object it tracks.
        first = clients[0]
        await first.wait_message("overlay", timeout=90)  # its media reached the replica
        await first.send({"type": "click", "x": W / 2, "y": H / 2})
        await first.wait_message("overlay", lambda m: bool(m["objects"]), timeout=90)

        # A is full (1 of 1): the third session goes to B, where there is room.
        await wait_until(lambda: lb.states().get("replica1") == "NOLB", 90, "A drained (full)")
        third = LiveClient(lb.url)
        clients.append(third)
        await third.connect(moving_shape(W, H))
        assert (await holder(third.session_id or "", a, b)).name == "B"
        assert (a.sessions(), b.sessions()) == (1, 2)

        # B stops: its sessions' websockets close, the one on A goes on.
        on_b = [c for c in clients if c is third or homes[clients.index(c)].name == "B"]
        on_a = next(c for c in clients if c not in on_b)
        b.stop()
        for c in on_b:
            await c.wait_for(lambda c=c: c.close_code is not None, 30, "B's session to close")
        await wait_until(lambda: lb.states().get("replica2", "").startswith("DOWN"), 90, "B DOWN")
        assert on_a.close_code is None and a.sessions() == 1

        # Every replica full or down: a new offer, and B's sessions, are refused in plain words.
        refused = await LiveClient(lb.url).offer(moving_shape(W, H))
        assert refused.status_code == 503 and "every replica is full or down" in refused.text
        code, message = await ws_refusal(lb.url, on_b[0].session_id or "")
        assert code == 503 and "whose replica stopped has ended" in message, message

        # Room again on A: B's sessions, asked for again, are refused by A as gone (the page then
        # starts a new session), and the page's new offer lands on A.
        await on_a.close()
        await wait_until(lambda: lb.states().get("replica1") == "UP", 90, "A UP again")
        for c in on_b:
            code, message = await ws_refusal(lb.url, c.session_id or "")
            assert code == 4404 and "stopped" in message and "post an offer" in message, message
        moved = LiveClient(lb.url)
        clients.append(moved)
        await moved.connect(moving_shape(W, H))
        await moved.wait_message("hello", timeout=30)
        assert a.sessions() == 1

        # The page reconnects (its network changed) with an offer that resumes its session: it
        # reaches A, which holds the session's objects, though A is full and B down.
        await moved.wait_message("overlay", timeout=90)
        await moved.send({"type": "click", "x": W / 2, "y": H / 2})
        await moved.wait_message("overlay", lambda m: bool(m["objects"]), timeout=90)
        await wait_until(lambda: lb.states().get("replica1") == "NOLB", 90, "A full again")
        back = LiveClient(lb.url)
        clients.append(back)
        answer = await back.connect(moving_shape(W, H), resume=moved.session_id)
        assert answer["resumed"] is True and a.sessions() == 1
        await back.wait_message("objects", lambda m: bool(m["objects"]), timeout=90)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def png(width: int = 96, height: int = 64) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (40, 160, 90)).save(out, format="PNG")
    return out.getvalue()


async def test_replicas_with_a_token_are_up_and_keep_each_browsers_images_and_clips(
    guarded_cluster: tuple[Replica, Replica, Balancer], tmp_path: Path
) -> None:
    from tests.test_clip_media import write_clip

    a, b, lb = guarded_cluster
    # The health check carries the token: without it every replica answers 401 and is DOWN.
    await wait_until(lambda: lb.states() == {"replica1": "UP", "replica2": "UP"}, 90, "both UP")
    clip = write_clip(tmp_path / "clip.mp4", frames=6)

    # A person opens the start-up URL once; the cookie it sets then lets every replica in.
    with httpx.Client(base_url=lb.url, timeout=60, follow_redirects=True) as person:
        assert person.get("/", params={"token": TOKEN}).status_code == 200
        assert person.get("/api/capabilities").status_code == 200
        for _ in range(6):  # the balancer spreads these over both replicas
            r = person.get("/api/live/sessions")
            assert r.status_code == 200, r.text
        await person_live_session(lb.url, person.cookies)

    auth = {"Authorization": f"Bearer {TOKEN}"}
    with (
        httpx.Client(base_url=lb.url, headers=auth, timeout=60) as browser,
        httpx.Client(base_url=lb.url, headers=auth, timeout=60) as script,
    ):
        assert browser.get("/").status_code == 200 and browser.cookies.get("fmu-owner")
        for who, client in (("a browser", browser), ("a script without cookies", script)):
            # An image and a clip uploaded through the balancer are there at every later request,
            # and in the library, however many requests the balancer spreads.
            up = client.post("/api/images", files={"file": ("p.png", png(), "image/png")})
            assert up.status_code == 201, (who, up.text)
            image = up.json()["id"]
            sent = client.post(
                "/api/clips", files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")}
            )
            assert sent.status_code == 201, (who, sent.text)
            clip_id = sent.json()["id"]
            for _ in range(4):
                assert client.get(f"/api/images/{image}").status_code == 200, who
                assert client.get(f"/api/clips/{clip_id}").status_code == 200, who
                listed = client.get("/api/images").json()["images"]
                assert image in [i["id"] for i in listed], who
            clicked = client.post(f"/api/images/{image}/clicks", json={"x": 40, "y": 30})
            assert clicked.status_code == 200, (who, clicked.text)


async def person_live_session(base_url: str, cookies: Any) -> None:
    """A websocket through the balancer with the person's cookies only (as a page opens one) is let
    in: refused for its unknown session (4404), not for want of the token (4401)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    url = base_url.replace("http://", "ws://") + "/api/live/sessions/" + "0" * 32 + "/ws"
    async with connect(url, additional_headers={"Cookie": cookie}) as ws:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    assert ws.close_code == 4404, (ws.close_code, ws.close_reason)
