"""Removing an object stops its describe, chat or auto-refine at once in Clip and Image, as in
Live: even while the VLM has not answered yet, its request ends and its VLM share is free for the
next object (the stream used to wait for its next token to notice, keeping the share: the next
object's description was refused as busy)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_image_api import encoded, make_client, ndjson, upload
from tests.test_vlm_share_claim import HeldAnswer

pytestmark = pytest.mark.timeout(180)


def removed_while_held(
    model: Any,
    tmp_path: Path,
    request: str,
    body: dict[str, Any],
) -> Iterator[tuple[Any, Any, str]]:
    """An image's object whose `request` (describe, auto_refine) the VLM holds unanswered, removed
    meanwhile with the image's share at one request: (that request's response, the client, the
    image's URL). The VLM answers every later request at once."""
    vlm = HeldAnswer("A red square.")
    with ScriptedVLMServer(answer=vlm) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with make_client(model, tmp_path, reasoner, vlm_max_in_flight_per_session=1) as client:
            iid = upload(client, encoded("PNG")).json()["id"]
            url = f"/api/images/{iid}"
            oid = client.post(f"{url}/clicks", json={"x": 70, "y": 60}).json()["object"]["id"]
            held: list[Any] = []
            thread = threading.Thread(
                target=lambda: held.append(client.post(f"{url}/objects/{oid}/{request}", json=body))
            )
            thread.start()
            try:
                assert vlm.asked.wait(60)  # the request is at the VLM, which holds it
                assert client.delete(f"{url}/objects/{oid}").status_code == 200
                thread.join(60)  # the held request ends with its object, the VLM still silent
                assert held and not vlm.released.is_set(), "the request outlived its object"
                yield held[0], client, url
            finally:
                vlm.released.set()
                thread.join(60)


def test_a_removed_objects_description_frees_the_share_for_the_next_object(
    model: Any,
    tmp_path: Path,
) -> None:
    for answer, client, url in removed_while_held(model, tmp_path, "describe", {}):
        assert answer.status_code == 200
        assert [e["type"] for e in ndjson(answer)] == ["description_start"]  # as Live: it stops
        r = client.post(f"{url}/clicks", json={"x": 20, "y": 20})
        again = client.post(f"{url}/objects/{r.json()['object']['id']}/describe")
        assert again.status_code == 200, again.text  # was 409: the removed one held the share
        assert "verdict" in [e["type"] for e in ndjson(again)]


def test_a_removed_objects_auto_refine_ends_saying_so_as_in_live(
    model: Any,
    tmp_path: Path,
) -> None:
    for answer, _, _ in removed_while_held(model, tmp_path, "auto_refine", {}):
        last = ndjson(answer)[-1]
        assert last["type"] == "refine_done" and last["reason"] == "stopped", last
        assert last["message"] == "object 1 was removed, so its auto-refine stopped"
