"""Per-browser isolation: what one browser makes, another can neither see, use nor evict."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from streamer.app import create_app
from streamer.http.access import ANONYMOUS_OWNER, OWNER_COOKIE, request_owner
from streamer.http.kept import KeptItems
from streamer.settings import Settings
from tests.test_clip_media import write_clip

ALICE, BOB = "a" * 32, "b" * 32


@pytest.fixture(autouse=True)
def _owner_reset() -> Any:
    token = request_owner.set(ANONYMOUS_OWNER)
    yield
    request_owner.reset(token)


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 120, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# Each mode's routes on one item (the id goes after /api/<kind>s/), all its owner's only.
ROUTES = {
    "image": ["GET ", "GET /thumbnail.jpg", "GET /image", "POST /clicks", "DELETE "],
    "clip": [
        "GET ", "GET /thumbnail.jpg", "GET /video", "GET /frame?t=0", "GET /export.json",
        "POST /clicks", "DELETE ",
    ],
}  # fmt: skip


@pytest.mark.parametrize("kind", ["image", "clip"])
def test_another_browsers_item_is_not_there(kind: str, model: Any, tmp_path: Path) -> None:
    if kind == "image":
        upload = ("a.png", png(), "image/png")
    else:
        upload = ("a.mp4", write_clip(tmp_path / "a.mp4", frames=10).read_bytes(), "video/mp4")
    settings = Settings(data_dir=tmp_path / "data")
    app = create_app(settings, vision_model=model, reasoner=None, load_vision=False)
    with TestClient(app) as client:
        client.cookies.set(OWNER_COOKIE, ALICE)
        r = client.post(f"/api/{kind}s", files={"file": upload})
        assert r.status_code == 201, r.text
        item = f"/api/{kind}s/{r.json()['id']}"
        assert len(r.json()["id"]) == 32  # 128 bits
        assert client.get(item).status_code == 200

        client.cookies.set(OWNER_COOKIE, BOB)
        for route in ROUTES[kind]:
            method, rest = route.split(" ")
            click = {"x": 5, "y": 5} | ({"frame": 0} if kind == "clip" else {})
            body = click if method == "POST" else None
            r = client.request(method, item + rest, json=body)
            assert r.status_code == 404, (route, r.text)  # the same as a wrong id
        if kind == "clip":  # its socket says what its routes say (it said unknown_object)
            with client.websocket_connect(item + "/ws") as ws:
                notice = ws.receive_json()
            assert (notice["code"], notice["message"], notice["fatal"]) == (
                "unknown_clip",
                r.json()["detail"],
                True,
            )

        client.cookies.set(OWNER_COOKIE, ALICE)  # Bob's attempts changed nothing
        assert client.get(item).status_code == 200
        assert client.get(item + "/thumbnail.jpg").status_code == 200


def test_one_browsers_uploads_evict_only_its_own(tmp_path: Path) -> None:
    services = type("S", (), {"settings": Settings(data_dir=tmp_path)})()
    kept: KeptItems[str] = KeptItems(services, "image", "images", keep=2)
    request_owner.set(BOB)
    assert kept.put("bob-1", "bob's") == []
    request_owner.set(ALICE)
    evicted = []
    for i in range(kept.keep_total):  # a flood of uploads from one browser
        evicted += kept.put(f"alice-{i}", f"alice {i}")
    assert "bob's" not in evicted and len(kept.mine()) == 2  # (the request's owner: Alice)
    # Alice's library says what went and why; Bob's says nothing of hers (not even a name).
    said = kept.removed_mine()
    assert [n.id for n in said] == [f"alice-{i}" for i in reversed(range(kept.keep_total - 2))]
    assert all("this browser keeps at most 2 images" in n.reason for n in said)
    request_owner.set(BOB)
    assert kept.get("bob-1") == "bob's"
    assert kept.removed_mine() == []


def test_an_item_in_use_is_never_evicted_to_make_room(tmp_path: Path) -> None:
    """A clip whose job runs (or a page has open) stays when uploads pass the cap: the least
    recently used idle one goes instead, and while only busy ones are over, all stay."""

    class Kept(KeptItems[str]):
        busy: set[str] = set()

        def in_use(self, item: Any) -> bool:
            return item in self.busy

    services = type("S", (), {"settings": Settings(data_dir=tmp_path)})()
    kept = Kept(services, "clip", "clips", keep=2)
    request_owner.set(ALICE)
    kept.busy = {"first"}  # its job runs
    kept.put("1", "first")
    kept.put("2", "second")
    assert kept.put("3", "third") == ["second"]  # not the older "first": it is busy
    kept.busy = {"first", "third"}
    assert kept.put("4", "fourth") == []  # only busy ones past the cap: they wait
    assert len(kept.mine()) == 3
    kept.busy = set()
    assert kept.put("5", "fifth") == ["first", "third"]  # back to the cap, busy no more
    assert sorted(kept.items) == ["4", "5"]


def test_the_total_bound_holds_however_many_browsers(tmp_path: Path) -> None:
    services = type("S", (), {"settings": Settings(data_dir=tmp_path)})()
    kept: KeptItems[int] = KeptItems(services, "clip", "clips", keep=2)
    for i in range(kept.keep_total * 3):
        request_owner.set(f"{i:032x}")
        kept.put(f"item-{i}", i)
    assert len(kept.items) == kept.keep_total


async def test_another_browser_cannot_take_a_dropped_live_sessions_objects() -> None:
    """Alice's connection drops; Bob, naming her session in his offer's `resume`, gets nothing (as
    for an id that never was) and takes nothing: Alice's page, coming back, still gets them."""
    from streamer.live.registry import LiveRegistry
    from streamer.live.resume import Parked
    from streamer.objects.tracked import TrackedObject

    reg = LiveRegistry(SimpleNamespace(settings=Settings()))
    request_owner.set(ALICE)
    session = await reg.admit()
    assert session is not None
    mine = TrackedObject(1, "click", "object 1", description="my passport on the desk")
    session.parked = Parked([mine], {1: (0.0, 0.0, 5.0, 5.0)}, (40, 40), 2)
    reg._forget(session)  # what its close does when the connection dropped
    request_owner.set(BOB)
    assert reg.take_parked(session.id) is None
    request_owner.set(ALICE)
    back = reg.take_parked(session.id)
    assert back is not None and [o.description for o in back.objects] == ["my passport on the desk"]
