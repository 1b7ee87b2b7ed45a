"""A click on a new place starts the object's description at once when a VLM is on (every mode's
rule, objects/table.py describes_at_once) - but not while the VLM is known not to answer (the
page's banner says so): the object is made and kept, with no failed description for each click;
once the VLM answers again, new objects are described at once again. Live: test_live_errors.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.fakes.openai_server import ScriptedVLMServer, free_port
from tests.test_clip_api import CLICK_FRAME
from tests.test_clip_api import upload as upload_clip
from tests.test_image_api import encoded
from tests.test_image_api import upload as upload_image
from workers.reasoning.families import DEFAULT_VLM_MODEL

pytestmark = pytest.mark.timeout(120)


def click_new(client: TestClient, mode: str, clip: Path) -> dict[str, Any]:
    """Upload an item of `mode` ("clip", "image") once, then click a new place on it."""
    if not hasattr(client, "item"):
        if mode == "clip":
            client.item = "/api/clips/" + upload_clip(client, clip)["id"]  # type: ignore[attr-defined]
        else:
            client.item = "/api/images/" + upload_image(client, encoded("PNG")).json()["id"]  # type: ignore[attr-defined]
    body: dict[str, Any] = {"x": 20, "y": 20}
    if mode == "clip":
        body["frame"] = CLICK_FRAME
    r = client.post(f"{client.item}/clicks", json=body)  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("mode", ["clip", "image"])
def test_no_description_at_once_while_the_vlm_is_known_down(
    mode: str,
    model: Any,
    clip_path: Path,
    tmp_path: Path,
) -> None:
    port = free_port()
    vlm = Settings(vlm_url=f"http://127.0.0.1:{port}/v1", vlm_connect_timeout_s=1)
    app = create_app(
        Settings(data_dir=tmp_path / "data"),
        vision_model=model,
        reasoner=build_reasoner(vlm)[0],
        load_vision=False,
    )
    app.state.services.vlm_health_every_s = 0  # ask the VLM on every poll here
    with TestClient(app) as client:
        # Nothing known yet: the rule as it always was.
        assert click_new(client, mode, clip_path)["describe"] is True
        # The page's poll finds it down: a new object is made, not described at once.
        assert client.get("/api/vlm").json()["reachable"] is False
        down = click_new(client, mode, clip_path)
        assert down["describe"] is False
        listed = client.get(client.item).json()["objects"]  # type: ignore[attr-defined]
        assert len(listed) == 2  # both objects kept
        # It answers again: the next poll says so, and new objects are described at once again.
        with ScriptedVLMServer(answer="A red square.", model=DEFAULT_VLM_MODEL, port=port):
            assert client.get("/api/vlm").json()["reachable"] is True
            assert click_new(client, mode, clip_path)["describe"] is True


def test_no_description_at_once_while_the_vlm_serves_another_model(
    model: Any,
    clip_path: Path,
    tmp_path: Path,
) -> None:
    """It answers, but not with the configured --vlm-model: every description would get a 404."""
    with ScriptedVLMServer(answer="A red square.", model="another/model") as srv:
        named = Settings(vlm_url=srv.url, vlm_model=DEFAULT_VLM_MODEL)
        app = create_app(
            Settings(data_dir=tmp_path / "data"),
            vision_model=model,
            reasoner=build_reasoner(named)[0],
            load_vision=False,
        )
        with TestClient(app) as client:
            status = client.get("/api/vlm").json()
            assert status["reachable"] is True and "cannot serve" in status["note"]
            assert click_new(client, "image", clip_path)["describe"] is False
