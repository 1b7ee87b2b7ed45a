"""A clip's or image's VLM share (--vlm-max-in-flight-per-session) is taken at a describe's,
chat's or auto-refine's arrival: one more while the share is taken waits its turn, before any
frame is read or encoded (it was refused, so the third of three objects clicked at once was never
described), and runs when the share has room."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.image import store as image_store
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.conftest import sent_aside, until
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_api import CLICK_FRAME, vlm_client
from tests.test_clip_describe_claim import Counted, events, new_object
from tests.test_clip_media import square_center
from tests.test_image_api import encoded, make_client, ndjson, upload

pytestmark = pytest.mark.timeout(120)


class HeldAnswer:
    """The scripted VLM's answers: the first request is held (its describe or chat keeps its VLM
    slot) until `release`; `asked` is set once it has arrived."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.asked, self.released = threading.Event(), threading.Event()

    def __call__(self, request: dict[str, Any]) -> Any:
        held = not self.asked.is_set()
        self.asked.set()

        async def answer() -> str:
            while held and not self.released.is_set():
                await asyncio.sleep(0.01)
            return self.text

        return answer()


def two_objects(client: Any, clip_path: Path) -> tuple[str, int, int]:
    """A clip with two clicked objects on CLICK_FRAME, not tracked yet: (clip id, ids)."""
    cid, first = new_object(client, clip_path)
    x, y = square_center(CLICK_FRAME)
    r = client.post(f"/api/clips/{cid}/clicks", json={"frame": CLICK_FRAME, "x": x, "y": y})
    return cid, first, r.json()["object_id"]


def test_a_clip_describe_past_the_share_waits_its_turn_without_reading(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: Any,
    clip_path: Path,
) -> None:
    """Two objects clicked at once with a share of one: the second's description waits for the
    first's (it was refused, and the page never described that object), reading nothing meanwhile."""
    vlm = HeldAnswer("A red square.")
    with vlm_client(model, tmp_path, vlm, vlm_max_in_flight_per_session=1) as client:
        cid, first, second = two_objects(client, clip_path)
        counted = Counted(monkeypatch)
        counted.gate.set()  # nothing waits: the frames read and encoded are only counted
        url = f"/api/clips/{cid}/objects/{{}}/describe"
        share = client.app.state.clips.get(cid).objects.vlm_share  # type: ignore[attr-defined]
        body = {"frame": CLICK_FRAME}
        with sent_aside(lambda: client.post(url.format(first), json=body), vlm.released) as one:
            assert vlm.asked.wait(60)  # the first describe holds the clip's one VLM request
            done = (counted.reads, counted.encodes)
            with sent_aside(
                lambda: client.post(url.format(second), json=body), vlm.released
            ) as two:
                until(lambda: share.waiting == 1, "the second describe waits its turn")
                assert (counted.reads, counted.encodes) == done  # nothing read while it waits
                assert not two.came
        assert events(one.answer)[-2]["type"] == "verdict"
        described = events(two.answer)
        assert described[0] == {**described[0], "type": "description_start", "object_id": second}
        assert described[-2]["type"] == "verdict"
        assert share.running == share.waiting == 0


def test_a_second_describe_of_an_object_waiting_for_its_share_is_refused_at_once(
    tmp_path: Path,
    model: Any,
    clip_path: Path,
) -> None:
    """Waiting counts as under way: a double-click on Describe while the object waits for the
    share is refused at once, as it is while it runs (both waited, and the second broke the
    first's hold on the share)."""
    vlm = HeldAnswer("A red square.")
    with vlm_client(model, tmp_path, vlm, vlm_max_in_flight_per_session=1) as client:
        cid, first, second = two_objects(client, clip_path)
        url = f"/api/clips/{cid}/objects/{{}}/describe"
        share = client.app.state.clips.get(cid).objects.vlm_share  # type: ignore[attr-defined]
        body = {"frame": CLICK_FRAME}
        with sent_aside(lambda: client.post(url.format(first), json=body), vlm.released):
            assert vlm.asked.wait(60)
            with sent_aside(
                lambda: client.post(url.format(second), json=body), vlm.released
            ) as two:
                until(lambda: share.waiting == 1, "the second object's describe waits its turn")
                again = client.post(url.format(second), json=body)
                assert again.status_code == 409 and "already being described" in again.text
                assert share.waiting == 1  # the one waiting keeps its place
        assert events(two.answer)[-2]["type"] == "verdict"
        assert share.running == share.waiting == 0


