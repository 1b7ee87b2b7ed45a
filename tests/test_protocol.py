"""The protocol of every mode: documented examples parse as the models they show; bad input gets a readable reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from streamer.clip import protocol as cp
from streamer.live import protocol as p
from streamer.objects.events import ObjectEvent, ObjectResult, RLEMask, parse_event, union_tags
from workers.masks import rle_decode, rle_encode

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
_BLOCK = re.compile(r"```json ([a-z-]+)\n(.*?)```", re.S)


def doc_examples(kind: str) -> list[str]:
    return [body for k, body in _BLOCK.findall(DOC.read_text()) if k == kind]


def documented(kind: str) -> set[str]:
    return {json.loads(b)["type"] for b in doc_examples(kind)}


def test_docs_have_an_example_of_every_message() -> None:
    assert {k for k, _ in _BLOCK.findall(DOC.read_text())} == {
        "client-offer",
        "client",
        "server",
        "event",
        "clip-client",
        "clip-server",
    }
    assert documented("event") == union_tags(ObjectEvent)
    assert documented("client") == p._CLIENT_TAGS == union_tags(p.ClientMessage)
    # Live sends its own messages and every object event
    assert documented("server") == {"hello", "overlay", "status", "pong"}
    assert union_tags(p.ServerMessage) == documented("server") | documented("event")
    assert documented("clip-client") == union_tags(cp.ClipClientMessage)
    assert documented("clip-server") | {"objects", "error"} <= union_tags(cp.ClipServerMessage)
    assert union_tags(cp.ClipServerMessage) - documented("clip-server") <= documented("event")


@pytest.mark.parametrize("body", doc_examples("event"))
def test_documented_object_events_parse(body: str) -> None:
    msg = parse_event(body)
    assert json.loads(msg.model_dump_json())["type"] == json.loads(body)["type"]


@pytest.mark.parametrize("body", doc_examples("clip-server"))
def test_documented_clip_server_messages_parse(body: str) -> None:
    assert cp.clip_server_adapter.validate_json(body).type == json.loads(body)["type"]


@pytest.mark.parametrize("body", doc_examples("clip-client"))
def test_documented_clip_client_messages_parse(body: str) -> None:
    assert cp.clip_client_adapter.validate_json(body).type == json.loads(body)["type"]


@pytest.mark.parametrize("body", doc_examples("client"))
def test_documented_client_messages_parse(body: str) -> None:
    msg = p.parse_client_message(body)
    assert msg.type == json.loads(body)["type"]


@pytest.mark.parametrize("body", doc_examples("server"))
def test_documented_server_messages_parse(body: str) -> None:
    msg = p.parse_server_message(body)
    assert json.loads(msg.model_dump_json())["type"] == json.loads(body)["type"]
    if msg.type == "overlay":  # the documented mask is a real one
        for o in msg.objects:
            assert rle_decode(o.rle.model_dump()).shape == tuple(o.rle.size)


def test_documented_offer_parses() -> None:
    (body,) = doc_examples("client-offer")
    assert p.OfferRequest.model_validate_json(body).type == "offer"


# (raw message, words the reason must contain) - one row per kind of mistake
BAD = [
    ("", "not valid JSON"),  # empty
    ("{", "not valid JSON"),  # truncated
    ("42", "JSON object"),  # not an object
    ('{"type": "teleport"}', "unknown or missing message type"),  # unknown tag
    ('{"phrase": "cup"}', "unknown or missing message type"),  # no tag
    ('{"type": "click", "x": 1}', "click.y"),  # missing field
    ('{"type": "click", "x": NaN, "y": 1}', "finite number"),  # NaN slips through JSON parsers
    ('{"type": "click", "x": 1e9, "y": 1}', "click.x"),  # absurd coordinate
    ('{"type": "describe", "object_id": -1}', "describe.object_id"),  # negative id
    ('{"type": "find", "phrase": ""}', "find.phrase"),  # empty phrase
    ('{"type": "box", "box": [0, 0, 0, 5]}', "must have x0 < x1, y0 < y1"),  # empty box
    ('{"type": "reset", "hard": true}', "reset.hard"),  # unknown field
]


@pytest.mark.parametrize("raw,words", BAD)
def test_bad_client_messages_say_why(raw: str, words: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_message(raw)
    assert words in str(info.value)


def test_overlay_round_trip_keeps_the_mask() -> None:
    mask = np.zeros((12, 16), bool)
    mask[2:5, 3:9] = True
    msg = p.OverlayMessage(
        frame_index=3,
        pts=9000,
        time_s=0.1,
        frame_size=p.FrameSize(width=16, height=12),
        objects=[
            ObjectResult(
                id=1,
                rle=RLEMask(**rle_encode(mask)),
                box=(3, 2, 9, 5),
                presence_probability=0.9,
                present=True,
            )
        ],
    )
    back = p.parse_server_message(msg.model_dump_json())
    assert np.array_equal(rle_decode(back.objects[0].rle.model_dump()), mask)


def test_every_route_is_documented(tmp_path: Path) -> None:
    """Every route the app serves is documented where a client looks for it: the API's (under
    /api) in docs/protocol.md, as `METHOD /path` (websockets as `WS /path`), with `{id}` for the
    clip's, image's or session's id; the service's own (the page, health, metrics) in the
    README. A route added without its row fails here."""
    from fastapi.routing import APIRoute, APIWebSocketRoute

    from streamer.app import create_app
    from streamer.settings import Settings

    app = create_app(
        Settings(data_dir=tmp_path / "data"), vision_model=None, reasoner=None, load_vision=False
    )
    doc, readme = DOC.read_text(), (DOC.parent.parent / "README.md").read_text()
    named = re.compile(r"\{(clip_id|image_id|item_id|session_id)\}")
    missing, api = [], 0
    for route in app.routes:
        if isinstance(route, APIRoute):
            methods = sorted(route.methods - {"HEAD"})
        elif isinstance(route, APIWebSocketRoute):
            methods = ["WS"]
        else:
            continue  # the static files
        path = named.sub("{id}", route.path)
        for method in methods:
            if path.startswith("/api/"):
                api += 1
                found = f"{method} {path}" in doc
            else:
                found = f"`{path}`" in readme or f"`{method} {path}`" in readme
            if not found:
                missing.append(f"{method} {route.path}")
    assert api > 40  # the app's routes were read
    assert not missing, missing
