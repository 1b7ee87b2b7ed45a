"""Which VLM family the service chose, and why, is visible in /readyz; SAM2 loads on its thread."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient

from streamer.app import create_app
from streamer.settings import Settings
from tests.fakes.openai_server import ScriptedVLMServer


def test_readyz_shows_the_family_read_from_the_servers_root_behind_an_alias(
    sam2_tiny_random: object, tmp_path: Path
) -> None:
    # A --served-model-name alias says nothing; vLLM's root (the real path) does.
    with ScriptedVLMServer(answer=["unused"], model="vlm") as server:
        server_root = "/models/Qwen3-VL-8B-Instruct"
        server.root = server_root
        settings = Settings(data_dir=tmp_path, vlm_url=server.url, vlm_model="vlm")
        with TestClient(create_app(settings, vision_model=sam2_tiny_random)) as client:
            vlm = client.get("/readyz").json()["vlm"]
    assert vlm["family"] == "qwen3-vl" and vlm["coords"] == "relative1000"
    assert server_root in vlm["family_reason"]


def test_with_no_vlm_model_the_service_uses_the_model_its_server_serves(
    sam2_tiny_random: object, tmp_path: Path
) -> None:
    """`--vlm-url` alone: the service asks the server which model it serves, and describes with
    it (it named Qwen2.5-VL-3B by default, and any other model was "not among them" until
    --vlm-model named it)."""
    from tests.test_image_api import encoded, ndjson, upload

    served = "Qwen/Qwen3-VL-8B-Instruct"
    with ScriptedVLMServer(answer="A red cup.", model=served) as server:
        settings = Settings(data_dir=tmp_path, vlm_url=server.url, verify_max_attempts=1)
        with TestClient(create_app(settings, vision_model=sam2_tiny_random)) as client:
            vlm = client.get("/readyz").json()["vlm"]
            url = f"/api/images/{upload(client, encoded('PNG')).json()['id']}"
            oid = client.post(f"{url}/clicks", json={"x": 70, "y": 60}).json()["object"]["id"]
            events = ndjson(client.post(f"{url}/objects/{oid}/describe"))
    assert vlm["model"] == served and vlm.get("model_served") is not False, vlm
    assert vlm["family"] == "qwen3-vl", vlm
    assert "A red cup." in "".join(e["text"] for e in events if e["type"] == "description_token")
    assert {r["model"] for r in server.requests} == {served}


def test_readyz_says_what_to_pass_for_a_model_auto_cannot_place(
    sam2_tiny_random: object, tmp_path: Path
) -> None:
    with ScriptedVLMServer(answer=["unused"], model="my-finetune") as server:
        settings = Settings(data_dir=tmp_path, vlm_url=server.url, vlm_model="my-finetune")
        with TestClient(create_app(settings, vision_model=sam2_tiny_random)) as client:
            vlm = client.get("/readyz").json()["vlm"]
            forced = Settings(
                data_dir=tmp_path / "b",
                vlm_url=server.url,
                vlm_model="my-finetune",
                vlm_family="qwen2.5-vl",
            )
            with TestClient(create_app(forced, vision_model=sam2_tiny_random)) as second:
                chosen = second.get("/readyz").json()["vlm"]
    assert vlm["reachable"] is True and vlm["family"] is None
    assert "--vlm-family" in vlm["family_reason"] and "'my-finetune'" in vlm["family_reason"]
    assert chosen["family"] == "qwen2.5-vl" and chosen["family_reason"] == "--vlm-family qwen2.5-vl"


def test_sam2_loads_on_the_vision_thread_at_start(monkeypatch, tmp_path: Path) -> None:
    # main.py loads SAM2 before serving, through the same one thread every later SAM2 call uses
    # (a second OpenMP thread team cost every step ~10%).
    from streamer import services as services_module

    threads: list[str] = []

    def fake_load(settings: Settings) -> object:
        threads.append(threading.current_thread().name)
        return object()

    monkeypatch.setattr(services_module, "load_vision_model", fake_load)
    app = create_app(Settings(data_dir=tmp_path), reasoner=None, load_vision=False)
    services = app.state.services
    services.load_vision_now()
    seen: list[str] = []
    services._executor.submit(lambda: seen.append(threading.current_thread().name)).result()
    assert services.vision_model is not None
    assert threads == seen and threads[0].startswith("sam2")
