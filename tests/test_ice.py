"""WebRTC's reach: host candidates only where --host listens, and --ice-servers (STUN/TURN for
NAT) checked at start and handed to the page."""

from __future__ import annotations

import re
import socket
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from streamer.app import create_app
from streamer.live.ice import address_filter
from streamer.settings import Settings
from tests.conftest import LiveClient, ServerThread

pytestmark = pytest.mark.timeout(180)
HERE = ["192.168.1.20", "10.8.0.3", "fe80::1"]  # a machine's addresses (aioice's list)


# (--host, the addresses offered as candidates)
@pytest.mark.parametrize(
    ("host", "offered"),
    [
        ("127.0.0.1", ["127.0.0.1"]),  # this machine only: loopback, no LAN address
        ("192.168.1.20", ["192.168.1.20"]),  # one interface: that one
        ("0.0.0.0", ["192.168.1.20", "10.8.0.3"]),  # every IPv4 interface
        ("::", HERE),  # every interface
    ],
)
def test_candidates_follow_the_listening_address(
    host: str, offered: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []
    resolve = socket.getaddrinfo

    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        lookups.append(name)
        return resolve(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counted)
    allowed = address_filter(host)
    # Every peer connection asks again; a named host was looked up once, at start.
    assert allowed(HERE) == offered and allowed(HERE) == offered
    assert len(lookups) <= 1


# (--ice-servers, what the refusal says)
@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("stun:stun.example:3478", "JSON list"),  # a bare URL, not the list
        ('[{"urls": "http://stun.example"}]', "not a STUN or TURN URL"),
        ('[{"urls": "turn:turn.example:3478"}]', "username and a credential"),
        ('[{"urls": ["stun:a.example", "stun:b.example"]}]', "at most one STUN"),
        ('[{"urls": []}]', "at least 1 item"),  # the page's RTCPeerConnection would throw
        # what aiortc would otherwise skip without a word
        ('[{"urls": "stuns:stun.example"}]', "turns: over tcp only"),
        (
            '[{"urls": "turns:t.example?transport=udp", "username": "u", "credential": "p"}]',
            "tcp only",
        ),
    ],
)
def test_bad_ice_servers_stop_the_start_naming_the_setting(value: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(ice_servers=value)
    assert "ice_servers" in str(err.value) and words in str(err.value)


async def test_a_loopback_server_answers_with_loopback_candidates_only(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    turn = '[{"urls": "turn:turn.example:3478", "username": "u", "credential": "p"}]'
    settings = Settings(weights="random", sam2_image_size=256, device="cpu", host="127.0.0.1")
    app = create_app(settings, vision_model=sam2_tiny_random, reasoner=None)
    with ServerThread(app) as server:
        client = LiveClient(server.base_url)
        try:
            resp = await client.offer(moving_shape(160, 120))
            assert resp.status_code == 200, resp.text
            candidates = re.findall(r"a=candidate:\S+ \d+ \S+ \d+ (\S+) ", resp.json()["sdp"])
            assert candidates and set(candidates) == {"127.0.0.1"}, candidates
        finally:
            await client.close()
    # The page is handed the same STUN/TURN servers the server uses.
    settings = Settings(weights="random", sam2_image_size=256, device="cpu", ice_servers=turn)
    app = create_app(settings, vision_model=sam2_tiny_random, reasoner=None)
    with ServerThread(app) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            caps = (await http.get("/api/capabilities")).json()
    assert caps["ice_servers"] == [
        {"urls": "turn:turn.example:3478", "username": "u", "credential": "p"}
    ]
