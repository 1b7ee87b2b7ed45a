"""Who may use the service: the token, the Host and Origin checks, and whose things are whose.

One ASGI middleware in front of every HTTP route and websocket, as Jupyter does it: on a loopback
bind no token is needed (main.py only sets one for other binds, or when --auth-token gives one);
with a token, a request must carry it (an `Authorization: Bearer` header, the cookie set from the
start-up URL's `?token=` once, or `?token=` itself on a websocket). The Host header must name an
allowed host (DNS rebinding), and a browser's websocket or state-changing request must come from
this page's own origin (cross-site requests). The per-browser owner cookie set with the page is
what clips, images and live sessions are stamped with (see `owner_of`).
"""

from __future__ import annotations

import hmac
import re
import secrets
from contextvars import ContextVar
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamer.http.errors import error_response

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Host names a tokenless server answers to: loopback, and the name Starlette's TestClient sends
# (a single label no public DNS name can rebind to).
LOCAL_HOSTS = LOOPBACK_HOSTS | {"testserver"}
OWNER_COOKIE = "fmu-owner"
ANONYMOUS_OWNER = "anonymous"
WS_CLOSE_UNAUTHORIZED = 4401
WS_CLOSE_FORBIDDEN = 4403
# Reachable without a token: a load balancer's liveness probe; it says nothing but "ok".
OPEN_PATHS = frozenset({"/healthz"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_OWNER_RE = re.compile(r"^[0-9a-f]{32}$")


# The owner of the request being served (owner_of its connection); items made while serving it
# are stamped with it. Outside a request (tests, shutdown) everything is the anonymous owner's.
request_owner: ContextVar[str] = ContextVar("request_owner", default=ANONYMOUS_OWNER)


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the service on this machine (no token needed)."""
    return host.strip("[]").lower() in LOOPBACK_HOSTS or host.startswith("127.")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_cookie_name(port: int) -> str:
    # Cookies ignore ports: two servers on one machine must not read each other's token.
    return f"fmu-token-{port}"


def owner_of(conn: HTTPConnection) -> str:
    """The browser a request comes from: its owner cookie (set with the page), or one shared
    'anonymous' owner for clients that keep no cookies (scripts, tests)."""
    owner = conn.cookies.get(OWNER_COOKIE, "")
    return owner if _OWNER_RE.match(owner) else ANONYMOUS_OWNER


def short_id(item_id: str) -> str:
    """An id as logs show it: ids are credentials, so never in full."""
    return item_id[:8]


class AccessControl:
    """The middleware: Host, token and Origin checks; the owner cookie on the page."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        port: int,
        allowed_hosts: list[str],
        allowed_origins: list[str],
    ) -> None:
        self.app = app
        self.token = token
        self.cookie = token_cookie_name(port)
        # No list given: loopback names without a token (a rebinding page cannot have it);
        # any host with one (the token is what keeps strangers out).
        hosts = [h.strip().lower() for h in allowed_hosts if h.strip()]
        self.any_host = "*" in hosts or (not hosts and token is not None)
        self.hosts = frozenset(h.strip("[]") for h in hosts) or LOCAL_HOSTS
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in allowed_origins if o)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        request_owner.set(owner_of(conn))
        refusal = self._refusal(conn, scope)
        if refusal is not None:
            status, code, message = refusal
            await _refuse(scope, receive, send, status, code, message)
            return
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and self.token
            and "token" in conn.query_params
        ):
            # The start-up URL's ?token=: set the cookie once and drop the token from the address.
            # Only for GET/HEAD: a redirect would turn another method into a GET, its body lost;
            # such a request (its token checked above) is served as it came.
            query = urlencode(
                [(k, v) for k, v in parse_qsl(scope["query_string"].decode()) if k != "token"]
            )
            location = scope["path"] + (f"?{query}" if query else "")
            headers = [
                (b"location", location.encode()),
                (b"set-cookie", self._cookie(self.cookie, self.token, conn)),
            ]
            await send({"type": "http.response.start", "status": 303, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if (
            scope["type"] == "http"
            and not scope["path"].startswith("/api/")
            and (owner_of(conn) == ANONYMOUS_OWNER)
        ):
            # The page and its modules hand the browser its owner id, before any upload.
            cookie = self._cookie(OWNER_COOKIE, secrets.token_hex(16), conn)
            await self.app(scope, receive, _with_header(send, b"set-cookie", cookie))
            return
        await self.app(scope, receive, send)

    def _refusal(self, conn: HTTPConnection, scope: Scope) -> tuple[int, str, str] | None:
        if scope["path"] in OPEN_PATHS:
            return None  # says only "ok", whatever name a health check asks by
        host = _hostname(conn.headers.get("host", ""))
        if not self.any_host and host not in self.hosts:
            return (
                400,
                "bad_host",
                f"this server does not answer to the host name {host[:80]!r}; open it by an "
                "allowed name, or start it with --allowed-hosts naming this one",
            )
        if self.token is not None and not self._has_token(conn):
            return (
                401,
                "unauthorized",
                "this server needs its access token: open the URL printed at start-up (it ends "
                "in ?token=...), or send the header 'Authorization: Bearer <token>'",
            )
        changes_state = scope["type"] == "websocket" or scope.get("method") not in _SAFE_METHODS
        origin = conn.headers.get("origin")
        if changes_state and origin is not None and not self._origin_allowed(origin, conn):
            return (
                403,
                "bad_origin",
                f"requests from the page at {origin[:80]!r} are not accepted: use this server's "
                "own page, or start it with --allowed-origins naming that page's origin",
            )
        return None

    def _has_token(self, conn: HTTPConnection) -> bool:
        assert self.token is not None
        given = [conn.cookies.get(self.cookie, "")]
        auth = conn.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        given.append(conn.query_params.get("token", ""))
        want = self.token.encode()
        return any(hmac.compare_digest(g.encode(), want) for g in given if g)

    def _origin_allowed(self, origin: str, conn: HTTPConnection) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.origins:
            return True
        # Same origin: the page this server served (the scheme may differ behind a TLS proxy).
        return urlsplit(origin).netloc == conn.headers.get("host", "").lower()

    @staticmethod
    def _cookie(name: str, value: str, conn: HTTPConnection) -> bytes:
        cookie: SimpleCookie = SimpleCookie()
        cookie[name] = value
        morsel = cookie[name]
        morsel["path"] = "/"
        morsel["httponly"] = True
        # Lax: a link from elsewhere opens the page; cross-site POSTs and sockets still go without
        morsel["samesite"] = "Lax"
        morsel["max-age"] = 60 * 60 * 24 * 365
        if conn.url.scheme in ("https", "wss"):
            morsel["secure"] = True
        return morsel.OutputString().encode("latin-1")


def _hostname(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _with_header(send: Send, name: bytes, value: bytes) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (name, value)]}
        await send(message)

    return sending


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
) -> None:
    if scope["type"] == "websocket":
        # Closed before the handshake completes: the browser sees the upgrade refused.
        ws_code = WS_CLOSE_UNAUTHORIZED if status == 401 else WS_CLOSE_FORBIDDEN
        await send({"type": "websocket.close", "code": ws_code, "reason": message[:120]})
        return
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    await error_response(status, code, message, headers=headers)(scope, receive, send)


def access_settings(settings: Any) -> dict[str, Any]:
    """The middleware's options from the service settings."""
    return {
        "token": settings.auth_token,
        "port": settings.port,
        "allowed_hosts": _split(settings.allowed_hosts),
        "allowed_origins": _split(settings.allowed_origins),
    }


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
