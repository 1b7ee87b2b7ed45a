"""Before SAM2 has loaded, every mode answers 503 with why and what to do, and loses nothing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from streamer.app import create_app
from streamer.settings import Settings


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_upload_before_the_model_loads_says_to_wait(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path), load_vision=False)
    with TestClient(app) as client:
        r = client.post("/api/images", files={"file": ("a.png", _png(), "image/png")})
        assert r.status_code == 503
        detail = r.json()["detail"]
        assert "segmentation is not available yet" in detail
        assert "still loading" in detail and "/readyz" in detail


def test_model_load_failure_is_what_the_503_says(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path), load_vision=False)
    app.state.services.vision_error = "no SAM2 checkpoint at '/x.pt': pass --weights random"
    with TestClient(app) as client:
        r = client.post("/api/images", files={"file": ("a.png", _png(), "image/png")})
        assert r.status_code == 503
        assert "no SAM2 checkpoint at '/x.pt'" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200  # the server stays up


async def test_live_offer_before_the_model_loads_is_refused_with_why(tmp_path: Path) -> None:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
    finally:
        await pc.close()
    app = create_app(Settings(data_dir=tmp_path), load_vision=False)
    with TestClient(app) as client:
        r = client.post("/api/live/offer", json=offer)
    assert r.status_code == 503
    assert "still loading" in r.text and "/readyz" in r.text


def test_capacity_check_keeps_a_loading_replica_out_of_the_balancer(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, max_sessions=2), load_vision=False)
    with TestClient(app) as client:
        r = client.get("/api/live/capacity")
        assert r.status_code == 503  # HAProxy marks it down: no session is sent to it
        body = r.json()
        assert body["ready"] is False and "still loading" in body["detail"]
        assert (body["sessions"], body["max_sessions"], body["room"]) == (0, 2, 2)
        app.state.services.vision_model = object()  # loaded: it takes sessions
        r = client.get("/api/live/capacity")
        assert r.status_code == 200 and r.json()["ready"] is True
