"""Every bad input gets a clear error and loses nothing: each route of the HTTP API and each Live
and Clip websocket message, sent malformed (not JSON, the wrong JSON, wrong types, NaN, huge
numbers, unknown and odd ids, empty and huge strings, unknown fields, wrong content types) to one
real server with a SAM2 (tiny, random weights) and a scripted VLM. Each answer is a 4xx with a
reason (or an `error` message, the websocket still open); afterwards the clip, the image, the live
session and their objects are all still there and a good request still works."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.conftest import ServerThread, spotlight_answerer
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_media import write_clip
from tests.test_http_errors import assert_error_body

pytestmark = pytest.mark.timeout(300)

W, H, FRAMES = 64, 48, 6
HUGE = 2**63  # past SQLite's and C's 64-bit integers
MEGABYTE = "x" * 1_000_000


class Site:
    """The server under test and what was made on it before the barrage."""

    def __init__(
        self, server: ServerThread, http: httpx.Client, clip: str, image: str, data: Path
    ) -> None:
        self.server, self.http, self.clip, self.image = server, http, clip, image
        self.data = data  # where the server keeps its files: no answer names it

    def objects(self, kind: str, item: str) -> list[int]:
        r = self.http.get(f"/api/{kind}/{item}")
        assert r.status_code == 200, r.text
        return [o["id"] for o in r.json()["objects"]]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sam2_tiny_128: Any) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("bad-inputs")
    clip_file = write_clip(data / "moving.mp4", frames=FRAMES, width=W, height=H)
    with ScriptedVLMServer(spotlight_answerer()) as vlm:
        reasoner, _ = build_reasoner(Settings(vlm_url=vlm.url))
        app = create_app(
            Settings(data_dir=data / "data"),
            vision_model=sam2_tiny_128,
            reasoner=reasoner,
            load_vision=False,
        )
        with ServerThread(app) as server, httpx.Client(base_url=server.base_url, timeout=60) as c:
            assert c.get("/").status_code == 200  # the owner cookie, as a browser gets it
            with open(clip_file, "rb") as f:
                r = c.post("/api/clips", files={"file": ("moving.mp4", f, "video/mp4")})
            assert r.status_code == 201, r.text
            clip = r.json()["id"]
            r = c.post(f"/api/clips/{clip}/clicks", json={"frame": 1, "x": 20, "y": 20})
            assert r.status_code == 200, r.text
            r = c.post("/api/images", files={"file": ("pic.png", _png(), "image/png")})
            assert r.status_code == 201, r.text
            image = r.json()["id"]
            r = c.post(f"/api/images/{image}/clicks", json={"x": 20, "y": 20})
            assert r.status_code == 200, r.text
            yield Site(server, c, clip, image, data)


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    img = np.full((H, W, 3), 40, np.uint8)
    img[10:30, 10:30] = (220, 40, 40)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# -- HTTP ------------------------------------------------------------------------------------------

JSON = "application/json"
# Bodies wrong for every JSON route: (content, content type)
NOT_AN_OBJECT = [
    (b"", JSON),  # empty
    (b"{", JSON),  # not JSON
    (b"[]", JSON),  # an array
    (b'"click"', JSON),  # a string
    (b"null", JSON),
    (b"1e999", JSON),  # a number (Infinity)
    (b"\xff\xfe", JSON),  # not UTF-8
    (b"[" * 100_000, JSON),  # nested past any parser's depth
    (b'{"a": ' + MEGABYTE.encode() + b"x" * 100_000, JSON),  # over the body limit
    (b'{"x": 1}', "text/plain"),  # the wrong content type
    (b"x=1&y=2", "application/x-www-form-urlencoded"),
]
# Values that are not a number at all (lax parsing would read "1" and true as 1)
NOT_NUMBERS: list[Any] = ["1", "NaN", float("nan"), float("inf"), -float("inf"), [1], {}, True]
HUGE_NUMBERS: list[Any] = [1e308, -1e308, HUGE, 2**70, -HUGE]
BAD_IDS: list[Any] = [-1, 0, 99, HUGE, 2**70, -HUGE, 1.5, "1", "x", [], {}, True, 1e308]
BAD_STRINGS: list[Any] = ["", " \t\n ", "\ud800", MEGABYTE, None, 7, [], {"a": 1}, True]
BAD_FLAGS: list[Any] = ["yes", "true", None, 1, 2, []]


def _bodies(
    good: dict[str, Any], bad: dict[str, list[Any]], required: tuple[str, ...]
) -> list[Any]:
    """Bodies that are `good` with one thing wrong: each field's bad values, an unknown field, a
    required field missing."""
    bodies: list[Any] = [{**good, "unknown_field": 1}]
    for name, values in bad.items():
        bodies += [{**good, name: v} for v in values]
    bodies += [{k: v for k, v in good.items() if k != name} for name in required]
    return bodies


# the frame a Clip request names: required (clicks, find) or optional (describe, chat, refine)
FRAME_REQUIRED = NOT_NUMBERS + HUGE_NUMBERS + [None, -1, FRAMES, 1.5]
FRAME_OPTIONAL = NOT_NUMBERS + HUGE_NUMBERS + [-1, FRAMES, 1.5]
# a time past the clip's end is its last frame (still on screen): not wrong
TIMES = NOT_NUMBERS + [-1, -1e308, -HUGE]
MAX_STEPS = NOT_NUMBERS + HUGE_NUMBERS + [None, 0, 9, 1.5]
# a click's point and object, the same in every mode
CLICK_BAD: dict[str, list[Any]] = {
    "x": NOT_NUMBERS + HUGE_NUMBERS + [None, -1, W],
    "y": NOT_NUMBERS + HUGE_NUMBERS + [None, -1, H],
    "object_id": BAD_IDS,
}


# (route, a good body, bad values per field, the fields it cannot do without)
Table = list[tuple[str, dict[str, Any], dict[str, list[Any]], tuple[str, ...]]]


def _routes(
    base: str, table: Table, more: dict[str, list[Any]]
) -> list[tuple[str, str, list[Any]]]:
    return [
        ("POST", f"{base}/{tail}", _bodies(good, bad, required) + more.get(tail, []))
        for tail, good, bad, required in table
    ]


def clip_routes(clip: str) -> list[tuple[str, str, list[Any]]]:
    at = {"frame": 1}
    table: Table = [
        (
            "clicks",
            {**at, "x": 20, "y": 20, "object_id": 1, "negative": False},
            {**CLICK_BAD, "frame": FRAME_REQUIRED, "negative": BAD_FLAGS},
            ("x", "y", "frame"),
        ),
        (
            "find",
            {**at, "phrase": "the square", "all_candidates": False},
            {"phrase": BAD_STRINGS, "frame": FRAME_REQUIRED, "all_candidates": BAD_FLAGS},
            ("phrase", "frame"),
        ),
        (
            "find_all",
            {**at, "phrase": "squares"},
            {"phrase": BAD_STRINGS, "frame": FRAME_REQUIRED},
            ("phrase", "frame"),
        ),
        (
            "objects/1/chat",
            {**at, "question": "what is it?"},
            {"question": BAD_STRINGS, "frame": FRAME_OPTIONAL},
            ("question",),
        ),
        (
            "objects/1/auto_refine",
            {**at, "max_steps": 2},
            {"max_steps": MAX_STEPS, "frame": FRAME_OPTIONAL},
            (),
        ),
        ("objects/1/describe", at, {"frame": FRAME_OPTIONAL}, ()),
    ]
    at_times = {  # the frame by time instead
        "clicks": [{"x": 20, "y": 20, "t": t} for t in TIMES],
        "objects/1/chat": [{"question": "what is it?", "t": t} for t in TIMES],
        "objects/1/describe": [{"t": t} for t in TIMES],
    }
    return _routes(f"/api/clips/{clip}", table, at_times)


def image_routes(image: str) -> list[tuple[str, str, list[Any]]]:
    table: Table = [
        (
            "clicks",
            {"x": 20, "y": 20, "object_id": 1, "negative": False},
            {**CLICK_BAD, "negative": BAD_FLAGS},
            ("x", "y"),
        ),
        (
            "find",
            {"phrase": "the square", "all_candidates": False},
            {"phrase": BAD_STRINGS, "all_candidates": BAD_FLAGS},
            ("phrase",),
        ),
        ("find_all", {"phrase": "squares"}, {"phrase": BAD_STRINGS}, ("phrase",)),
        ("objects/1/chat", {"question": "what is it?"}, {"question": BAD_STRINGS}, ("question",)),
        ("objects/1/auto_refine", {"max_steps": 2}, {"max_steps": MAX_STEPS}, ()),
    ]
    return _routes(f"/api/images/{image}", table, {})


def offer_bodies() -> list[Any]:
    good = {"type": "offer", "sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}
    return _bodies(
        good,
        {
            "sdp": BAD_STRINGS + ["v=0", "m=video 9\r\n" * 1000],
            "type": ["answer", None, 1, ""],
            "resume": [7, [], "x" * 65, "../../etc", "\x00"],
            "frame_ids": BAD_FLAGS,
        },
        ("sdp", "type"),
    )


def encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body, allow_nan=True).encode()  # NaN and Infinity as a hostile page sends


def assert_refused(r: httpx.Response, what: str) -> dict[str, Any]:
    """A 4xx (or a 503 for what needs a model) with the one error body: a code of
    docs/protocol.md's table and why in words (plus the object, when one is named)."""
    assert 400 <= r.status_code < 500 or r.status_code == 503, (
        f"{what} -> {r.status_code}: {r.text[:400]}"
    )
    assert_error_body(r.json(), f"{what} -> {r.status_code}")
    return r.json()


