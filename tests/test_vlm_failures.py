"""The VLM's failures said as what they are: a check that never ran has no IoU and says why, an
empty answer is no chat turn, the hint names the configured model and only options the command
takes, an answer that is no chat stream says so, and a server whose chat requests all fail shows as
not working on the page's banner (without a chat request per poll)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.conftest import ServerThread
from tests.fakes.openai_server import ScriptedVLMServer, free_port
from tests.test_image_api import encoded, ndjson, upload
from workers.reasoning import OpenAICompatibleBackend, VLMBadResponse
from workers.reasoning import openai_backend as openai_module

ROOT = Path(__file__).resolve().parents[1]
OTHER_MODEL = "org/Other-VL-7B"  # a --vlm-model that is not the default


def _app(model: Any, tmp_path: Path, vlm: Settings) -> Any:
    reasoner, why = build_reasoner(vlm)
    assert why is None
    settings = Settings(data_dir=tmp_path / "data")
    return create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)


@pytest.fixture
def image_object(model: Any, tmp_path: Path) -> Iterator[Any]:
    """(server, client, image id, object id, paths) of one clicked object on an uploaded image;
    the scripted VLM answers what `server.answer` says (a test sets it before asking)."""
    with ScriptedVLMServer(answer="A red square.") as srv:
        vlm = Settings(vlm_url=srv.url, vlm_family="qwen2.5-vl")
        with TestClient(_app(model, tmp_path, vlm)) as client:
            img = upload(client, encoded("PNG")).json()
            r = client.post(f"/api/images/{img['id']}/clicks", json={"x": 70, "y": 60})
            assert r.status_code == 200, r.text
            oid = r.json()["object"]["id"]
            yield srv, client, img["id"], oid


def test_a_description_whose_check_never_ran_has_no_iou_and_says_why(image_object: Any) -> None:
    """The VLM dies once the description's text is written: the description is kept, unverified,
    with no IoU (the check never ran, so no made-up 0.00) and the reason on the verdict."""
    srv, client, image_id, oid = image_object

    def dies_after_describing(body: dict[str, Any]) -> str:
        srv.status_code = 500  # every request from now on (grounding it) fails
        return "A red square."

    srv.answer = dies_after_describing
    events = ndjson(client.post(f"/api/images/{image_id}/objects/{oid}/describe"))
    verdict = next(e for e in events if e["type"] == "verdict")
    assert verdict["description"] == "A red square."
    assert verdict["verdict"] == "unverified" and verdict["attempts"] == 1
    assert verdict["iou"] is None  # not 0.0: nothing was measured
    assert "grounding it failed" in verdict["note"] and "(500)" in verdict["note"]
    # What the image keeps (and a page that opens it again shows): no IoU either, and why.
    (kept,) = client.get(f"/api/images/{image_id}").json()["objects"]
    assert kept["description"] == "A red square." and kept["iou"] is None
    assert kept["note"] == verdict["note"]


def test_an_empty_answer_is_an_error_not_a_turn(image_object: Any) -> None:
    srv, client, image_id, oid = image_object
    chat = f"/api/images/{image_id}/objects/{oid}/chat"
    srv.answer = ""
    events = ndjson(client.post(chat, json={"question": "What colour is it?"}))
    assert [e["type"] for e in events] == ["error"]
    assert "the VLM answered nothing" in events[0]["message"]
    assert events[0]["request"] == "chat" and events[0]["object_id"] == oid
    (kept,) = client.get(f"/api/images/{image_id}").json()["objects"]
    assert kept["chat"] == []  # no bare "A:" kept in the history
    # The next question is asked without the empty turn.
    srv.answer = "It is red."
    seen = len(srv.requests)
    events = ndjson(client.post(chat, json={"question": "And now?"}))
    assert events[-1]["type"] == "chat_done" and events[-1]["answer"] == "It is red."
    roles = [m["role"] for m in srv.requests[seen]["messages"] if m["role"] != "system"]
    assert roles == ["user"]


def test_a_vlm_that_is_down_is_told_to_start_the_configured_model(
    model: Any, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    vlm = Settings(vlm_url=url, vlm_model=OTHER_MODEL, vlm_family="qwen2.5-vl")
    with TestClient(_app(model, tmp_path, vlm)) as client:
        img = upload(client, encoded("PNG")).json()
        oid = client.post(f"/api/images/{img['id']}/clicks", json={"x": 70, "y": 60}).json()
        events = ndjson(
            client.post(f"/api/images/{img['id']}/objects/{oid['object']['id']}/describe")
        )
    (error,) = [e for e in events if e["type"] == "error"]
    assert f"no VLM server at {url}" in error["message"]
    assert f"`vllm serve {OTHER_MODEL}`" in error["message"]
    assert "Qwen2.5-VL-3B" not in error["message"]


def test_no_vlm_names_the_configured_model(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, vlm_model=OTHER_MODEL)
    with TestClient(create_app(settings, load_vision=False)) as client:
        reason = client.get("/api/capabilities").json()["descriptions_off_reason"]
    assert f"`vllm serve {OTHER_MODEL}`" in reason and "--serve-vlm" in reason  # the server's


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["eval", "--coco", "instances.json"], id="eval"),
        pytest.param(["dataset", "--coco", "instances.json", "--out", "ds"], id="dataset"),
    ],
)
def test_offline_commands_name_only_options_they_take(command: list[str], tmp_path: Path) -> None:
    """`eval` and `dataset` reject --serve-vlm: without a VLM they say to start the model they
    were given and pass --vlm-url, nothing else."""
    args = [*command, "--images", str(tmp_path), "--vlm-model", OTHER_MODEL]
    proc = subprocess.run(
        [sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert f"`vllm serve {OTHER_MODEL}`" in proc.stderr and "--vlm-url" in proc.stderr
    assert "--serve-vlm" not in proc.stderr


async def _chat_once(backend: OpenAICompatibleBackend) -> list[Any]:
    return [p async for p in backend.stream_chat([{"role": "user", "content": "hi"}])]


async def test_a_web_page_instead_of_a_chat_stream_says_what_came_back() -> None:
    """--vlm-url at a web server (or a proxy's page): HTTP 200 with HTML. Said as what it is."""

    async def page(request: Request) -> Response:
        return Response("<html><body>Welcome to nginx!</body></html>", media_type="text/html")

    app = Starlette(routes=[Route("/v1/chat/completions", page, methods=["POST"])])
    with ServerThread(app) as server:
        backend = OpenAICompatibleBackend(f"{server.base_url}/v1", "m")
        with pytest.raises(VLMBadResponse) as info:
            await _chat_once(backend)
        await backend.aclose()
    message = str(info.value)
    assert "did not answer as an OpenAI-compatible server" in message
    assert "HTTP 200 with text/html" in message and "Welcome to nginx!" in message
    assert "after 0 pieces" not in message


async def test_every_chat_failing_shows_as_not_working_until_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GET /models fine, every chat a 500: after the first failed chat, health says it does not
    work and why; no chat request is sent to find out while chats work, and one small one (at
    most every CHAT_PROBE_EVERY_S) sees it working again."""
    with ScriptedVLMServer(answer="ok") as srv:
        backend = OpenAICompatibleBackend(srv.url, srv.model, retry_backoff_s=0.01)
        assert "model_served" not in await backend.health()
        assert srv.requests == []  # health asks /models only
        srv.status_code = 500
        with pytest.raises(VLMBadResponse):
            await _chat_once(backend)
        asked = len(srv.requests)
        health = await backend.health()
        assert health["reachable"] is True and health["model_served"] is False
        assert "chat requests fail" in health["detail"] and "(500)" in health["detail"]
        assert len(srv.requests) == asked  # not asked again within CHAT_PROBE_EVERY_S
        srv.status_code = 200
        monkeypatch.setattr(openai_module, "CHAT_PROBE_EVERY_S", 0.0)
        health = await backend.health()
        assert "model_served" not in health and health["reachable"] is True
        assert len(srv.requests) == asked + 1  # the one probe
        await backend.health()
        assert len(srv.requests) == asked + 1  # working: no more probes
        await backend.aclose()


def test_the_page_banner_says_chats_fail(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ScriptedVLMServer(answer="A red square.", status_code=503) as srv:
        app = _app(model, tmp_path, Settings(vlm_url=srv.url, vlm_family="qwen2.5-vl"))
        app.state.services.vlm_health_every_s = 0  # ask the VLM on every poll here
        with TestClient(app) as client:
            assert client.get("/api/vlm").json()["note"] is None  # nothing known yet
            img = upload(client, encoded("PNG")).json()
            oid = client.post(f"/api/images/{img['id']}/clicks", json={"x": 70, "y": 60}).json()
            client.post(f"/api/images/{img['id']}/objects/{oid['object']['id']}/describe")
            status = client.get("/api/vlm").json()
            assert status["note"] and "chat requests fail" in status["note"]
            assert "(503)" in status["note"]
            srv.status_code = 200
            monkeypatch.setattr(openai_module, "CHAT_PROBE_EVERY_S", 0.0)
            assert client.get("/api/vlm").json()["note"] is None  # working again


async def test_a_stream_cut_short_is_not_a_server_that_fails_every_chat() -> None:
    """One answer cut off mid-way (a dropped connection, a restart) is that answer's error; the
    page's VLM controls stay on (it greyed them out on every page until a probe 30 s later)."""
    with ScriptedVLMServer(answer="a red square on a grey desk", cut_after=2) as srv:
        backend = OpenAICompatibleBackend(srv.url, srv.model, retry_backoff_s=0.01)
        with pytest.raises(VLMBadResponse):
            await _chat_once(backend)
        health = await backend.health()
        assert health["reachable"] is True and "model_served" not in health, health
        await backend.aclose()
