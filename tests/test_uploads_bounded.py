"""Uploads are bounded while they arrive: a stalled body is dropped, and uploads at once are capped
and counted (the bytes on disk in flight are what the disk budget reads)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from streamer.app import create_app
from streamer.settings import Settings
from tests.conftest import ServerThread

BOUNDARY = "fmuboundary"


def stalled_upload(port: int) -> socket.socket:
    """Starts an image upload that sends 64 KB of its declared 1 MB, then nothing."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            "POST /api/images HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            "Content-Length: 1000000\r\n\r\n"
        ).encode()
        + head
        + b"\x89PNG" * (16 * 1024)
    )
    return sock


def test_a_stalled_upload_is_dropped_and_uploads_at_once_are_capped(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", max_uploads_in_flight=2, upload_idle_timeout_s=2.0
    )
    app = create_app(settings, reasoner=None, load_vision=False)
    app.state.services.vision_model = object()  # past the readiness check: only the body matters
    with ServerThread(app) as server:
        stalled = stalled_upload(server.port)
        try:
            deadline = time.monotonic() + 20
            while server.call(lambda: app.state.uploads.bytes_in_flight) == 0:
                assert time.monotonic() < deadline, "the stalled upload was never counted"
                time.sleep(0.05)
            # the same browser (anonymous) may hold one upload at a time at this cap
            second = httpx.post(
                f"{server.base_url}/api/images",
                files={"file": ("b.png", b"\x89PNG", "image/png")},
                timeout=20,
            )
            assert second.status_code == 429 and "too many uploads" in second.json()["detail"]
            stalled.settimeout(30)
            answer = ""
            while chunk := stalled.recv(4096):  # the head and the body may come apart
                answer += chunk.decode("latin-1")
                if "\r\n\r\n" in answer and len(answer.split("\r\n\r\n", 1)[1]) >= int(
                    answer.lower().split("content-length:", 1)[1].split("\r\n", 1)[0]
                ):
                    break
        finally:
            stalled.close()
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert "stalled" in answer
        assert server.call(lambda: app.state.uploads.bytes_in_flight) == 0
        leftovers = [
            p
            for p in (tmp_path / "data").rglob("*")
            if p.is_file() and not p.name.startswith("fmu.sqlite3")  # the database, not media
        ]
        assert leftovers == []  # the partial file is gone
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200