def _send_all(site: Site, routes: list[tuple[str, str, list[Any]]]) -> list[str]:
    failures = []
    for method, path, bodies in routes:
        for body in bodies:
            raw = body[0] if isinstance(body, tuple) else encode(body)
            kind = body[1] if isinstance(body, tuple) else JSON
            r = site.http.request(method, path, content=raw, headers={"content-type": kind})
            what = f"{method} {path} {raw[:120]!r}"
            try:
                assert_refused(r, what)
            except (AssertionError, ValueError) as exc:
                failures.append(str(exc).splitlines()[0])
    return failures


def test_every_malformed_body_is_refused_with_a_reason(site: Site) -> None:
    routes = []
    for method, path, bodies in clip_routes(site.clip) + image_routes(site.image):
        # describe's body is optional: none (empty, null) describes over the track
        optional = path.endswith("describe")
        wrong = [b for b in NOT_AN_OBJECT if not (optional and b[0] in (b"", b"null"))]
        routes.append((method, path, wrong + bodies))
    routes.append(("POST", "/api/live/offer", list(NOT_AN_OBJECT) + offer_bodies()))
    failures = _send_all(site, routes)
    assert not failures, "\n".join(failures)
    assert site.objects("clips", site.clip) == [1]
    assert site.objects("images", site.image) == [1]


