"""A clip with one frame the file cannot decode, past where the upload's probe looks (its first
frame and its last group): a request about that frame is refused by name, a click on it fails
its job by name, and the clip and its other objects stay."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import av
import pytest

from tests.test_clip_api import upload, vlm_client, wait_job
from tests.test_clip_media import square_center, square_frame

FRAMES, BAD, W, H = 6, 3, 160, 120


def write_damaged_clip(path: Path, frames: int = FRAMES, bad: int = BAD) -> Path:
    """Motion JPEG (every frame a keyframe) whose frame `bad` is junk bytes."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuvj420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(square_frame(i, W, H), format="rgb24")
            for packet in s.encode(frame):
                if i == bad:
                    junk = av.Packet(b"\x00" * 200)
                    junk.pts, junk.dts, junk.time_base = packet.pts, packet.dts, packet.time_base
                    junk.stream, junk.is_keyframe = s, True
                    packet = junk
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def test_a_frame_the_file_cannot_decode_is_named_and_the_clip_stays(
    model: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_damaged_clip(tmp_path / "damaged.mkv")
    caplog.set_level(logging.INFO, logger="fmu.clips")
    with vlm_client(model, tmp_path, "[]") as client:
        clip = upload(client, path)
        assert clip["frame_count"] == FRAMES  # the probe took it: the damage is mid-file
        cid = clip["id"]
        said = (
            f"frame {BAD} could not be decoded; the file may be damaged there: pick another frame"
        )
        # Find and find-all read the frame first: a 500 "a bug in the server" before.
        for route in ("find", "find_all"):
            r = client.post(f"/api/clips/{cid}/{route}", json={"frame": BAD, "phrase": "squares"})
            assert r.status_code == 422, r.text
            assert r.json() == {"code": "bad_video", "detail": said}

        with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
            assert ws.receive_json()["type"] == "hello"
            # A click on a good frame tracks through the clip, the damaged frame left out.
            x, y = square_center(0, W, H)
            r = client.post(f"/api/clips/{cid}/clicks", json={"frame": 0, "x": x, "y": y})
            assert r.status_code == 200, r.text
            final, _ = wait_job(ws, 1)
            assert final["state"] == "done", final
            # A click on the damaged frame: its job fails saying so, not "done" with no mask.
            x, y = square_center(BAD, W, H)
            r = client.post(f"/api/clips/{cid}/clicks", json={"frame": BAD, "x": x, "y": y})
            assert r.status_code == 200, r.text
            oid = r.json()["object_id"]
            final, _ = wait_job(ws, oid)
        assert final["state"] == "failed"
        assert final["error"] == (
            f"tracking failed: frame {BAD}, where the object was prompted, could not be decoded "
            "(the file may be damaged there): click it on another frame"
        )
        # The clip and its first object's results are still there.
        objects = client.get(f"/api/clips/{cid}").json()["objects"]
        assert [o["id"] for o in objects] == [1, oid]
        frames = client.get(f"/api/clips/{cid}/export.json").json()["objects"][0]["frames"]
        assert [f["frame"] for f in frames] == [i for i in range(FRAMES) if i != BAD]
    # The server log says how each job ended; a failed one with its traceback (it said nothing,
    # so an operator never saw a job fail).
    said = [r for r in caplog.records if r.getMessage().startswith(f"clip {cid[:8]}: object ")]
    done = [r for r in said if r.getMessage().startswith(f"clip {cid[:8]}: object 1 tracked")]
    failed = [r for r in said if r.getMessage().startswith(f"clip {cid[:8]}: object {oid}: ")]
    assert [r.levelname for r in done] == ["INFO"], said
    assert [r.levelname for r in failed] == ["WARNING"], said
    assert final["error"] in failed[0].getMessage() and failed[0].exc_info is not None
