"""Every HTTP error has one body, `{"code", "detail"}` (plus `"object_id"` where an object is
named): the code one of docs/protocol.md's error table, the detail words a person can read, from
a route, a middleware or the framework itself. The barrage of bad inputs against a real server
(tests/test_api_bad_inputs.py) asserts the same of every error it provokes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from streamer.app import create_app
from streamer.settings import Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
TOKEN = "a-test-token-of-some-length"


def documented_codes() -> set[str]:
    """The codes of docs/protocol.md's error table (its first column)."""
    text = DOC.read_text()
    table = text[text.index("| code | HTTP | when |") :].split("\n\n")[0]
    rows = [line.split("|")[1] for line in table.splitlines()[2:]]
    return {code for cell in rows for code in re.findall(r"`([a-z_]+)`", cell)}


CODES = documented_codes()


def assert_error_body(body: Any, what: str = "") -> None:
    """The one error body: a documented code, a reason in words, an object id only if named."""
    assert isinstance(body, dict), f"{what}: {body!r:.300}"
    assert {"code", "detail"} <= set(body) <= {"code", "detail", "object_id"}, f"{what}: {body}"
    assert body["code"] in CODES, f"{what}: code {body['code']!r} is not in docs/protocol.md"
    assert isinstance(body["detail"], str) and body["detail"].strip(), f"{what}: {body}"
    assert isinstance(body.get("object_id", 0), int), f"{what}: {body}"


def test_the_table_lists_the_codes() -> None:
    assert {"bad_message", "unknown_clip", "bad_upload", "too_large", "not_ready"} <= CODES


@pytest.fixture
def client(tmp_path: Path) -> Any:
    app = create_app(Settings(data_dir=tmp_path / "data"), reasoner=None, load_vision=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# (body, what the detail says) - a body that does not fit names the field, in Live's words
BAD_BODIES = [
    (b'{"x": "1", "y": 2}', "x: Input should be a valid number"),
    (b'{"x": 1}', "y: Field required"),
    (b'{"x": 1, "y": 2, "colour": "red"}', "colour: Extra inputs are not permitted"),
    (b"{", "not valid JSON"),
    (b"[]", "must be one JSON object"),
    (b"", "must be one JSON object"),
]


@pytest.mark.parametrize(("raw", "words"), BAD_BODIES)
def test_a_body_that_does_not_fit_says_where_in_words(client: Any, raw: bytes, words: str) -> None:
    r = client.post(
        "/api/images/abc/clicks", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert_error_body(r.json())
    assert r.json()["code"] == "bad_message" and words in r.json()["detail"], r.json()


def test_a_bad_query_parameter_is_named(client: Any) -> None:
    r = client.get("/api/clips/abc/frame", params={"t": "inf"})
    assert r.status_code == 422
    assert r.json() == {"code": "bad_message", "detail": "query.t: Input should be a finite number"}


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "says"),
    [
        ("GET", "/api/clips/abc", 404, "unknown_clip", "no clip 'abc': it was deleted"),
        ("DELETE", "/api/images/abc", 404, "unknown_image", "no image 'abc': it was deleted"),
        ("GET", "/api/clips/abc/export.json", 404, "unknown_clip", "no clip 'abc'"),
        # The framework's own refusals, in words (they said "Not Found", "Method Not Allowed").
        ("GET", "/api/nothing/here", 404, "not_found", "nothing answers GET /api/nothing/here"),
        ("PUT", "/api/clips", 405, "bad_method", "/api/clips: that route does not take PUT"),
    ],
)
def test_a_refused_request_has_a_code_and_says_why(
    client: Any, method: str, path: str, status: int, code: str, says: str
) -> None:
    r = client.request(method, path)
    assert r.status_code == status
    assert_error_body(r.json(), f"{method} {path}")
    assert r.json()["code"] == code and says in r.json()["detail"], r.json()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/api/capabilities", "/api/clips"])
def test_head_answers_as_get_does_without_the_body(client: Any, path: str) -> None:
    """A health check or `curl -I` sends HEAD: it got 404 (while a 405 said "Allow: GET, HEAD")."""
    get, head = client.get(path), client.head(path)
    assert head.status_code == get.status_code
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.content == b""
    r = client.head("/api/clips/abc/video")  # an unknown clip: the GET's refusal, bodiless
    assert r.status_code == 404 and r.content == b""


def test_head_does_not_render_an_export_video(client: Any) -> None:
    """export.mp4's GET renders the video: a HEAD (a link preview, a download manager) is told
    to use GET instead of starting that work."""
    r = client.head("/api/clips/abc/export.mp4")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/clips/abc/clicks", "POST"),  # said "nothing answers GET ..."
        ("PUT", "/api/images/abc/objects/1/describe", "POST"),  # said "Allow: GET, HEAD"
        ("PUT", "/api/clips", "GET, HEAD, POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("POST", "/index.html", "GET, HEAD"),  # the page's own files
    ],
)
def test_a_method_a_route_does_not_take_names_the_ones_it_does(
    client: Any, method: str, path: str, allow: str
) -> None:
    r = client.request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allow
    assert r.json()["code"] == "bad_method"
    assert f"does not take {method} (it takes {allow})" in r.json()["detail"], r.json()