ODD_IDS = [
    "nope",
    "0" * 32,
    "f" * 1000,
    "%2e%2e",
    "..%2f..%2fetc",
    "%00",
    "%E2%9C%93",
    "a%20b",
    "1;drop",
    "-1",
]
ODD_OIDS = ["-1", "0", "99", str(HUGE), str(2**70), "1.5", "x", "1e3", "%00", "NaN"]


def test_odd_ids_in_paths_are_unknown_never_a_crash(site: Site) -> None:
    gets = [
        "/api/{kind}/{id}",
        "/api/{kind}/{id}/thumbnail.jpg",
    ]
    failures: list[str] = []
    sent: list[tuple[str, str]] = []
    for kind in ("clips", "images"):
        for item in ODD_IDS:
            for path in gets:
                sent.append(("GET", path.format(kind=kind, id=item)))
            sent += [
                ("DELETE", f"/api/{kind}/{item}"),
                ("DELETE", f"/api/{kind}/{item}/objects"),
                ("DELETE", f"/api/{kind}/{item}/objects/1"),
                ("POST", f"/api/{kind}/{item}/objects/1/describe"),
                ("POST", f"/api/{kind}/{item}/objects/1/stop_refine"),
            ]
    sent += [("GET", f"/api/images/{item}/image") for item in ODD_IDS]
    sent += [
        (m, f"/api/clips/{item}/{tail}")
        for item in ODD_IDS
        for m, tail in (
            ("GET", "video"),
            ("GET", "frame?t=0"),
            ("GET", "export.json"),
            ("GET", "export.mp4"),
            ("GET", "results"),
            ("GET", "presence"),
            ("POST", "objects/1/cancel"),
            ("POST", "objects/1/resume"),
        )
    ]
    for kind, item in (("clips", site.clip), ("images", site.image)):
        for oid in ODD_OIDS:
            sent += [
                ("DELETE", f"/api/{kind}/{item}/objects/{oid}"),
                ("POST", f"/api/{kind}/{item}/objects/{oid}/describe"),
                ("POST", f"/api/{kind}/{item}/objects/{oid}/stop_refine"),
            ]
            if kind == "clips":
                sent += [
                    ("POST", f"/api/clips/{item}/objects/{oid}/cancel"),
                    ("POST", f"/api/clips/{item}/objects/{oid}/resume"),
                ]
    c = f"/api/clips/{site.clip}"
    not_numbers = ("inf", "-inf", "nan", "1e999", "-1", "x", "", "1,2")
    sent += [("GET", f"{c}/frame?t={q}") for q in not_numbers]  # past the end: the last frame
    huge = ("1e308", "1.5", str(HUGE), str(2**70))
    sent += [("GET", f"{c}/results?start={q}") for q in (*not_numbers, *huge, str(FRAMES))]
    sent += [("GET", f"{c}/results?start=0&count={q}") for q in (*not_numbers, *huge)]
    sent += [("GET", f"{c}/results?count=0"), ("GET", f"{c}/results?count=1001")]
    for method, path in sent:
        try:
            r = site.http.request(method, path)
            assert_refused(r, f"{method} {path[:100]}")
        except (AssertionError, ValueError, httpx.HTTPError) as exc:
            failures.append(f"{method} {path[:100]}: " + str(exc).splitlines()[0])
    assert not failures, "\n".join(failures)
    assert site.objects("clips", site.clip) == [1]
    assert site.objects("images", site.image) == [1]
    assert site.http.get(f"{c}/frame?t=0").json()["frame"] == 0


