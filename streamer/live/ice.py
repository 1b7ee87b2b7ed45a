"""Where WebRTC media may flow: the server's ICE candidates follow --host, and --ice-servers names
the STUN/TURN servers (for a server or a browser behind NAT) that aiortc and the page both use.

aioice offers a host candidate on every interface and exposes no setting for it: the one hook is
the module function `aioice.ice.get_host_addresses`, replaced here by one that keeps only the
addresses --host allows. It is process-wide, like --host itself (one server per process).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri
from pydantic import BaseModel, ConfigDict, Field

_every_address: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses


class IceServer(BaseModel):
    """One entry of --ice-servers, the shape of the browser's RTCIceServer."""

    model_config = ConfigDict(extra="forbid")

    urls: str | list[str] = Field(min_length=1)  # the browser refuses an empty list
    username: str | None = None
    credential: str | None = None

    def url_list(self) -> list[str]:
        return [self.urls] if isinstance(self.urls, str) else list(self.urls)


def parse_ice_servers(text: str) -> list[IceServer]:
    """--ice-servers as a JSON list (`[{"urls": "stun:host:3478"}, {"urls": "turn:host:3478",
    "username": "u", "credential": "p"}]`); ValueError says what is wrong. aiortc uses at most one
    STUN and one TURN server, so more of either is refused rather than silently ignored."""
    if not text.strip():
        return []
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"must be a JSON list of ICE servers: {exc}") from None
    if not isinstance(raw, list):
        raise ValueError('must be a JSON list such as [{"urls": "stun:stun.example:3478"}]')
    servers = [IceServer.model_validate(item) for item in raw]
    kinds: dict[str, int] = {}
    for server in servers:
        for url in server.url_list():
            try:
                parsed = parse_stun_turn_uri(url)
            except ValueError:
                raise ValueError(
                    f"{url!r} is not a STUN or TURN URL (stun:HOST[:PORT], turn:HOST[:PORT], "
                    "turns:HOST[:PORT])"
                ) from None
            # What aiortc would skip without a word (connection_kwargs) is refused here.
            supported = {"stun": ("",), "turn": ("udp", "tcp"), "turns": ("tcp",)}
            if parsed.get("transport", "") not in supported.get(parsed["scheme"], ()):
                raise ValueError(
                    f"{url!r}: the server's WebRTC (aiortc) takes stun:, turn: over udp or tcp, "
                    "and turns: over tcp only"
                )
            kind = "turn" if parsed["scheme"] in ("turn", "turns") else "stun"
            if kind == "turn" and (server.username is None or server.credential is None):
                raise ValueError(f"{url!r} needs a username and a credential")
            kinds[kind] = kinds.get(kind, 0) + 1
    extra = [k for k, n in kinds.items() if n > 1]
    if extra:
        raise ValueError(f"at most one {extra[0].upper()} URL: the server's WebRTC uses only one")
    return servers


def rtc_configuration(servers: list[IceServer]) -> RTCConfiguration:
    """aiortc's configuration for a new peer connection (no servers: host candidates only)."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s.url_list(), username=s.username, credential=s.credential)
            for s in servers
        ]
    )


def address_filter(host: str) -> Callable[[list[str]], list[str]]:
    """Which addresses of `every` (this machine's) a server listening on `host` offers as ICE host
    candidates: all IPv4 ones for 0.0.0.0, all for ::, else only the ones `host` names (a loopback
    host gives loopback candidates, which aioice never offers by itself). A name is resolved here,
    once, as the server resolved it to listen: never again per connection, on the event loop."""
    if host in ("", "0.0.0.0"):
        return lambda every: [a for a in every if ipaddress.ip_address(a).version == 4]
    if host == "::":
        return list
    named: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM):
        address = str(sockaddr[0])
        if address not in named:
            named.append(address)
    return lambda every: list(named)


def follow_host(host: str) -> None:
    """From now on this process's WebRTC connections offer host candidates only where `host`
    allows (called at app creation, before any peer connection gathers)."""
    allowed = address_filter(host)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            a
            for a in allowed(_every_address(use_ipv4, use_ipv6))
            if (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)
        ]

    aioice.ice.get_host_addresses = get_host_addresses  # type: ignore[assignment]


def page_ice_servers(servers: list[IceServer]) -> list[dict[str, Any]]:
    """--ice-servers as the page passes them to RTCPeerConnection."""
    return [s.model_dump(exclude_none=True) for s in servers]
