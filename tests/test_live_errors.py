"""Live mode under bad input: malformed offers, garbage and oversized messages, bad clicks,
unknown objects, too many sessions or objects, a VLM that is down or off, idle sessions.

Every case checks the person gets a message that says what happened, and (unless the case is
meant to end it) that the session keeps working afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from streamer.app import create_app
from streamer.services import NO_VLM, build_reasoner
from streamer.settings import Settings
from tests.conftest import LiveClient, ServerThread, square_center, wait_until
from tests.fakes.openai_server import free_port

pytestmark = pytest.mark.timeout(180)
W, H = 160, 120


def make_app(model: Any, reasoner: Any = None, **kw: Any) -> Any:
    base: dict[str, Any] = dict(weights="random", sam2_image_size=256, device="cpu")
    base.update(kw)
    settings = Settings(**base)
    return create_app(settings, vision_model=model, reasoner=reasoner)


@contextlib.asynccontextmanager
async def live_session(
    moving_shape: Any, model: Any, reasoner: Any = None, **settings: Any
) -> AsyncIterator[tuple[Any, ServerThread, LiveClient]]:
    """An app with these settings, served, and a client connected to it with a moving square."""
    app = make_app(model, reasoner, **settings)
    with ServerThread(app) as server:
        client = await connected(server, moving_shape)
        try:
            yield app, server, client
        finally:
            await client.close()


async def connected(server: ServerThread, moving_shape: Any) -> LiveClient:
    client = LiveClient(server.base_url)
    await client.connect(moving_shape(W, H))
    await client.wait_message("overlay", timeout=60)
    return client


async def ping_ok(client: LiveClient) -> None:
    mark = len(client.messages)
    await client.send({"type": "ping"})
    await client.wait_message("pong", after=mark, timeout=10)


# (body, what the message must mention) - each a way an offer can be wrong
BAD_OFFERS = [
    ("not json at all", "offer must be JSON"),  # not JSON
    (json.dumps({"type": "offer"}), "sdp"),  # no sdp
    (json.dumps({"sdp": "v=0", "type": "answer"}), "type"),  # an answer, not an offer
    (json.dumps({"sdp": "hello, I am not SDP", "type": "offer"}), "malformed SDP"),  # garbage SDP
    (
        json.dumps({"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "type": "offer"}),
        "no video",
    ),  # valid SDP without any media
]


async def test_bad_offers_get_400_with_a_message(sam2_tiny_random: Any) -> None:
    app = make_app(sam2_tiny_random)
    with ServerThread(app) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            for body, mention in BAD_OFFERS:
                resp = await http.post(
                    "/api/live/offer", content=body, headers={"content-type": "application/json"}
                )
                assert resp.status_code == 400, (body, resp.text)
                assert mention in resp.json()["detail"], (body, resp.json())
            state = (await http.get("/api/live/sessions")).json()
            assert state["sessions"] == 0 and state["peer_connections"] == 0, state


async def test_sessions_past_the_maximum_are_told_busy(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    app = make_app(sam2_tiny_random, max_sessions=1)
    with ServerThread(app) as server:
        first = await connected(server, moving_shape)
        second = LiveClient(server.base_url)
        resp = await second.offer(moving_shape(W, H))
        assert resp.status_code == 503
        assert resp.json()["code"] == "busy" and "busy" in resp.json()["detail"]
        await second.pc.close()
        await ping_ok(first)  # the admitted session is unaffected
        await first.close()
        reg = app.state.live
        await wait_until(lambda: server.call(lambda: len(reg.sessions)) == 0, 20, "slot freed")
        third = await connected(server, moving_shape)  # the freed slot is usable again
        await third.close()


# (raw websocket text, words the error must contain) - each a kind of garbage
GARBAGE = [
    ("{not json", "not valid JSON"),  # broken JSON
    ("[1, 2, 3]", "type"),  # JSON, but not an object
    (json.dumps({"type": "dance"}), "unknown or missing message type"),  # unknown tag
    (json.dumps({"x": 1}), "unknown or missing message type"),  # no tag
    (json.dumps({"type": "click", "x": "left", "y": 3}), "x"),  # wrong field type
    (json.dumps({"type": "click", "x": 1, "y": 2, "extra": True}), "extra"),  # unknown field
    (json.dumps({"type": "chat", "object_id": 1, "question": ""}), "question"),  # empty question
    (json.dumps({"type": "box", "box": [10, 10, 5, 5]}), "must have x0 < x1, y0 < y1"),
]


async def test_garbage_messages_get_errors_and_the_session_survives(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    async with live_session(moving_shape, sam2_tiny_random) as (app, server, client):
        for raw, words in GARBAGE:
            mark = len(client.messages)
            await client.send(raw)
            err = await client.wait_message("error", after=mark, timeout=10)
            assert err["code"] == "bad_message" and words in err["message"], (raw, err)
            assert not err["fatal"]
        await ping_ok(client)
        # Still tracking: a real click works after all that.
        mark = len(client.messages)
        await client.send({"type": "click", "x": W / 2, "y": H / 2})
        await client.wait_message("objects", lambda m: m["added"] is not None, after=mark)


async def test_a_binary_frame_is_refused_even_one_that_holds_json(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    """As docs/protocol.md and Clip's socket say: the protocol is JSON text. A binary
    {"type": "reset"} was carried out (the person's objects went)."""
    async with live_session(moving_shape, sam2_tiny_random) as (app, server, client):
        mark = len(client.messages)
        await client.send({"type": "click", "x": W / 2, "y": H / 2})
        await client.wait_message("objects", lambda m: m["added"] is not None, after=mark)
        for raw in (json.dumps({"type": "reset"}).encode(), b"\x00\x01"):
            mark = len(client.messages)
            await client.ws.send(raw)
            err = await client.wait_message("error", after=mark, timeout=10)
            assert err["code"] == "bad_message" and "binary frames" in err["message"], err
            assert not err["fatal"]
        await ping_ok(client)
        assert [m for m in client.messages[mark:] if m.get("type") == "objects"] == []
        session = server.call(lambda: next(iter(app.state.live.sessions.values())))
        assert server.call(lambda: len(session.objects)) == 1


async def test_oversized_message_closes_with_1009(sam2_tiny_random: Any, moving_shape: Any) -> None:
    async with live_session(moving_shape, sam2_tiny_random, max_ws_message_bytes=2048) as (
        app,
        server,
        client,
    ):
        await client.send(json.dumps({"type": "find", "phrase": "x" * 5000}))
        await client.wait_for(lambda: client.close_code is not None, 20, "the socket to close")
        assert client.close_code == 1009
        notice = client.of_type("error")[-1]  # the page is told why before the close
        assert notice["fatal"] and "over the 2048-byte limit" in notice["message"]
        reg = app.state.live
        await wait_until(
            lambda: server.call(lambda: len(reg.sessions)) == 0, 20, "the session to close"
        )


async def test_bad_clicks_and_unknown_objects_leave_the_session_intact(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    async with live_session(moving_shape, sam2_tiny_random, max_objects=1) as (app, server, client):
        cases = [
            ({"type": "click", "x": W + 5, "y": 10}, "bad_prompt", "outside"),
            ({"type": "click", "x": -1, "y": 10}, "bad_prompt", "outside"),
            # a negative click removes a region from an object; it never starts one (every mode)
            (
                {"type": "click", "x": 5, "y": 5, "positive": False},
                "bad_prompt",
                "select the object",
            ),
            ({"type": "click", "x": 5, "y": 5, "object_id": 42}, "unknown_object", "42"),
            ({"type": "describe", "object_id": 42}, "unknown_object", "42"),
            ({"type": "chat", "object_id": 42, "question": "what?"}, "unknown_object", "42"),
            ({"type": "remove", "object_id": 42}, "unknown_object", "42"),
        ]
        for msg, code, words in cases:
            mark = len(client.messages)
            await client.send(msg)
            err = await client.wait_message("error", after=mark, timeout=20)
            assert err["code"] == code and words in err["message"], (msg, err)
        x, y = square_center(0, W, H)
        mark = len(client.messages)
        await client.send({"type": "click", "x": x, "y": y})
        added = await client.wait_message("objects", lambda m: m["added"] is not None, after=mark)
        oid = added["added"]
        assert added["describe"] is False  # no VLM: nothing is described
        # A second object is past max_objects=1.
        mark = len(client.messages)
        await client.send({"type": "click", "x": 3, "y": 3})
        err = await client.wait_message("error", after=mark)
        assert err["code"] == "too_many_objects"
        # Refining the object still works (no error; messages are handled in order, so the
        # pong says the refinement is done), and so does removing it.
        mark = len(client.messages)
        await client.send({"type": "click", "x": 3, "y": 3, "positive": False, "object_id": oid})
        await ping_ok(client)
        assert [m for m in client.messages[mark:] if m["type"] == "error"] == []
        await client.wait_message(
            "overlay", lambda m: [o["id"] for o in m["objects"]] == [oid], after=mark
        )
        mark = len(client.messages)
        await client.send({"type": "remove", "object_id": oid})
        gone = await client.wait_message("objects", after=mark)
        assert gone["objects"] == []
        await ping_ok(client)


async def test_vlm_down_tracking_goes_on_and_the_reason_is_sent(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    settings = Settings(
        weights="random",
        sam2_image_size=256,
        device="cpu",
        vlm_url=f"http://127.0.0.1:{free_port()}/v1",
        vlm_connect_timeout_s=1,
    )
    reasoner, _ = build_reasoner(settings)
    app = create_app(settings, vision_model=sam2_tiny_random, reasoner=reasoner)
    with ServerThread(app) as server:
        client = await connected(server, moving_shape)
        try:
            mark = len(client.messages)
            await client.send({"type": "click", "x": W / 2, "y": H / 2})
            added = await client.wait_message(
                "objects", lambda m: m["added"] is not None, after=mark
            )
            err = await client.wait_message(
                "error", lambda m: m["code"] == "vlm_error", after=mark, timeout=60
            )
            assert "no VLM server at" in err["message"] and err["object_id"] == added["added"]
            # Overlays keep coming with the object in them.
            mark = len(client.messages)
            for _ in range(3):
                mark = len(client.messages)
                await client.wait_message(
                    "overlay",
                    lambda m: any(o["id"] == added["added"] for o in m["objects"]),
                    after=mark,
                    timeout=30,
                )

            # Once the page has learnt the VLM is down (its banner), a new object is tracked but
            # not described at once: no error for each click the person makes meanwhile.
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
                assert (await http.get("/api/vlm")).json()["reachable"] is False
            mark = len(client.messages)
            await client.send({"type": "click", "x": 20, "y": 20})
            second = await client.wait_message(
                "objects", lambda m: m["added"] is not None, after=mark
            )
            for _ in range(3):
                await client.wait_message(
                    "overlay",
                    lambda m: any(o["id"] == second["added"] for o in m["objects"]),
                    after=len(client.messages),
                    timeout=30,
                )
            await ping_ok(client)
            about_it = [
                m
                for m in client.messages[mark:]
                if m.get("object_id") == second["added"] and m["type"] != "objects"
            ]
            assert about_it == []
        finally:
            await client.close()


async def test_vlm_off_says_why_and_tracks(sam2_tiny_random: Any, moving_shape: Any) -> None:
    async with live_session(moving_shape, sam2_tiny_random) as (
        app,
        server,
        client,
    ):  # reasoner=None: descriptions off
        hello = client.of_type("hello")[0]
        assert hello["descriptions"] is False
        # What to start and what to pass, the words the page and the server's log use too.
        assert hello["descriptions_off_reason"] == NO_VLM and "`vllm serve " in NO_VLM
        assert any(e["message"] == NO_VLM for e in client.of_type("error"))
        mark = len(client.messages)
        await client.send({"type": "find", "phrase": "the red cup"})
        err = await client.wait_message("error", after=mark)
        assert err["code"] == "vlm_off" and "--vlm-url" in err["message"]
        # Named by its phrase: the page ends the Find it answers, not another one under way.
        assert (err["request"], err["phrase"]) == ("find", "the red cup")
        mark = len(client.messages)
        await client.send({"type": "click", "x": W / 2, "y": H / 2})
        added = await client.wait_message("objects", lambda m: m["added"] is not None, after=mark)
        await client.wait_message(
            "overlay",
            lambda m: any(o["id"] == added["added"] for o in m["objects"]),
            after=mark,
            timeout=30,
        )
        status = await client.wait_message("status", after=mark, timeout=10)
        assert status["descriptions"] is False and status["descriptions_off_reason"]


async def test_unknown_session_websocket_is_refused(sam2_tiny_random: Any) -> None:
    app = make_app(sam2_tiny_random)
    with ServerThread(app) as server:
        client = LiveClient(server.base_url)
        await client.open_ws("/api/live/sessions/nope/ws")
        await client.wait_for(lambda: client.close_code is not None, 10, "the socket to close")
        assert client.close_code == 4404
        assert "post an offer" in client.of_type("error")[0]["message"]


async def test_offer_without_websocket_or_frames_times_out(
    sam2_tiny_random: Any, moving_shape: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fmu.live.session")
    app = make_app(sam2_tiny_random, session_idle_timeout_s=1.0)
    with ServerThread(app) as server:
        client = LiveClient(server.base_url)
        resp = await client.offer(moving_shape(W, H))
        assert resp.status_code == 200
        sid = resp.json()["session_id"]
        reg = app.state.live
        # Not "there is one session now": a second after the offer (a slow answer, a busy
        # machine) it may have timed out already. It went, and for the missing websocket.
        await wait_until(
            lambda: server.call(lambda: len(reg.sessions)) == 0,
            15,
            "the unpaired session to time out",
        )
        assert f"session {sid[:8]} closing: no websocket attached within 1 s" in caplog.text
        await client.pc.close()


async def test_session_without_frames_or_messages_closes_after_the_idle_timeout(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    async with live_session(moving_shape, sam2_tiny_random, session_idle_timeout_s=1.5) as (
        app,
        server,
        client,
    ):
        # The camera stops (the peer connection stays up): no frames, no messages.
        client.pc.getSenders()[0].replaceTrack(None)
        await client.wait_for(lambda: client.close_code is not None, 30, "the idle close")
        err = client.of_type("error")[-1]
        assert err["code"] == "session_closed" and err["fatal"]
        assert "without frames or messages" in err["message"]
        reg = app.state.live
        await wait_until(lambda: server.call(lambda: len(reg.sessions)) == 0, 10, "cleanup")


async def test_a_click_flood_gets_slow_down_and_neither_session_is_lost(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    async with live_session(moving_shape, sam2_tiny_random, max_pending_messages=4) as (
        app,
        server,
        flooder,
    ):
        other = await connected(server, moving_shape)
        try:
            mark = len(flooder.messages)
            await flooder.send({"type": "click", "x": W / 2, "y": H / 2})
            added = await flooder.wait_message("objects", lambda m: m["added"], after=mark)
            oid = added["added"]
            mark = len(flooder.messages)
            for i in range(2000):  # refine clicks, sent without waiting for anything
                await flooder.send({"type": "click", "x": 10 + i % 140, "y": 60, "object_id": oid})
            # The synced toggle flipped in the middle of it: a flag on the frames, never dropped.
            await flooder.send({"type": "frame_ids", "on": True})
            # The websocket's own keepalive is answered while the flood waits: the socket stays up.
            await asyncio.wait_for(await flooder.ws.ping(), 30)
            slow = [m for m in flooder.messages[mark:] if m.get("code") == "slow_down"]
            assert slow, "the flood was queued instead of refused"
            assert all(m["request"] == "click" and not m["fatal"] for m in slow)
            session = server.call(lambda: app.state.live.sessions[flooder.session_id])
            await wait_until(
                lambda: server.call(lambda: session.tracker.frame_ids), 30, "frame ids on"
            )
            assert "Wait for their answers" in slow[0]["message"]
            # Once what waits is handled (a ping is answered in order; refused while the queue
            # is full, as a page that is told to slow down would, it is sent again), the flooder
            # works again; the other session was never affected.
            while True:
                mark = len(flooder.messages)
                await flooder.send({"type": "ping"})
                reply = await flooder.wait_for(
                    lambda: next(
                        (
                            m
                            for m in flooder.messages[mark:]
                            if m["type"] == "pong" or m.get("request") == "ping"
                        ),
                        None,
                    ),
                    120,
                    what="a pong or a slow_down",
                )
                if reply["type"] == "pong":
                    break
                await asyncio.sleep(1)
            for client in (other, flooder):
                mark = len(client.messages)
                await client.send({"type": "click", "x": W / 4, "y": H / 4})
                new = await client.wait_message(
                    "objects", lambda m: m["added"] is not None, after=mark, timeout=120
                )
                assert new["added"] is not None
            assert flooder.close_code is None and other.close_code is None
        finally:
            await other.close()