def test_a_good_request_works_after_the_barrage(site: Site) -> None:
    r = site.http.post(f"/api/images/{site.image}/clicks", json={"x": 40, "y": 40})
    assert r.status_code == 200, r.text
    assert r.json()["object"]["id"] == 2
    r = site.http.post(f"/api/images/{site.image}/objects/1/chat", json={"question": "what?"})
    assert r.status_code == 200, r.text
    assert site.http.get("/healthz").status_code == 200


BOUNDARY = "fuzzboundary"


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart body of (field name, file name or None, content) parts."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
# (content, content type): uploads that are not a clip or an image
BAD_UPLOADS: list[tuple[bytes, str]] = [
    (b"", MULTIPART),  # empty
    (b"", "application/octet-stream"),
    (b'{"file": "x"}', JSON),  # JSON, not multipart
    (b"garbage", "multipart/form-data"),  # no boundary
    (b"garbage without parts", MULTIPART),
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data".encode(), MULTIPART),  # cut short
    (_multipart([("other", "a.png", b"x")]), MULTIPART),  # no `file` field
    (_multipart([("file", None, b"not a file field")]), MULTIPART),  # a plain field
    (_multipart([("file", "empty.mp4", b"")]), MULTIPART),  # an empty file
    (_multipart([("file", "text.png", b"hello, I am text")]), MULTIPART),
    (_multipart([("file", "a.gif", b"GIF89a" + b"\x00" * 100)]), MULTIPART),  # a broken GIF
    (_multipart([("file", "../../etc/passwd", b"\x00" * 2000)]), MULTIPART),
    (_multipart([("file", "x" * 5000 + ".mp4", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)]), MULTIPART),
]