def test_an_image_chat_past_the_share_waits_its_turn_without_reading(
    model: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The object's describe holds the image's one VLM request; a chat about it meanwhile (its
    own slot is free) waits for it before its freed pixels are read back from disk."""
    vlm = HeldAnswer("A red square.")
    reads: list[Path] = []
    real_read = image_store.read_display

    def read_display(path: Path) -> np.ndarray:
        reads.append(path)
        return real_read(path)

    with ScriptedVLMServer(answer=vlm) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with make_client(model, tmp_path, reasoner, vlm_max_in_flight_per_session=1) as client:
            iid = upload(client, encoded("PNG")).json()["id"]
            click = client.post(f"/api/images/{iid}/clicks", json={"x": 70, "y": 60})
            oid = click.json()["object"]["id"]
            monkeypatch.setattr(image_store, "read_display", read_display)
            url = f"/api/images/{iid}/objects/{oid}"
            entry = client.app.state.images.get(iid)  # type: ignore[attr-defined]
            question = {"question": "What?"}
            with sent_aside(lambda: client.post(f"{url}/describe"), vlm.released) as described:
                assert vlm.asked.wait(60)
                entry.image = None  # the pixels are on disk only now
                with sent_aside(
                    lambda: client.post(f"{url}/chat", json=question), vlm.released
                ) as asked:
                    until(lambda: entry.objects.vlm_share.waiting == 1, "the chat waits its turn")
                    assert reads == [] and not asked.came  # nothing read back while it waits
            assert "verdict" in [e["type"] for e in ndjson(described.answer)]
            assert [e["type"] for e in ndjson(asked.answer)][-1] == "chat_done"
            assert len(reads) == 1


def test_an_auto_refine_holds_the_share_as_a_describe_does(model: Any, tmp_path: Path) -> None:
    """Auto-refine's VLM requests count against the image's share (they took VLM slots past it:
    one page refining several objects could hold every slot the server has). A describe of
    another object meanwhile waits; it runs once the auto-refine has ended."""
    vlm = HeldAnswer('{"action": "done"}')
    with ScriptedVLMServer(answer=vlm) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with make_client(model, tmp_path, reasoner, vlm_max_in_flight_per_session=1) as client:
            iid = upload(client, encoded("PNG")).json()["id"]
            first, second = (
                client.post(f"/api/images/{iid}/clicks", json={"x": x, "y": y}).json()["object"]
                for x, y in ((70, 60), (20, 20))
            )
            url = f"/api/images/{iid}/objects/{{}}"
            share = client.app.state.images.get(iid).objects.vlm_share  # type: ignore[attr-defined]
            refine = url.format(first["id"]) + "/auto_refine"
            describe = url.format(second["id"]) + "/describe"
            with sent_aside(lambda: client.post(refine, json={}), vlm.released) as refined:
                assert vlm.asked.wait(60)  # the auto-refine's request is at the VLM
                with sent_aside(lambda: client.post(describe), vlm.released) as described:
                    until(lambda: share.waiting == 1, "the describe waits for the auto-refine")
                    assert not described.came
            assert [e["type"] for e in ndjson(refined.answer)][-1] == "refine_done"
            assert ndjson(described.answer)[0]["type"] == "description_start"


async def test_a_request_whose_client_left_while_waiting_gives_its_place_up(
    model: Any,
    tmp_path: Path,
) -> None:
    """A page closed (or reloaded) while its describe waits for the share: the server gives the
    place up at once (it held it until its turn came, and the object counted as being described:
    the reloaded page's describe of it was refused), and a describe of that object asked again
    is answered."""
    from streamer.app import create_app
    from tests.test_image_api import served, uploaded

    vlm = HeldAnswer("A red square.")
    with ScriptedVLMServer(answer=vlm) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        settings = Settings(data_dir=tmp_path / "data", vlm_max_in_flight_per_session=1)
        app = create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
        async with served(app) as (server, c):
            iid, clicks = await uploaded(c)
            ids = [(await c.post(clicks, json={"x": x, "y": 60})).json()["object"]["id"]
                   for x in (70, 20)]  # fmt: skip
            url = f"/api/images/{iid}/objects/{{}}/describe"
            share = server.call(lambda: app.state.images.get(iid).objects.vlm_share)
            first = asyncio.ensure_future(c.post(url.format(ids[0])))
            assert await asyncio.to_thread(vlm.asked.wait, 60)  # holds the image's one request
            gone = asyncio.ensure_future(c.post(url.format(ids[1])))  # the page that closes
            await waits(server, share, 1, "the second describe waits its turn")
            gone.cancel()  # its connection closes
            await asyncio.gather(gone, return_exceptions=True)
            await waits(server, share, 0, "the place given up while the first still runs")
            assert not first.done()
            again = asyncio.ensure_future(c.post(url.format(ids[1])))  # the reloaded page's
            await waits(server, share, 1, "the describe asked again waits its turn")
            vlm.released.set()
            for r in await asyncio.gather(first, again):
                assert "verdict" in [e["type"] for e in events(r)]


async def waits(server: Any, share: Any, count: int, what: str) -> None:
    """Until `count` requests wait for the share on the server."""
    deadline = time.monotonic() + 60
    while server.call(lambda: share.waiting) != count:
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)
