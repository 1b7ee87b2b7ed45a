"""A server that runs for weeks: clips and images made, tracked, exported and deleted again and
again leave no file descriptor (containers, decoders, database handles) and no thread (decode
pools, job tasks) behind."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from streamer.app import create_app
from streamer.settings import Settings
from tests.test_clip_media import write_clip

# Pools that grow with how many calls overlap, up to a bound, and keep idle threads a while:
# asyncio's default executor (asyncio.to_thread) and AnyIO's (the test client's). Not leaks.
POOLED = ("asyncio_", "AnyIO worker thread")


def own_threads() -> list[str]:
    """The threads that are not a bounded pool's, by name."""
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith(POOLED))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> list[str]:
    """What each open file descriptor is (a file's path, a socket, a pipe), for a failure."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own, closed since
            pass
    return sorted(targets)


def one_round(client: TestClient, clip: Path, image: bytes) -> None:
    """What a person does: a clip with two objects tracked through it, its export, an image
    with an object, then both deleted."""
    with open(clip, "rb") as f:
        r = client.post("/api/clips", files={"file": ("desk.mp4", f, "video/mp4")})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    for x, y in ((20, 30), (70, 20)):
        r = client.post(f"/api/clips/{cid}/clicks", json={"frame": 4, "x": x, "y": y})
        assert r.status_code == 200, r.text  # no object named: each starts one
    deadline = time.monotonic() + 120
    while True:
        objects = client.get(f"/api/clips/{cid}").json()["objects"]
        states = [o["job"] and o["job"]["state"] for o in objects]
        if len(objects) == 2 and all(s == "done" for s in states):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.05)
    assert client.get(f"/api/clips/{cid}/export.json").status_code == 200
    r = client.post("/api/images", files={"file": ("pic.png", image, "image/png")})
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    assert client.post(f"/api/images/{iid}/clicks", json={"x": 20, "y": 20}).status_code == 200
    assert client.delete(f"/api/clips/{cid}").status_code in (200, 204)
    assert client.delete(f"/api/images/{iid}").status_code in (200, 204)


def test_rounds_of_clips_and_images_leave_no_file_or_thread_behind(
    model: Any, tmp_path: Path
) -> None:
    clip = write_clip(tmp_path / "desk.mp4", frames=12, width=96, height=64)
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 96, 3), 120, np.uint8)).save(buf, "PNG")
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    app = create_app(settings, vision_model=model, reasoner=None, load_vision=False)
    with TestClient(app) as client:
        one_round(client, clip, buf.getvalue())  # pools and caches made once are made here
        fds, threads = open_fds(), len(own_threads())
        for _ in range(4):
            one_round(client, clip, buf.getvalue())
        # A job's decode thread ends a moment after its job: give them a few seconds.
        deadline = time.monotonic() + 10
        while open_fds() > fds or len(own_threads()) > threads:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert open_fds() <= fds, fd_targets()
        assert len(own_threads()) <= threads, own_threads()