@pytest.mark.parametrize("kind", ["clips", "images"])
def test_uploads_that_are_not_media_are_refused_and_leave_nothing(site: Site, kind: str) -> None:
    before = site.http.get(f"/api/{kind}").json()[kind]
    failures = []
    for raw, ctype in BAD_UPLOADS:
        r = site.http.post(f"/api/{kind}", content=raw, headers={"content-type": ctype})
        try:
            assert_refused(r, f"POST /api/{kind} {ctype} {raw[:80]!r}")
            assert str(site.data) not in r.text, f"{raw[:80]!r}: {r.text}"
        except (AssertionError, ValueError) as exc:
            failures.append(str(exc).splitlines()[0])
    assert not failures, "\n".join(failures)
    assert site.http.get(f"/api/{kind}").json()[kind] == before


# -- Live's websocket ------------------------------------------------------------------------------

LIVE_TEXT = 60_000  # a long string that still fits in one message (max_ws_message_bytes: 64 KB)
LIVE_STRINGS: list[Any] = ["", " \t\n ", "\ud800", "x" * LIVE_TEXT, None, 7, [], {"a": 1}, True]
BAD_BOXES: list[Any] = [
    None,
    "0,0,10,10",
    [],
    [1, 2, 3],
    [0, 0, 10, 10, 20],
    [0, 0, float("nan"), 10],
    [0, 0, float("inf"), 10],
    [0, 0, 1e308, 10],
    [-HUGE, 0, 10, 10],
    [30, 30, 10, 10],  # inverted
    [100, 100, 200, 200],  # off the picture
    [-50, -50, -10, -10],
    ["0", 0, 10, 10],
    [True, 0, 10, 10],
    {"x0": 0},
]
LIVE_GOOD: dict[str, dict[str, Any]] = {
    "click": {"type": "click", "x": 20, "y": 20, "positive": True, "object_id": 1},
    "box": {"type": "box", "box": [10, 10, 30, 30], "object_id": 1},
    "find": {"type": "find", "phrase": "the square", "all_candidates": False},
    "find_all": {"type": "find_all", "phrase": "squares"},
    "stop_find": {"type": "stop_find"},
    "auto_refine": {"type": "auto_refine", "object_id": 1, "max_steps": 2},
    "stop_refine": {"type": "stop_refine", "object_id": 1},
    "describe": {"type": "describe", "object_id": 1},
    "chat": {"type": "chat", "object_id": 1, "question": "what is it?"},
    "remove": {"type": "remove", "object_id": 1},
    "reset": {"type": "reset"},
    "frame_ids": {"type": "frame_ids", "on": False},
    "ping": {"type": "ping"},
}
LIVE_BAD_FIELDS: dict[str, dict[str, list[Any]]] = {
    "click": {**CLICK_BAD, "positive": BAD_FLAGS},
    "box": {"box": BAD_BOXES, "object_id": BAD_IDS},
    "find": {"phrase": LIVE_STRINGS, "all_candidates": BAD_FLAGS},
    "find_all": {"phrase": LIVE_STRINGS},
    "auto_refine": {"object_id": BAD_IDS, "max_steps": MAX_STEPS},
    "stop_refine": {"object_id": BAD_IDS},
    "describe": {"object_id": BAD_IDS},
    "chat": {"object_id": BAD_IDS, "question": LIVE_STRINGS},
    "remove": {"object_id": BAD_IDS},
    "frame_ids": {"on": BAD_FLAGS},
}


LIVE_REQUIRED: dict[str, tuple[str, ...]] = {
    "click": ("x", "y"),  # object_id may be left out: a new object
    "box": ("box",),
    "find": ("phrase",),
    "find_all": ("phrase",),
    "auto_refine": ("object_id",),
    "stop_refine": ("object_id",),
    "describe": ("object_id",),
    "chat": ("object_id", "question"),
    "remove": ("object_id",),
    "frame_ids": ("on",),
}


