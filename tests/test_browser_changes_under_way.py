"""The page's find-all, auto-refine and Live requests after a mode, image or connection changes
under them: what a person sees stays true to what the server still runs."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx

from streamer.live.protocol import ProtocolError, parse_client_message
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.browser import BROWSER_TEST, browser_page
from tests.conftest import request_text, spotlight_answerer
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_browser_live import click_an_object, tracking_page, write_y4m
from tests.test_find_all import PROPOSE_ANYTHING

pytestmark = BROWSER_TEST

WEB = Path(__file__).resolve().parent.parent / "web"

# Page JS: the page's websockets, kept in window.__sockets (the test sends and closes on them).
KEEP_SOCKETS = """(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = function (...a) { const s = new Native(...a); window.__sockets.push(s); return s; };
  window.WebSocket.prototype = Native.prototype;
  Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
})();"""


def server_refusal(message: dict[str, Any]) -> str | None:
    """What Live's server answers `message` with when it refuses it (None: it takes it)."""
    try:
        parse_client_message(json.dumps(message))
    except ProtocolError as exc:
        return str(exc)
    return None


async def test_live_leaving_find_all_a_too_long_question_a_1009_close_and_refine_offline(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    """Live: a question past the limit the server serves is refused on the page in the server's
    words and the session goes on, one at the limit is answered; a message past the websocket's limit anyway (a 1009 close) is reconnected, objects
    back; Auto-refine pressed while the page reconnects is refused, not left "asking" for good;
    a Find all still asking the VLM when the person opens Image leaves Image's Find all idle."""
    from playwright.async_api import expect

    classifying, release = threading.Event(), threading.Event()
    spotlight = spotlight_answerer()

    async def answer(body: dict[str, Any]) -> str:
        if '"answers"' not in request_text(body):
            return spotlight(body)
        classifying.set()  # Find all's classification: held until the test ends
        while not release.is_set():
            await asyncio.sleep(0.05)
        return '{"answers": ["yes", "yes", "yes", "yes"]}'

    clip = write_y4m(tmp_path / "clip.y4m")
    with ScriptedVLMServer(answer=answer) as vlm:
        reasoner = build_reasoner(Settings(vlm_url=vlm.url))[0]
        try:
            async with tracking_page(
                sam2_tiny_random,
                tmp_path,
                clip,
                init_script=KEEP_SOCKETS,
                reasoner=reasoner,
                **PROPOSE_ANYTHING,
            ) as (server, page):
                oid = int(await click_an_object(server, page))
                status, error = page.get_by_test_id("status"), page.locator("#error-text")
                items = page.get_by_test_id("object-item")

                # The served limit (/api/capabilities), one character past it: an emoji is one
                # character to Python and two to JS's length. The page refuses it in the server's
                # words, sending nothing (the question stays in the box to shorten).
                served = httpx.get(f"{server.base_url}/api/capabilities").json()["text_limits"]
                limit = served["question"]
                chat_input, ask = (
                    page.get_by_test_id("chat-input"),
                    page.get_by_test_id("chat-submit"),
                )
                for too_long in ("😀" * (limit + 1), "what is it? " + "x" * 70_000):
                    question = {"type": "chat", "object_id": oid, "question": too_long}
                    said = server_refusal(question)
                    assert said == f"chat.question: String should have at most {limit} characters"
                    await expect(ask).to_be_enabled(timeout=60_000)
                    await chat_input.fill(too_long)
                    await ask.click()
                    await expect(error).to_have_text(said)
                    await expect(chat_input).to_have_value(too_long)
                    await expect(status).to_contain_text("fps")  # the session goes on
                # At the limit it is asked, and answered.
                await chat_input.fill("😀" * limit)
                await ask.click()
                await expect(chat_input).to_have_value("")
                await expect(page.get_by_test_id("answer")).to_contain_text("It is red.")
                await expect(error).to_be_hidden()

                # Past the websocket's limit all the same: the server closes with 1009 and keeps
                # the objects; the page takes them back (docs/protocol.md).
                await page.evaluate("() => window.__sockets.at(-1).send('x'.repeat(70000))")
                await expect(status).to_contain_text("reconnecting", timeout=30_000)
                await expect(status).to_contain_text("fps", timeout=90_000)
                await expect(items).to_have_count(1)
                await expect(error).not_to_contain_text("no longer had")

                # Auto-refine while the page reconnects: refused, and Auto-refine is back.
                if "selected" not in (await items.first.get_attribute("class") or ""):
                    await items.first.locator(".label").click()
                await page.evaluate(
                    """() => { window.__sockets.at(-1).close(4000, 'network blip');
                               document.querySelector('[data-testid=auto-refine]').click(); }"""
                )
                await expect(error).to_contain_text("not connected")
                await expect(page.get_by_test_id("auto-refine")).to_be_visible()
                await expect(page.get_by_test_id("stop-refine")).to_be_hidden()
                await expect(page.get_by_test_id("refine-status")).to_have_text("")
                await expect(status).to_contain_text("fps", timeout=90_000)

                # Find all asking the VLM, and the person opens Image: Image's are idle.
                await page.get_by_test_id("find-input").fill("how many squares?")
                await page.get_by_test_id("find-all").click()
                assert await asyncio.to_thread(classifying.wait, 90), "no region was classified"
                await expect(page.get_by_test_id("stop-find")).to_be_visible()
                await page.get_by_test_id("mode-image").click()
                await expect(page.get_by_test_id("find-all")).to_be_visible()
                await expect(page.get_by_test_id("stop-find")).to_be_hidden()
                await expect(page.get_by_test_id("find-status")).to_have_text("")
                await page.get_by_test_id("find-input").fill("how many cups?")
                await page.get_by_test_id("find-input").press("Enter")
                await expect(error).to_have_text("upload or drop an image first")
        finally:
            release.set()


# Page JS: client.js's stoppableStream, one run after another on it (Image's auto-refine of
# image A, then of image B) over a stubbed fetch whose streams the test ends: A's ends while B's
# runs, and Stop must still stop B's.
STOP_AFTER_AN_OLDER_RUN_ENDED = """async () => {
  const { stoppableStream } = await import('/client.js');
  const signals = [], ends = [];
  window.fetch = (url, init) => {
    signals.push(init.signal);
    const body = new ReadableStream({ start(c) {
      ends.push(() => c.close());
      init.signal.addEventListener('abort', () => c.error(new DOMException('stopped', 'AbortError')));
    } });
    return Promise.resolve(new Response(body, { status: 200 }));
  };
  const refining = stoppableStream();
  const a = refining.run('/a', {}, () => {});
  const b = refining.run('/b', {}, () => {});
  while (ends.length < 2) await new Promise((r) => setTimeout(r, 0));
  ends[0]();
  await a;
  refining.stop();
  const stopped = { aStopped: signals[0].aborted, bStopped: signals[1].aborted };
  if (stopped.bStopped) await b; // else B would run on for good, as on the server
  return stopped;
}"""

# Page JS: objects.js's store with an object whose description streams; `error` arrives.
DESCRIPTION_AFTER_AN_ERROR = """async (error) => {
  const { createObjectStore } = await import('/objects.js');
  const [list, answer, verdict] = ['ul', 'div', 'div'].map((t) => document.createElement(t));
  const store = createObjectStore({ list, answer, verdict, onAction() {}, onSelect() {}, onError() {} });
  store.apply({ type: 'objects', objects: [{ id: 1, label: 'object 1', source: 'click' }], added: 1, describe: true });
  store.apply({ type: 'description_start', object_id: 1, frame_index: 3, frames: null });
  store.apply({ type: 'description_token', object_id: 1, text: 'A red', attempt: 1 });
  store.apply(error);
  return { verdict: verdict.textContent, describeDisabled: list.querySelector('[data-testid=object-describe]').disabled };
}"""

# Page JS: objects.js's store with object 1's new description streaming ("A blue", attempt 1)
# when the item's objects come back as the server kept them (Clip or Image opened again, object 1
# with its earlier description), and the stream goes on (" cube", attempt 1): the answer shown.
RESTORED_MID_DESCRIPTION = """async () => {
  const { createObjectStore } = await import('/objects.js');
  const [list, answer, verdict] = ['ul', 'div', 'div'].map((t) => document.createElement(t));
  const store = createObjectStore({ list, answer, verdict, onAction() {}, onSelect() {}, onError() {} });
  const object = { id: 1, label: 'object 1', source: 'click' };
  store.apply({ type: 'objects', objects: [object], added: 1 });
  store.apply({ type: 'description_start', object_id: 1, frame_index: 3, frames: null });
  store.apply({ type: 'description_token', object_id: 1, text: 'A blue', attempt: 1 });
  store.restore([{ ...object, description: 'A red square.', verdict: 'verified', iou: 0.9, attempts: 1 }]);
  const restored = answer.textContent;
  store.apply({ type: 'description_token', object_id: 1, text: ' cube', attempt: 1 });
  return { restored, after: answer.textContent };
}"""

# Page JS: Live's requests with text limits `limits` (null: none known yet) send a text, or
# refuse it, sending nothing.
LIVE_REFUSALS = """async ([type, text, limits]) => {
  const { createLiveRequests } = await import('/live_requests.js');
  const sent = [];
  const requests = createLiveRequests({ send: (m) => sent.push(m) > 0, store: { asked() {} }, allCandidates: () => false, limits: () => limits });
  const call = { chat: () => requests.chat(1, text), find: () => requests.find(text), find_all: () => requests.findAll(text) }[type];
  try { call(); } catch (e) { return { refused: e.message, sent: sent.length }; }
  return { refused: null, sent: sent.length };
}"""


async def test_stop_refused_limits_and_a_click_error_in_the_page_modules() -> None:
    """The page's own modules: Stop stops the newest auto-refine after an older one ended; a
    dropped refine click naming an object leaves its streaming description alone (a describe's
    error still ends it); objects restored while a description streams do not keep its
    attempt (its next words start over, not after the kept description); Live's requests refuse a text past the limit they are given (the
    served one), in the server's words, and none with no limit known."""

    async def web_files(route: Any) -> None:
        name = route.request.url.split("/", 3)[3].split("?")[0] or "index.html"
        if name == "blank":
            await route.fulfill(
                body="<!doctype html><title>modules</title>", content_type="text/html"
            )
        else:
            await route.fulfill(path=WEB / name)

    async with browser_page() as page:
        await page.route("http://fmu.test/**", web_files)
        await page.goto("http://fmu.test/blank")

        assert await page.evaluate(STOP_AFTER_AN_OLDER_RUN_ENDED) == {
            "aStopped": False,
            "bStopped": True,
        }

        slow_down = {
            "type": "error",
            "code": "slow_down",
            "object_id": 1,
            "request": "click",
            "fatal": False,
            "message": "16 messages of this session are already waiting: this click was dropped",
        }
        streaming = await page.evaluate(DESCRIPTION_AFTER_AN_ERROR, slow_down)
        assert "fail" not in streaming["verdict"] and streaming["describeDisabled"]
        refused = {**slow_down, "code": "busy", "request": "describe", "message": "busy now"}
        failed = await page.evaluate(DESCRIPTION_AFTER_AN_ERROR, refused)
        assert "busy now" in failed["verdict"] and not failed["describeDisabled"]

        # Objects restored mid-description: the kept description shows, and the stream's next
        # token starts its text over, never glued onto the kept one ("A red square. cube").
        restored = await page.evaluate(RESTORED_MID_DESCRIPTION)
        assert "A red square." in restored["restored"], restored
        assert "A red square." not in restored["after"] and "cube" in restored["after"], restored

        # The limit is the one served, whatever it is; with none known yet a text goes, for
        # the server to judge (live_requests.js says why that is safe).
        for type_, limits, refused in (
            ("chat", {"question": 4}, "chat.question: String should have at most 4 characters"),
            ("find", {"phrase": 4}, "find.phrase: String should have at most 4 characters"),
            ("find_all", {"phrase": 4}, "find_all.phrase: String should have at most 4 characters"),
            ("chat", {"question": 5}, None),
            ("chat", None, None),
        ):
            page_says = await page.evaluate(LIVE_REFUSALS, [type_, "😀" * 5, limits])
            assert page_says == {"refused": refused, "sent": 0 if refused else 1}, (type_, limits)
