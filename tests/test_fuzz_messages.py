"""Property-based fuzzing of what a person (or a hostile page) can send: websocket messages and
JSON bodies. Whatever arrives, the answer is a message (ProtocolError / 4xx), never an exception
that drops the connection or a 500, and the server stays up. Examples are bounded for CI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.app import create_app
from streamer.live import protocol as lp
from streamer.settings import Settings

TAGS = ["click", "box", "remove", "describe", "chat", "find", "ping", "reset", "cancel", "x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Messages shaped like the protocol's (a known tag, fields of any kind) as well as any JSON at all.
messages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(TAGS)},
        optional={
            k: json_values
            for k in ("x", "y", "object_id", "box", "phrase", "question", "positive", "t")
        },
    ),
)


def encode(value: Any) -> str:
    return json.dumps(value, allow_nan=True)  # Infinity and NaN are what a hostile page sends


@settings(max_examples=300, deadline=None)
@given(messages)
def test_live_messages_parse_or_say_why(value: Any) -> None:
    try:
        lp.parse_client_message(encode(value))
    except lp.ProtocolError as exc:
        assert str(exc)  # a reason a person can read


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_live_non_json_says_why(raw: Any) -> None:
    try:
        lp.parse_client_message(raw)
    except lp.ProtocolError as exc:
        assert str(exc)


ROUTES = [
    ("POST", "/api/images/{id}/clicks"),
    ("POST", "/api/images/{id}/find"),
    ("POST", "/api/images/{id}/objects/1/chat"),
    ("POST", "/api/clips/{id}/clicks"),
    ("POST", "/api/clips/{id}/find"),
    ("POST", "/api/live/offer"),
]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(route=st.sampled_from(ROUTES), body=messages, item=st.sampled_from(["abc", "0" * 32]))
def test_json_bodies_never_get_a_500(
    tmp_path_factory: Any, route: tuple[str, str], body: Any, item: str
) -> None:
    client = _client(tmp_path_factory)
    method, path = route
    r = client.request(
        method,
        path.format(id=item),
        content=encode(body),
        headers={"content-type": "application/json"},
    )
    assert 400 <= r.status_code < 500 or r.status_code == 503, (route, body, r.text)
    r.json()  # every refusal is JSON with a reason
    assert client.get("/healthz").status_code == 200


_CLIENTS: dict[str, TestClient] = {}


def _client(tmp_path_factory: Any) -> TestClient:
    # one app for all examples (building one per example would dominate the run)
    if "c" not in _CLIENTS:
        data = Path(tmp_path_factory.mktemp("fuzz"))
        app = create_app(Settings(data_dir=data), reasoner=None, load_vision=False)
        client = TestClient(app)
        client.__enter__()
        _CLIENTS["c"] = client
    return _CLIENTS["c"]


def teardown_module() -> None:
    for client in _CLIENTS.values():
        client.__exit__(None, None, None)