def live_messages() -> list[str]:
    raw = ["", "{", "[]", '"ping"', "null", "1e999", "NaN", '{"type": null}', '{"type": "dance"}']
    raw += ["[" * 10_000, '{"type": "\\ud800"}']
    bodies: list[Any] = []
    for tag, good in LIVE_GOOD.items():
        bodies += _bodies(good, LIVE_BAD_FIELDS.get(tag, {}), LIVE_REQUIRED.get(tag, ()))
        bodies.append({**good, "type": tag.upper()})
    return raw + [encode(b).decode() for b in bodies]


def offer_mistakes(sdp: str) -> dict[str, str]:
    """A real offer's SDP, spoilt in ways a page or a proxy could: each must be a 400."""
    lines = sdp.split("\r\n")

    def without(prefix: str) -> str:
        return "\r\n".join(line for line in lines if not line.startswith(prefix))

    video = sdp[sdp.index("m=video") :]
    return {
        "no codecs": without("a=rtpmap"),
        "unknown codec": re.sub(r"a=rtpmap:(\d+) \w+/90000", r"a=rtpmap:\1 FOO/90000", sdp),
        "no ICE user": without("a=ice-ufrag"),
        "no DTLS setup": without("a=setup"),
        "the video section twice": sdp + video,
        "audio where the video was": sdp.replace("m=video", "m=audio") + video[:40],
        "video not sent (recvonly)": re.sub(r"a=(sendrecv|sendonly)", "a=recvonly", sdp),
        "video not sent (inactive)": re.sub(r"a=(sendrecv|sendonly)", "a=inactive", sdp),
        "video refused (port 0)": re.sub(r"m=video \d+", "m=video 0", sdp),
        "video not sent (the session's recvonly)": re.sub(
            r"a=(sendrecv|sendonly)\r\n", "", sdp
        ).replace("\r\nm=", "\r\na=recvonly\r\nm=", 1),
        "payload type past 127": re.sub(r"(m=video \d+ \S+) [\d ]+", r"\1 99999999999", sdp),
    }


async def test_a_spoilt_real_offer_is_refused_and_holds_no_slot(site: Site) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    from tests.conftest import make_moving_shape_track

    track = make_moving_shape_track(W, H)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTrack(track)
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with httpx.AsyncClient(base_url=site.server.base_url, timeout=30) as http:
            before = (await http.get("/api/live/sessions")).json()["sessions"]
            for field, value in [("frame_ids", "yes"), ("frame_ids", 1), ("resume", 7)]:
                r = await http.post("/api/live/offer", json={**offer, field: value})
                assert r.status_code == 400, (field, value, r.text)
                assert r.json()["code"] == "bad_offer" and field in r.json()["detail"]
            for what, sdp in offer_mistakes(offer["sdp"]).items():
                r = await http.post("/api/live/offer", json={**offer, "sdp": sdp})
                assert r.status_code == 400, (what, r.text[:300])
                assert r.json()["code"] == "bad_offer" and r.json()["detail"], what
            assert (await http.get("/api/live/sessions")).json()["sessions"] == before
    finally:
        await pc.close()
        track.stop()


async def test_every_malformed_live_message_is_answered_and_the_session_goes_on(
    site: Site,
) -> None:
    from tests.conftest import LiveClient, make_moving_shape_track

    track = make_moving_shape_track(W, H)
    client = LiveClient(site.server.base_url)
    try:
        await client.connect(track)
        await client.wait_message("overlay")
        assert await client.click_new_object(20, 20) == 1
        failures = []
        for raw in live_messages():
            mark = len(client.messages)
            await client.send(raw)
            await client.send({"type": "ping"})
            await client.wait_message("pong", after=mark, timeout=20)
            errors = [m for m in client.messages[mark:] if m["type"] == "error"]
            if not errors or errors[0]["fatal"] or not errors[0]["message"]:
                seen = [m["type"] for m in client.messages[mark:]]
                failures.append(f"{raw[:120]}: {errors[:1] or seen}")
        assert client.close_code is None
        assert not failures, "\n".join(failures)
        # the object made before is still tracked, and a good click still makes one
        mark = len(client.messages)
        overlay = await client.wait_message("overlay", after=mark)
        assert [o["id"] for o in overlay["objects"]] == [1]
        assert await client.click_new_object(40, 30) == 2
    finally:
        await client.close()
        track.stop()


