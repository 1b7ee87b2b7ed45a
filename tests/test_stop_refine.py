"""Stop of an auto-refine in Clip and Image is a request, as Live's stop_refine is: the refine
ends at once, even while the VLM has not answered its next click, and both the stop's answer and
the refine's own NDJSON answer end with the same refine_done, `stopped`, counting the clicks the
server applied. (The page used to stop them by closing the stream, so it counted the clicks it had
received: one short when Stop came while SAM2 applied one.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.conftest import request_text, until
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_api import CLICK_FRAME, upload, vlm_client, wait_job
from tests.test_clip_media import square_center
from tests.test_image_api import _model_click, encoded, make_client, ndjson
from tests.test_image_api import upload as upload_image
from tests.test_vlm_share_claim import HeldAnswer
from workers.reasoning.images import fitted_size

pytestmark = pytest.mark.timeout(240)


class ClickThenHold:
    """Auto-refine's VLM: the first next-click request answers `click`, the second is held until
    `released` (then every one answers done). Describes answer at once."""

    def __init__(self, click: str) -> None:
        self.click = click
        self.asked = 0
        self.holding, self.released = threading.Event(), threading.Event()

    def __call__(self, body: dict[str, Any]) -> Any:
        if "next click" not in request_text(body):
            return "A red square."
        self.asked += 1
        if self.asked == 1:
            return self.click
        held = self.asked == 2
        self.holding.set()

        async def answer() -> str:
            while held and not self.released.is_set():
                await asyncio.sleep(0.01)
            return '{"action": "done"}'

        return answer()


def stopped_after_one_click(
    client: Any, url: str, oid: int, vlm: ClickThenHold
) -> tuple[list[dict[str, Any]], Any]:
    """Auto-refine `oid` (at `url`), stopped while the VLM holds its second click: (the
    refine's NDJSON events, the stop's response)."""
    answered: list[Any] = []
    refine = threading.Thread(
        target=lambda: answered.append(client.post(f"{url}/objects/{oid}/auto_refine", json={}))
    )
    refine.start()
    try:
        assert vlm.holding.wait(120), "the VLM was never asked for a second click"
        stop = client.post(f"{url}/objects/{oid}/stop_refine")
        refine.join(60)
        assert answered, "the auto-refine went on after its stop"
        assert not vlm.released.is_set()  # it stopped without waiting for the VLM
        return ndjson(answered[0]), stop
    finally:
        vlm.released.set()
        refine.join(60)


def check_stopped(events: list[dict[str, Any]], stop: Any, oid: int) -> None:
    done = {
        "type": "refine_done",
        "object_id": oid,
        "steps": 1,
        "reason": "stopped",
        "message": "stopped; the 1 click applied stays",
    }
    assert stop.status_code == 200, stop.text
    assert stop.json() == done
    assert [e["type"] for e in events] == ["refine_click", "refine_done"]
    assert events[-1] == done  # the refine's own answer ends as the stop says, as in Live


def check_stopped_again_and_refine_anew(client: Any, url: str, oid: int) -> None:
    again = client.post(f"{url}/objects/{oid}/stop_refine")
    assert again.status_code == 400, again.text
    assert again.json()["code"] == "bad_message"
    assert again.json()["detail"] == f"object {oid} is not being refined"
    anew = client.post(f"{url}/objects/{oid}/auto_refine", json={})
    assert anew.status_code == 200, anew.text  # the stopped one holds nothing
    assert ndjson(anew)[-1]["reason"] == "done"


@pytest.fixture()
def image_site(model: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """A scripted VLM and an image app on it: make(answer, **settings) -> (client, image URL)."""
    with contextlib.ExitStack() as stack:

        def make(answer: Any, **overrides: Any) -> tuple[Any, str]:
            srv = stack.enter_context(ScriptedVLMServer(answer=answer))
            reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
            client = stack.enter_context(make_client(model, tmp_path, reasoner, **overrides))
            return client, f"/api/images/{upload_image(client, encoded('PNG')).json()['id']}"

        yield make


def test_an_image_auto_refine_stopped_keeps_its_click_and_says_so(
    image_site: Callable[..., Any],
) -> None:
    vlm = ClickThenHold(_model_click("positive", 80, 70))
    client, url = image_site(vlm)
    oid = client.post(f"{url}/clicks", json={"x": 70, "y": 60}).json()["object"]["id"]
    events, stop = stopped_after_one_click(client, url, oid, vlm)
    check_stopped(events, stop, oid)
    (obj,) = client.get(url).json()["objects"]
    assert obj["rle"] == events[0]["result"]["rle"]  # the click applied stays
    check_stopped_again_and_refine_anew(client, url, oid)
    missing = client.post(f"{url}/objects/9/stop_refine")
    assert (missing.status_code, missing.json()["code"]) == (404, "unknown_object")


def started(answers: dict[str, Any], name: str, call: Callable[[], Any]) -> threading.Thread:
    """`call()` on a thread of its own, its answer kept in `answers` under `name`."""
    thread = threading.Thread(target=lambda: answers.update({name: call()}))
    thread.start()
    return thread


STOPPED_BEFORE_ITS_FIRST_CLICK = {
    "type": "refine_done",
    "reason": "stopped",
    "steps": 0,
    "message": "stopped; no click was applied",
}


def test_a_stop_while_the_refine_waits_its_vlm_turn_ends_it_there(
    image_site: Callable[..., Any],
) -> None:
    """Past the share the refine waits in its request; a stop then ends it, as Live's does at
    that stage: the stop and the refine's own answer say `stopped` with no click applied, the VLM
    is never asked for a click, and the object can be refined again. (It was refused, 409,
    "close its request to stop it".)"""
    vlm = HeldAnswer("A red square.")
    asked: list[str] = []
    client, url = image_site(
        lambda body: asked.append(request_text(body)) or vlm(body), vlm_max_in_flight_per_session=1
    )
    first = client.post(f"{url}/clicks", json={"x": 70, "y": 60}).json()["object"]["id"]
    second = client.post(f"{url}/clicks", json={"x": 15, "y": 15}).json()["object"]["id"]
    answers: dict[str, Any] = {}
    describing = started(
        answers, "describe", lambda: client.post(f"{url}/objects/{first}/describe")
    )
    try:
        assert vlm.asked.wait(60)  # the describe holds the one share
        refining = started(
            answers, "refine", lambda: client.post(f"{url}/objects/{second}/auto_refine", json={})
        )
        stops: list[Any] = []
        # "Not being refined" until the refine's request has come and waits its turn.
        until(
            lambda: (
                stops.append(client.post(f"{url}/objects/{second}/stop_refine"))
                or stops[-1].status_code != 400
            ),
            "the refine waiting its turn",
        )
        done = {**STOPPED_BEFORE_ITS_FIRST_CLICK, "object_id": second}
        assert (stops[-1].status_code, stops[-1].json()) == (200, done), stops[-1].text
        refining.join(60)  # ended while the describe still holds the share
        assert answers["refine"].status_code == 200, answers["refine"].text
        assert ndjson(answers["refine"]) == [done]
        assert not any("next click" in text for text in asked), asked
    finally:
        vlm.released.set()
        describing.join(60)
    assert answers["describe"].status_code == 200
    anew = client.post(f"{url}/objects/{second}/auto_refine", json={})
    assert anew.status_code == 200, anew.text  # the stopped one holds nothing
    assert ndjson(anew)[-1]["type"] == "refine_done"
    assert any("next click" in text for text in asked)


def test_a_stop_while_the_refine_reads_its_picture_ends_it_before_the_vlm_is_asked(
    image_site: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that comes while the refine's request reads the object's picture (a frame and an
    encode, in Clip) lets that read end, then the refine ends without asking the VLM; the stop
    returns once the refine's answer has said so."""
    from streamer.image import agent

    reading, read = threading.Event(), threading.Event()
    view = agent.object_view

    async def slow_view(*args: Any) -> Any:
        reading.set()
        while not read.is_set():
            await asyncio.sleep(0.01)
        return await view(*args)

    monkeypatch.setattr(agent, "object_view", slow_view)
    asked: list[str] = []
    client, url = image_site(lambda body: asked.append(request_text(body)) or "A red square.")
    oid = client.post(f"{url}/clicks", json={"x": 70, "y": 60}).json()["object"]["id"]
    answers: dict[str, Any] = {}
    refining = started(
        answers, "refine", lambda: client.post(f"{url}/objects/{oid}/auto_refine", json={})
    )
    assert reading.wait(60)
    stopping = started(answers, "stop", lambda: client.post(f"{url}/objects/{oid}/stop_refine"))
    obj = client.app.state.images.get(url.rsplit("/", 1)[1]).objects.get(oid)
    until(  # the stop has reached the refine (http/claim.py's _BeforeStart, which it calls)
        lambda: (
            obj.refine_before_start is not None and obj.refine_before_start.__self__.asked.is_set()
        ),
        "the stop to arrive",
    )
    assert stopping.is_alive()  # it waits for the refine's answer
    read.set()
    refining.join(60)
    stopping.join(60)
    done = {**STOPPED_BEFORE_ITS_FIRST_CLICK, "object_id": oid}
    assert (answers["stop"].status_code, answers["stop"].json()) == (200, done)
    assert ndjson(answers["refine"]) == [done]
    assert not any("next click" in text for text in asked), asked


def test_a_clip_auto_refine_stopped_keeps_its_click_as_a_prompt_and_says_so(
    model: Any, clip_path: Path, tmp_path: Path
) -> None:
    from tests.test_clip_api import H, W

    sw, sh = fitted_size(W, H, 768)
    x, y = square_center(CLICK_FRAME)
    vlm = ClickThenHold(
        json.dumps({"action": "positive", "point_2d": [round(x * sw / W), round((y + 3) * sh / H)]})
    )
    with vlm_client(model, tmp_path, vlm) as client:
        cid = upload(client, clip_path)["id"]
        url = f"/api/clips/{cid}"
        with client.websocket_connect(f"{url}/ws") as ws:
            ws.receive_json()
            r = client.post(f"{url}/clicks", json={"frame": CLICK_FRAME, "x": x, "y": y})
            oid = r.json()["object_id"]
            wait_job(ws, oid)
            events, stop = stopped_after_one_click(client, url, oid, vlm)
            check_stopped(events, stop, oid)
            (prompt,) = client.get(f"{url}/export.json").json()["objects"][0]["prompts"]
            assert prompt["labels"] == [1, 1]  # the person's click and the VLM's, which stays
            check_stopped_again_and_refine_anew(client, url, oid)
