"""Clip uploads that must be refused, or cannot be kept: each gets an error a person understands, and nothing stays on disk."""

from __future__ import annotations

import io
import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from streamer.app import create_app
from streamer.settings import Settings
from streamer.storage.db import DB_NAME
from tests.test_clip_media import write_clip


def _png(tmp: Path) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(tmp: Path) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _truncated_mp4(tmp: Path) -> bytes:
    data = write_clip(tmp / "t.mp4", frames=30).read_bytes()
    return data[: len(data) // 2]


def _truncated_webm(tmp: Path) -> bytes:
    data = write_clip(tmp / "t.webm", frames=30, codec="libvpx").read_bytes()
    return data[: int(len(data) * 0.6)]


def _zero_frames(tmp: Path) -> bytes:
    path = tmp / "z.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    return path.read_bytes()


def _audio_only(tmp: Path) -> bytes:
    path = tmp / "a.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path.read_bytes()


def _clip(tmp: Path, **kw: Any) -> bytes:
    return write_clip(tmp / "ok.mp4", **kw).read_bytes()


Maker = Callable[[Path], bytes]

# (file name, content maker, settings overrides, expected status, words the message must contain)
BAD_UPLOADS: list[tuple[str, Maker, dict[str, Any], int, str]] = [
    # garbage bytes with a video extension (seeded: now and then urandom's bytes sniff as an
    # audio format, and the message is then "no video in it", as clear but other words)
    ("garbage.mp4", lambda t: random.Random(0).randbytes(4096), {}, 422, "not a video we can read"),
    # a text file
    ("notes.txt", lambda t: b"hello, this is not a video\n" * 50, {}, 422, "not a video"),
    # a PNG image renamed .mp4
    ("photo.mp4", _png, {}, 422, "Image mode"),
    # a JPEG image renamed .mov
    ("photo.mov", _jpeg, {}, 422, "Image mode"),
    # the first half of an MP4 (cut off while uploading: no index at the end)
    ("half.mp4", _truncated_mp4, {}, 422, "cut short"),
    # a WebM cut off in the middle of the stream
    ("cut.webm", _truncated_webm, {}, 422, "incomplete"),
    # a valid container with a video stream but no frames
    ("empty.mp4", _zero_frames, {}, 422, "no video"),
    # an audio file
    ("sound.wav", _audio_only, {}, 422, "no video"),
    # an empty file
    ("nothing.mp4", lambda t: b"", {}, 400, "empty"),
    # over the byte limit (1 MB), refused while streaming
    ("big.mp4", lambda t: os.urandom(1_600_000), {"max_upload_mb": 1}, 413, "too large"),
    # over the duration limit: 40 frames at 25 fps is 1.6 s
    ("long.mp4", lambda t: _clip(t, frames=40), {"max_clip_seconds": 1.0}, 413, "too long"),
    # over the resolution limit
    (
        "wide.mp4",
        lambda t: _clip(t, frames=3, width=320, height=240),
        {"max_clip_width": 200, "max_clip_height": 200},
        413,
        "resolution",
    ),
]


@pytest.mark.parametrize(
    "name,make,overrides,status,words", BAD_UPLOADS, ids=[row[0] for row in BAD_UPLOADS]
)
def test_bad_upload_is_refused_and_leaves_nothing(
    tmp_path: Path, name: str, make: Maker, overrides: dict[str, Any], status: int, words: str
) -> None:
    data_dir = tmp_path / "data"
    app = create_app(Settings(data_dir=data_dir, **overrides), reasoner=None, load_vision=False)
    content = make(tmp_path)
    with TestClient(app) as client:
        r = client.post("/api/clips", files={"file": (name, content, "application/octet-stream")})
        assert r.status_code == status, r.text
        assert words.lower() in r.json()["detail"].lower(), r.json()["detail"]
    # nothing but the database is left, and it has no row for the refused upload
    leftovers = [p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(DB_NAME)]
    assert leftovers == []
    with sqlite3.connect(data_dir / DB_NAME) as db:
        assert db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0
    assert not list((data_dir / "clips").glob("*")) if (data_dir / "clips").exists() else True


def test_a_form_past_the_limit_in_parts_that_are_not_the_file_is_refused(tmp_path: Path) -> None:
    """Sent without a length, 1.5 MB in a text field before a small clip is held to the 1 MB
    limit as a big file is: refused as it arrives, and nothing is kept."""
    boundary = "fmu-field-flood"
    field = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\n'.encode()
        + b"x" * 1_500_000
        + b"\r\n"
    )
    clip = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="ok.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode() + _clip(tmp_path, frames=3)
    body = field + clip + f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    data_dir = tmp_path / "data"
    app = create_app(Settings(data_dir=data_dir, max_upload_mb=1), reasoner=None, load_vision=False)
    with TestClient(app) as client:
        r = client.post(
            "/api/clips",
            content=chunks(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 413 and "too large" in r.json()["detail"], r.text
        assert client.get("/api/clips").json()["clips"] == []
    assert not [p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(DB_NAME)]


def test_not_multipart_and_wrong_field(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "d"), reasoner=None, load_vision=False)
    with TestClient(app) as client:
        r = client.post("/api/clips", content=b"raw bytes", headers={"content-type": "video/mp4"})
        assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
        r = client.post("/api/clips", files={"video": ("a.mp4", b"1234", "video/mp4")})
        assert r.status_code == 400 and "'file'" in r.json()["detail"]
    assert not [
        p for p in (tmp_path / "d").rglob("*") if p.is_file() and not p.name.startswith(DB_NAME)
    ]


# One row per container a person may upload; each must be accepted and playable or proxied.
@pytest.mark.parametrize(
    "suffix,codec,playable",
    [
        (".mp4", "libx264", True),  # MP4 / H.264
        (".webm", "libvpx", True),  # WebM / VP8
        (".mkv", "libvpx-vp9", True),  # Matroska / VP9
        (".mov", "libx264", True),  # QuickTime / H.264
        (".avi", "mjpeg", False),  # MJPEG in AVI: browsers cannot play it, a proxy is made
    ],
)
def test_good_containers_are_accepted(
    tmp_path: Path, suffix: str, codec: str, playable: bool
) -> None:
    app = create_app(Settings(data_dir=tmp_path / "d"), reasoner=None, load_vision=False)
    path = write_clip(tmp_path / f"c{suffix}", frames=12, codec=codec, width=98, height=66)
    with TestClient(app) as client:
        r = client.post("/api/clips", files={"file": (path.name, path.read_bytes(), "video/x")})
        assert r.status_code == 201, r.text
        clip = r.json()
        assert clip["frame_count"] == 12 and clip["playable"] is playable
        if not playable:
            with client.websocket_connect(f"/api/clips/{clip['id']}/ws") as ws:
                hello = ws.receive_json()["clip"]
                if hello["proxy"] != "ready":
                    msg = ws.receive_json()
                    assert msg == {
                        "type": "proxy",
                        "state": "ready",
                        "video_url": clip["video_url"],
                        "message": None,
                    }
        video = client.get(clip["video_url"])
        assert video.status_code == 200 and video.headers["content-type"].startswith("video/")
        with av.open(io.BytesIO(video.content)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 12


def test_deleting_a_clip_stops_the_render_of_its_browser_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An MJPEG clip's browser copy is being rendered when the clip is deleted: the render stops
    before the delete answers (it went on to the last frame, into the deleted folder)."""
    import time

    from streamer.clip import exports

    rendered: list[int] = []
    render = exports.render_overlay_video

    def slowly(
        src: Any, info: Any, tracks: Any, dest: Any, *, on_frame: Any = None, **kw: Any
    ) -> Any:
        def each(idx: int) -> None:
            rendered.append(idx)
            time.sleep(0.1)  # a long clip, a busy machine
            if on_frame is not None:
                on_frame(idx)

        return render(src, info, tracks, dest, on_frame=each, **kw)

    monkeypatch.setattr(exports, "render_overlay_video", slowly)
    app = create_app(Settings(data_dir=tmp_path / "d"), reasoner=None, load_vision=False)
    path = write_clip(tmp_path / "c.avi", frames=60, codec="mjpeg", width=98, height=66)
    with TestClient(app) as client:
        r = client.post("/api/clips", files={"file": (path.name, path.read_bytes(), "video/x")})
        assert r.status_code == 201 and not r.json()["playable"], r.text
        cid = r.json()["id"]
        deadline = time.monotonic() + 30
        while len(rendered) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(rendered) >= 2, "the browser copy's render never started"
        assert client.delete(f"/api/clips/{cid}").status_code == 200
        stopped_at = len(rendered)
        time.sleep(1.0)
        assert len(rendered) == stopped_at < 60
        assert not (tmp_path / "d" / "clips" / cid).exists()


@pytest.mark.parametrize("name", ["clip.mp4", "old.avi", "photo.png"])
def test_an_upload_the_database_cannot_keep_leaves_nothing_and_the_next_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, sam2_tiny_128: Any
) -> None:
    """The disk fills as an upload's row is written: the upload is answered with an error and
    its files go (its folder stayed until a restart, and an MJPEG clip's browser copy rendered
    into it); the next upload, once there is room, is kept as usual."""
    from streamer.clip import exports
    from streamer.storage import clips as rows

    rendered: list[str] = []  # the folder of each browser copy rendered
    render = exports.render_overlay_video

    def recording(src: Any, info: Any, tracks: Any, dest: Path, **kw: Any) -> Any:
        rendered.append(dest.parent.name)
        return render(src, info, tracks, dest, **kw)

    monkeypatch.setattr(exports, "render_overlay_video", recording)
    insert = rows.insert_clip

    def disk_full(*args: Any, **kw: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, weights="random", device="cpu")
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    if name.endswith(".png"):
        kind, content = "images", _png(tmp_path)
    else:
        codec = "mjpeg" if name.endswith(".avi") else "libx264"
        kind, content = "clips", write_clip(tmp_path / name, frames=6, codec=codec).read_bytes()
    with TestClient(app, raise_server_exceptions=False) as client:
        monkeypatch.setattr(rows, "insert_clip", disk_full)
        r = client.post(f"/api/{kind}", files={"file": (name, content, "application/x")})
        assert r.status_code == 500 and r.json()["code"] == "internal", r.text
        left = [p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(DB_NAME)]
        assert left == []
        assert client.get(f"/api/{kind}").json()[kind] == []

        monkeypatch.setattr(rows, "insert_clip", insert)
        r = client.post(f"/api/{kind}", files={"file": (name, content, "application/x")})
        assert r.status_code == 201, r.text
        kept = r.json()["id"]
        assert [i["id"] for i in client.get(f"/api/{kind}").json()[kind]] == [kept]
        if name.endswith(".avi"):  # its browser copy is made, and only its
            deadline = time.monotonic() + 60
            while client.get(f"/api/clips/{kept}").json()["proxy"] == "running":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert rendered == [kept]
