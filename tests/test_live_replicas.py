"""Two app processes behind Debian's HAProxy, started here with the project's docker/haproxy.cfg.

Replica A takes 1 live session, replica B 2. Live sessions (real aiortc peers) are opened through
the load balancer only; where each landed is asked of the replicas themselves.
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


class Replica:
    def __init__(self, name: str, max_sessions: int, data: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data.with_suffix(".log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--host", "127.0.0.1", "--port", str(self.port),
             "--weights", "random", "--sam2-image-size", "128", "--device", "cpu",
             "--torch-threads", "1", "--max-sessions", str(max_sessions), "--data-dir", str(data)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"replica {self.name} exited; see {self.log.name}"
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/api/live/capacity", timeout=2).status_code == 200
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
    def __init__(self, replicas: list[Replica]) -> None:
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
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


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Replica, Replica, Balancer]]:
    a = Replica("A", 1, tmp_path / "a")
    b = Replica("B", 2, tmp_path / "b")
    lb = None
    try:
        deadline = time.monotonic() + 300
        while not (a.ready() and b.ready()):
            assert time.monotonic() < deadline, "the replicas did not load SAM2 within 300 s"
            time.sleep(0.5)
        lb = Balancer([a, b])
        yield a, b, lb
    finally:
        if lb is not None:
            lb.stop()
        a.stop()
        b.stop()


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
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
