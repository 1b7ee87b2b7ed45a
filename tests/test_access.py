"""Access control: the token, the Host and Origin checks, bounded bodies and usable offers.

Each case is a hostile or careless request and what the person (or the page) must get back.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from streamer.app import create_app
from streamer.cli.serve import network_access
from streamer.settings import Settings

TOKEN = "s3cret-token-for-tests"


def make_client(tmp_path: Path, **overrides: Any) -> TestClient:
    settings = Settings(data_dir=tmp_path / "data", **overrides)
    return TestClient(create_app(settings, reasoner=None, load_vision=False))


def test_a_token_server_refuses_requests_without_it(tmp_path: Path) -> None:
    with make_client(tmp_path, auth_token=TOKEN) as client:
        r = client.get("/api/live/sessions")
        assert r.status_code == 401
        assert "token" in r.json()["detail"]
        assert client.get("/", params={"token": "wrong-token"}).status_code == 401
        assert client.get("/healthz").status_code == 200  # liveness probes stay open
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/live/sessions", headers=bearer).status_code == 200


def test_the_start_up_url_sets_the_cookie_once_and_drops_the_token(tmp_path: Path) -> None:
    with make_client(tmp_path, auth_token=TOKEN, port=8123) as client:
        r = client.get("/", params={"token": TOKEN}, follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == "/"  # the token leaves the address bar
        assert client.cookies.get("fmu-token-8123") == TOKEN
        # from now on the cookie is enough: the page and the API answer
        assert client.get("/").status_code == 200
        assert client.get("/api/live/sessions").status_code == 200
        with client.websocket_connect("/api/clips/abc/ws") as ws:  # the page's sockets too
            assert ws.receive_json()["code"] == "unknown_clip"


def test_a_request_that_changes_state_with_the_token_in_its_url_is_served(
    tmp_path: Path,
) -> None:
    from tests.test_clip_media import write_clip

    clip = write_clip(tmp_path / "moving.mp4", frames=4, width=32, height=32)
    with make_client(tmp_path, auth_token=TOKEN) as client:
        # A 303 to the address without the token turned these into GETs: the upload's body
        # was dropped and the client that followed it got the list of clips instead.
        r = client.post(
            "/api/clips",
            params={"token": TOKEN},
            files={"file": ("moving.mp4", clip.read_bytes(), "video/mp4")},
            follow_redirects=False,
        )
        assert r.status_code == 201, r.text
        clip_id = r.json()["id"]
        bearer = {"authorization": f"Bearer {TOKEN}"}
        listed = client.get("/api/clips", headers=bearer).json()
        assert clip_id in str(listed)
        r = client.delete(f"/api/clips/{clip_id}", params={"token": TOKEN}, follow_redirects=False)
        assert r.status_code == 200, r.text
        assert clip_id not in str(client.get("/api/clips", headers=bearer).json())
        # a wrong token is still refused, whatever the method
        r = client.post("/api/clips", params={"token": "wrong-token"}, follow_redirects=False)
        assert r.status_code == 401


def test_websockets_need_the_token_too(tmp_path: Path) -> None:
    with make_client(tmp_path, auth_token=TOKEN) as client:
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect("/api/clips/abc/ws"):
                pass
        assert refused.value.code == 4401
        # with the token the socket opens (and says the clip is unknown)
        with client.websocket_connect(f"/api/clips/abc/ws?token={TOKEN}") as ws:
            assert ws.receive_json()["code"] == "unknown_clip"


def test_an_unknown_host_name_is_refused_without_a_token(tmp_path: Path) -> None:
    # DNS rebinding: a page at evil.example whose name now points at 127.0.0.1
    with make_client(tmp_path) as client:
        r = client.get("/api/live/sessions", headers={"host": "evil.example:8080"})
        assert r.status_code == 400 and r.json()["code"] == "bad_host"
        assert "--allowed-hosts" in r.json()["detail"]
        assert client.get("/healthz", headers={"host": "localhost:8080"}).status_code == 200


def test_allowed_hosts_names_the_proxy_host(tmp_path: Path) -> None:
    with make_client(tmp_path, auth_token=TOKEN, allowed_hosts="fmu.example.org") as client:
        bearer = {"authorization": f"Bearer {TOKEN}"}
        ok = client.get("/api/live/sessions", headers={**bearer, "host": "fmu.example.org"})
        assert ok.status_code == 200
        other = client.get("/api/live/sessions", headers={**bearer, "host": "other.example"})
        assert other.status_code == 400
        # A container's or a balancer's health check asks by its own name (localhost): still ok.
        assert client.get("/healthz", headers={"host": "localhost:8080"}).status_code == 200


def test_cross_site_requests_that_change_state_are_refused(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        evil = {"origin": "https://evil.example"}
        r = client.delete("/api/clips/abc", headers=evil)
        assert r.status_code == 403 and r.json()["code"] == "bad_origin"
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect("/api/clips/abc/ws", headers=evil):
                pass
        assert refused.value.code == 4403
        # the server's own page (same origin) goes through to the route
        same = client.delete("/api/clips/abc", headers={"origin": "http://testserver"})
        assert same.status_code == 404
        # reading is not a change of state
        assert client.get("/api/live/sessions", headers=evil).status_code == 200


def test_allowed_origins_lets_a_named_page_in(tmp_path: Path) -> None:
    with make_client(tmp_path, allowed_origins="https://app.example.org") as client:
        r = client.delete("/api/clips/abc", headers={"origin": "https://app.example.org"})
        assert r.status_code == 404  # reached the route


def test_offers_only_as_json(tmp_path: Path) -> None:
    # text/plain needs no CORS preflight: a cross-site page could post it
    with make_client(tmp_path) as client:
        r = client.post(
            "/api/live/offer",
            content='{"sdp": "v=0", "type": "offer"}',
            headers={"content-type": "text/plain"},
        )
        assert r.status_code == 415 and r.json()["code"] == "bad_offer"


async def test_an_offer_without_a_fingerprint_is_a_400(tmp_path: Path) -> None:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
    finally:
        await pc.close()
    stripped = "\r\n".join(x for x in sdp.splitlines() if not x.startswith("a=fingerprint"))
    with make_client(tmp_path) as client:
        r = client.post("/api/live/offer", json={"sdp": stripped, "type": "offer"})
        assert r.status_code == 400 and "fingerprint" in r.json()["detail"]
        assert client.get("/api/live/sessions").json()["sessions"] == 0


def test_bodies_over_the_limit_are_refused_before_they_are_read(tmp_path: Path) -> None:
    with make_client(tmp_path, max_body_kb=16) as client:
        big = b"x" * (17 * 1024)
        r = client.post(
            "/api/live/offer", content=big, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["code"] == "too_large"

        def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(20):
                yield b"x" * 1024

        r = client.post(
            "/api/live/offer", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        assert client.get("/healthz").status_code == 200


def test_api_docs_are_off_unless_asked_for(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        assert client.get("/openapi.json").status_code == 404
        assert client.get("/docs").status_code == 404
    with make_client(tmp_path, api_docs=True) as client, warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warned "Duplicate Operation ID" for every GET
        api = client.get("/openapi.json")
        assert api.status_code == 200
        # Each route once, with an id of its own (client generators refuse a map that repeats
        # one): HEAD, which every GET answers too, is not listed beside each.
        operations = [op for path in api.json()["paths"].values() for op in path.items()]
        assert {method for method, _ in operations} == {"get", "post", "delete"}
        ids = [op["operationId"] for _, op in operations]
        assert len(ids) == len(set(ids)) > 30
        assert client.head("/healthz").status_code == 200


def test_a_network_bind_gets_a_token_and_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert network_access(Settings(host="127.0.0.1")).auth_token is None
    settings = network_access(Settings(host="0.0.0.0", port=9000))
    assert settings.auth_token and len(settings.auth_token) >= 24
    assert f"http://localhost:9000/?token={settings.auth_token}" in capsys.readouterr().err
    given = network_access(Settings(host="0.0.0.0", auth_token=TOKEN))
    assert given.auth_token == TOKEN


def test_the_printed_token_address_says_https_when_tls_is_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_settings import tls_pair

    cert, key = tls_pair(tmp_path)
    settings = Settings(host="0.0.0.0", port=9000, ssl_certfile=cert, ssl_keyfile=key)
    settings = network_access(settings)
    # It said http://, an address the HTTPS-only server does not answer.
    err = capsys.readouterr().err
    assert f"open https://localhost:9000/?token={settings.auth_token}" in err
    assert "http://" not in err


def test_the_page_gives_the_browser_an_owner_cookie(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        client.get("/")
        owner = client.cookies.get("fmu-owner")
        assert owner is not None and len(owner) == 32
        client.get("/")
        assert client.cookies.get("fmu-owner") == owner  # set once, kept