def test_a_websockets_path_over_plain_http_says_it_is_a_websocket(client: Any) -> None:
    """GET /api/clips/{id}/ws said "nothing answers" though a websocket lives there."""
    r = client.get("/api/clips/abc/ws")
    assert r.status_code == 426 and r.headers["upgrade"] == "websocket"
    assert_error_body(r.json(), "GET on a websocket's path")
    assert "is a websocket: connect to it with ws://" in r.json()["detail"]


def test_uploads_are_refused_with_a_code(client: Any) -> None:
    r = client.post("/api/clips", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["code"] == "bad_upload"
    assert "multipart/form-data" in r.json()["detail"]
    r = client.post("/api/images", files={"file": ("a.png", b"\x89PNG", "image/png")})
    assert r.status_code == 503 and r.json()["code"] == "not_ready"  # SAM2 is not loaded
    assert_error_body(r.json())


def test_a_host_not_allowed_is_told_so(client: Any) -> None:
    r = client.get("/api/clips", headers={"host": "evil.example"})
    assert r.status_code == 400 and r.json()["code"] == "bad_host"
    assert_error_body(r.json())


def test_a_bug_is_an_internal_error_in_the_same_shape(client: Any) -> None:
    async def broken() -> dict[str, Any]:
        raise RuntimeError("a bug")

    client.app.state.services.vlm_health = broken
    r = client.get("/api/vlm")
    assert r.status_code == 500
    assert_error_body(r.json())
    assert r.json()["code"] == "internal" and "/api/vlm" in r.json()["detail"]


def test_access_and_body_limits_answer_the_same_shape(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", auth_token=TOKEN, max_body_kb=16)
    with TestClient(create_app(settings, reasoner=None, load_vision=False)) as client:
        r = client.get("/api/clips")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert_error_body(r.json())
        assert r.json()["code"] == "unauthorized" and "token" in r.json()["detail"]
        bearer = {"authorization": f"Bearer {TOKEN}"}
        big = b"{" + b" " * 17 * 1024 + b"}"
        r = client.post(
            "/api/live/offer", content=big, headers={**bearer, "content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["code"] == "too_large"
        assert_error_body(r.json())


def test_a_range_the_file_cannot_serve_is_refused_in_the_same_shape(
    tmp_path: Path,
    model: Any,
) -> None:
    """A Range past a file's end, or one that is no byte range, got Starlette's own answers (an
    empty 416, a plain-text 400); a byte range still gets its bytes."""
    from tests.test_image_api import encoded, upload

    app = create_app(Settings(data_dir=tmp_path / "data"), vision_model=model, load_vision=False)
    with TestClient(app) as c:
        iid = upload(c, encoded("PNG")).json()["id"]
        url = f"/api/images/{iid}/image"
        size = len(c.get(url).content)
        part = c.get(url, headers={"range": "bytes=0-9"})
        assert part.status_code == 206 and len(part.content) == 10
        past = c.get(url, headers={"range": f"bytes={size}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
        assert_error_body(past.json(), "a range past the end")
        assert "past the end of the file" in past.json()["detail"]
        bad = c.get(url, headers={"range": "pages=1-2"})
        assert bad.status_code == 400
        assert_error_body(bad.json(), "a range in other units")
        assert "bytes=START-END" in bad.json()["detail"]


@pytest.mark.parametrize("headers", [{}, {"range": "bytes=0-9"}])  # the whole file; a byte range
def test_a_file_removed_before_it_is_sent_is_refused_in_the_same_shape(
    headers: dict[str, str],
    tmp_path: Path,
    model: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The file removed (its image deleted in another tab) after the route answered with it and
    before it was sent: a 500 "a bug" (Starlette's RuntimeError), now a 404 that says so."""
    from streamer.http.errors import FileAnswer
    from streamer.image import routes
    from tests.test_image_api import encoded, upload

    def removed_once_answered(path: Path, **kwargs: Any) -> FileAnswer:
        answer = FileAnswer(path, **kwargs)
        path.unlink()
        return answer

    monkeypatch.setattr(routes, "FileAnswer", removed_once_answered)
    app = create_app(Settings(data_dir=tmp_path / "data"), vision_model=model, load_vision=False)
    with TestClient(app) as c:
        url = f"/api/images/{upload(c, encoded('PNG')).json()['id']}/image"
        r = c.get(url, headers=headers)
        assert r.status_code == 404
        assert_error_body(r.json(), "a file removed before it was sent")
        assert r.json()["code"] == "unknown_image"  # the 404 a deleted image's every URL gets
        assert r.json()["detail"].startswith(f"{url} was removed before it could be sent")


async def test_a_file_removed_once_its_headers_are_sent_is_still_sent_whole(
    tmp_path: Path,
) -> None:
    """Removed between the headers and the body (a delete at that moment): the body was cut off
    with an error, as Starlette opened the file only then."""
    from streamer.http.errors import FileAnswer

    path, data = tmp_path / "clip.mp4", bytes(range(256)) * 1000
    path.write_bytes(data)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.start":
            path.unlink()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/f",
        "headers": [],
        "asgi": {"spec_version": "2.4"},
    }
    await FileAnswer(path, kind="clip")(scope, receive, send)
    assert sent[0]["status"] == 200 and b"".join(m.get("body", b"") for m in sent[1:]) == data
