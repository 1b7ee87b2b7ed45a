"""A clip's or image's VLM share (--vlm-max-in-flight-per-session) is held from a describe's,
chat's or auto-refine's arrival: one more while the share is taken is refused at once (409 busy, the share's
message) before any frame is read or encoded, as every other refusal is, instead of HTTP 200 with
an in-stream "busy" line after the work."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.image import store as image_store
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_api import CLICK_FRAME, clip_path, model, vlm_client  # noqa: F401
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


def refused_for_the_share(r: Any) -> None:
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "busy" and "(its share)" in r.json()["detail"], r.json()


def test_a_clip_describe_past_the_share_is_refused_at_once_without_reading(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: Any,  # noqa: F811
    clip_path: Path,  # noqa: F811
) -> None:
    vlm = HeldAnswer("A red square.")
    with vlm_client(model, tmp_path, vlm, vlm_max_in_flight_per_session=1) as client:
        cid, first = new_object(client, clip_path)
        x, y = square_center(CLICK_FRAME)
        r = client.post(f"/api/clips/{cid}/clicks", json={"frame": CLICK_FRAME, "x": x, "y": y})
        second = r.json()["object_id"]
        counted = Counted(monkeypatch)
        counted.gate.set()  # nothing waits: the frames read and encoded are only counted
        url = f"/api/clips/{cid}/objects/{{}}/describe"
        held: list[Any] = []
        thread = threading.Thread(
            target=lambda: held.append(client.post(url.format(first), json={"frame": CLICK_FRAME}))
        )
        thread.start()
        try:
            assert vlm.asked.wait(60)  # the first describe holds the clip's one VLM request
            done = (counted.reads, counted.encodes)
            refused_for_the_share(client.post(url.format(second), json={"frame": CLICK_FRAME}))
            assert (counted.reads, counted.encodes) == done  # refused before any work
        finally:
            vlm.released.set()
            thread.join(60)
        assert any(e["type"] == "verdict" for e in events(held[0]))
        # The share is free again: the second object is described now.
        again = events(client.post(url.format(second), json={"frame": CLICK_FRAME}))
        assert again[0]["type"] == "description_start"


def test_an_image_chat_past_the_share_is_refused_at_once_without_reading(
    model: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The object's describe holds the image's one VLM request; a chat about it meanwhile (its
    own slot is free) is refused before its freed pixels are read back from disk."""
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
            held: list[Any] = []
            thread = threading.Thread(target=lambda: held.append(client.post(f"{url}/describe")))
            thread.start()
            try:
                assert vlm.asked.wait(60)
                client.app.state.images.get(iid).image = None  # type: ignore[attr-defined]
                refused_for_the_share(client.post(f"{url}/chat", json={"question": "What?"}))
                assert reads == []  # refused before the pixels were read back
            finally:
                vlm.released.set()
                thread.join(60)
            assert held[0].status_code == 200, held[0].text
            assert "verdict" in [e["type"] for e in ndjson(held[0])]
            answer = client.post(f"{url}/chat", json={"question": "What?"})
            assert [e["type"] for e in ndjson(answer)][-1] == "chat_done"
            assert len(reads) == 1


def test_an_auto_refine_holds_the_share_as_a_describe_does(model: Any, tmp_path: Path) -> None:  # noqa: F811
    """Auto-refine's VLM requests count against the image's share (they took VLM slots past it:
    one page refining several objects could hold every slot the server has). A describe of
    another object meanwhile is refused; it is taken once the auto-refine has ended."""
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
            held: list[Any] = []
            thread = threading.Thread(
                target=lambda: held.append(
                    client.post(url.format(first["id"]) + "/auto_refine", json={})
                )
            )
            thread.start()
            try:
                assert vlm.asked.wait(60)  # the auto-refine's request is at the VLM
                refused_for_the_share(client.post(url.format(second["id"]) + "/describe"))
            finally:
                vlm.released.set()
                thread.join(60)
            assert held[0].status_code == 200, held[0].text
            assert [e["type"] for e in ndjson(held[0])][-1] == "refine_done"
            again = client.post(url.format(second["id"]) + "/describe")
            assert ndjson(again)[0]["type"] == "description_start"