CLIP_SOCKET_BAD = [
    "",
    "{",
    "[]",
    "null",
    '"ping"',
    '{"type": "dance"}',
    '{"type": "cancel", "object_id": "1"}',
    '{"type": "cancel", "object_id": true}',
    '{"type": "cancel", "object_id": 1.5}',
    '{"type": "cancel", "object_id": [1]}',
    '{"type": "cancel", "object_id": 1, "extra": 1}',
    '{"type": "cancel", "object_id": 99}',  # no such object
    '{"type": "cancel", "object_id": -1}',
    '{"type": "ping", "extra": 1}',
]


def test_every_malformed_clip_socket_message_is_answered(site: Site) -> None:
    from websockets.sync.client import connect

    url = f"{site.server.ws_url}/api/clips/{site.clip}/ws"
    cookie = "; ".join(f"{k}={v}" for k, v in site.http.cookies.items())
    with connect(url, additional_headers={"cookie": cookie}) as ws:
        assert json.loads(ws.recv(timeout=20))["type"] == "hello"
        for raw in CLIP_SOCKET_BAD:
            ws.send(raw)
            ws.send('{"type": "ping"}')
            seen = []
            while not seen or seen[-1]["type"] != "pong":
                seen.append(json.loads(ws.recv(timeout=20)))
            errors = [m for m in seen if m["type"] == "error"]
            assert errors and not errors[0]["fatal"] and errors[0]["message"], (raw, seen)
        ws.send(b"\x00\x01")  # a binary frame
        assert json.loads(ws.recv(timeout=20))["code"] == "bad_message"
    assert site.objects("clips", site.clip) == [1]
    job = site.http.get(f"/api/clips/{site.clip}").json()["objects"][0]["job"]
    assert job["state"] != "cancelled"  # no bad message was taken for a cancel


@pytest.mark.parametrize("path", ["/api/clips/{id}/ws", "/api/live/sessions/{id}/ws"])
def test_a_socket_to_an_odd_id_is_told_unknown(site: Site, path: str) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    for item in ODD_IDS:
        if "%2f" in item:
            continue  # not this route: a slash in the id (the server refuses the handshake)
        with connect(site.server.ws_url + path.format(id=item)) as ws:
            notice = json.loads(ws.recv(timeout=20))
            assert notice["type"] == "error" and notice["fatal"] and notice["message"]
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=20)
            assert ws.close_code == 4404, item


async def test_a_question_too_big_for_the_socket_loses_no_object(site: Site) -> None:
    """A 1 MB question is over max_ws_message_bytes: the session ends (close 1009, said why), and
    the page's reconnect gets its objects back, as after any dropped connection."""
    from tests.conftest import LiveClient, make_moving_shape_track

    track, second = make_moving_shape_track(W, H), make_moving_shape_track(W, H)
    client = LiveClient(site.server.base_url)
    again = LiveClient(site.server.base_url)
    try:
        await client.connect(track)
        await client.wait_message("overlay")
        assert await client.click_new_object(20, 20) == 1
        # a reconnect gets back the objects that showed, from their last box
        await client.wait_message("overlay", lambda m: any(o["box"] for o in m["objects"]))
        await client.send({"type": "chat", "object_id": 1, "question": MEGABYTE})
        await client.wait_for(lambda: client.close_code is not None, 20, "the socket to close")
        assert client.close_code == 1009
        notice = client.of_type("error")[-1]
        assert notice["fatal"] and "limit" in notice["message"]
        answer = await again.connect(second, resume=client.session_id)
        assert answer["resumed"] is True
        objects = await again.wait_message("objects", lambda m: m["objects"])
        assert [o["id"] for o in objects["objects"]] == [1]
    finally:
        await client.close()
        await again.close()
        track.stop()
        second.stop()
