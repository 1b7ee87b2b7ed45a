"""Shared test fixtures: an app server in a thread, a synthetic camera track, a live client.

Kept generic: other test modules add their own fixtures in their own files.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

# Plugin modules of their own: how the suite splits across xdist workers (first: it sets the
# workers' OpenMP threads before anything imports torch), and the real vLLM server fixtures.
pytest_plugins = ["tests.parallel", "tests.vllm_server"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """Runs an ASGI app under uvicorn on 127.0.0.1 in a daemon thread (real sockets, real UDP)."""

    def __init__(self, app: Any, *, ws_max_size: int = 16 * 1024 * 1024) -> None:
        import uvicorn

        self.app = app
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            loop="asyncio",
            ws_max_size=ws_max_size,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        from tests.fakes.openai_server import start_serving

        start_serving(self.server, self.thread, "the app server", timeout_s=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run fn on the server's event loop (to read loop-owned state safely); its value."""
        fut = asyncio.run_coroutine_threadsafe(_as_coro(fn), self.loop)
        return fut.result(timeout)


async def _as_coro(fn: Callable[[], Any]) -> Any:
    value = fn()
    if asyncio.iscoroutine(value):
        value = await value
    return value


class Sent:
    """A request `sent_aside`: its answer, once it came."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    @property
    def came(self) -> bool:
        return bool(self.got)

    @property
    def answer(self) -> Any:
        (answer,) = self.got
        if isinstance(answer, BaseException):
            raise answer  # a server error, raised by the TestClient, fails the test here
        return answer


@contextlib.contextmanager
def sent_aside(call: Callable[[], Any], release: threading.Event) -> Iterator[Sent]:
    """`call` (a request the test holds while it sends another: the TestClient serves both at
    once) run on another thread for the block. Leaving the block sets `release` (what holds the
    request) and waits for the answer, whatever the block raised."""
    sent = Sent()

    def run() -> None:
        try:
            sent.got.append(call())
        except Exception as exc:  # noqa: BLE001 - Sent.answer raises it in the test
            sent.got.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        release.set()
        thread.join(60)


def moving_shape_frame(i: int, width: int, height: int, step: int = 2) -> np.ndarray:
    """Frame i of a synthetic clip: a red square moving `step` px a frame across a dark grey
    background, back and forth (RGB)."""
    img = np.full((height, width, 3), 40, dtype=np.uint8)
    side = max(8, min(width, height) // 3)
    span = max(1, width - side)
    x = (i * step) % (2 * span)
    x = x if x < span else 2 * span - x
    y = (height - side) // 2
    img[y : y + side, x : x + side] = (220, 40, 40)
    return img


def square_center(i: int, width: int, height: int) -> tuple[int, int]:
    side = max(8, min(width, height) // 3)
    span = max(1, width - side)
    x = (i * 2) % (2 * span)
    x = x if x < span else 2 * span - x
    return x + side // 2, (height - side) // 2 + side // 2


def make_moving_shape_track(
    width: int = 160, height: int = 120, fps: float = 15, step: int = 2
) -> Any:
    """An aiortc video track that plays the moving-square clip (`step` px a frame) in real time;
    its `sent` maps each frame's pts to the time it was sent."""
    from aiortc import VideoStreamTrack
    from av import VideoFrame

    class MovingShapeTrack(VideoStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.index = 0
            self.sent: dict[int, float] = {}  # pts -> wall time sent

        async def recv(self) -> VideoFrame:
            # VideoStreamTrack.next_timestamp paces at 30 fps; pace ourselves at `fps`.
            if self.index == 0:
                self._t0 = time.monotonic()
            else:
                wait = self._t0 + self.index / fps - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            frame = VideoFrame.from_ndarray(
                moving_shape_frame(self.index, width, height, step), format="rgb24"
            )
            frame.pts = round(self.index * 90000 / fps)
            frame.time_base = fractions.Fraction(1, 90000)
            self.sent[frame.pts] = time.monotonic()
            self.index += 1
            return frame

    return MovingShapeTrack()


class LiveClient:
    """A page stand-in: aiortc peer + websocket, collecting every server message."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.pc: Any = None
        self.ws: Any = None
        self.session_id: str | None = None
        self.messages: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.close_code: int | None = None

    async def offer(self, track: Any, resume: str | None = None, extra: Sequence[Any] = ()) -> Any:
        """POST the offer (taking back session `resume`'s objects, if given; `extra` tracks are
        offered after the camera, as a page sharing its microphone too); returns the httpx
        response (caller checks the status)."""
        import httpx
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for t in (track, *extra):
            self.pc.addTrack(t)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(
                f"{self.base_url}/api/live/offer",
                json={"sdp": self.pc.localDescription.sdp, "type": "offer", "resume": resume},
            )
        return resp

    async def connect(
        self, track: Any, resume: str | None = None, extra: Sequence[Any] = ()
    ) -> dict[str, Any]:
        """Offer, answer, open the websocket; the offer's answer (`resumed` says whether session
        `resume`'s objects are coming back)."""
        from aiortc import RTCSessionDescription

        resp = await self.offer(track, resume, extra)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        self.session_id = body["session_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        await self.open_ws(body["websocket"])
        return body

    async def open_ws(self, path: str) -> None:
        from websockets.asyncio.client import connect

        url = self.base_url.replace("http://", "ws://") + path
        self.ws = await connect(url, max_size=None)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.ws:
                self.messages.append(json.loads(raw))
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self._changed.set()

    async def send(self, msg: dict[str, Any] | str) -> None:
        await self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition"
    ) -> Any:
        """Wait until predicate() is truthy (checked on every new message); returns its value."""

        def details() -> str:
            kinds = [m.get("type") for m in self.messages[-20:]]
            return f"last messages: {kinds}; errors: {self.of_type('error')[-3:]}"

        return await wait_until(predicate, timeout, what, wake=self._changed, details=details)

    async def wait_message(
        self,
        kind: str,
        where: Callable[[dict[str, Any]], bool] = lambda m: True,
        timeout: float = 60.0,
        after: int = 0,
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for m in self.messages[after:]:
                if m.get("type") == kind and where(m):
                    return m
            return None

        return await self.wait_for(find, timeout, what=f"a {kind!r} message")

    async def click_new_object(self, x: float, y: float, timeout: float = 60.0) -> int:
        """A positive click at (x, y) with nothing selected; waits for the object it adds and
        returns that object's id."""
        mark = len(self.messages)
        await self.send({"type": "click", "x": x, "y": y, "positive": True, "object_id": None})
        added = await self.wait_message(
            "objects", lambda m: m["added"] is not None, after=mark, timeout=timeout
        )
        return int(added["added"])

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)
        if self.pc is not None:
            await self.pc.close()


@contextlib.asynccontextmanager
async def connected(server: ServerThread, track: Any) -> AsyncIterator[LiveClient]:
    """A LiveClient of the server with `track` as its camera, closed at the end."""
    client = LiveClient(server.base_url)
    await client.connect(track)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def live_clients(server: ServerThread, n: int) -> AsyncIterator[list[LiveClient]]:
    """`n` LiveClients of the server, not connected yet; every one is closed at the end, the
    others too when one fails to connect or to close."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [LiveClient(server.base_url) for _ in range(n)]
        for client in clients:
            stack.push_async_callback(client.close)
        yield clients


def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    """Wait, on this thread, until `check()` is true (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.05,
    *,
    wake: asyncio.Event | None = None,
    details: Callable[[], str] | None = None,
) -> Any:
    """Wait for a condition with a deadline: checked whenever `wake` is set (e.g. a new message),
    else polled every `interval` (state without a message to wait on). `details` adds to the
    failure what was seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            seen = f"; {details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")
        if wake is None:
            await asyncio.sleep(interval)
            continue
        wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=min(left, 0.5))


async def sessions_closed(server: Any, app: Any, what: str) -> None:
    """Wait until the app has no live session left and no open peer connection."""
    reg = app.state.live
    await wait_until(lambda: server.call(lambda: len(reg.sessions)) == 0, 20, what)
    assert server.call(reg.open_peer_connections) == 0


def random_sam2_args(image_size: int, *, threads: int | None = None) -> list[str]:
    """main.py's arguments for a random-weight SAM2 on the CPU at `image_size` (on `threads`)."""
    args = ["--weights", "random", "--sam2-image-size", str(image_size), "--device", "cpu"]
    return args + (["--torch-threads", str(threads)] if threads else [])


def one_thread_sam2(image_size: int) -> Iterator[Any]:
    """A random-weight tiny SAM2 in fp32 on the CPU, computing on one thread while it is in use:
    with other work on the machine, two spinning OpenMP threads stall badly. For module fixtures."""
    import torch

    from workers.vision import load_sam2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_sam2(
        size="tiny", weights="random", device="cpu", image_size=image_size, seed=0, precision="fp32"
    )
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sam2_tiny_random() -> Any:
    """SAM2.1 tiny, seeded random weights, 256 px, CPU: real compute, meaningless masks."""
    from workers.vision import load_sam2

    return load_sam2(size="tiny", weights="random", device="cpu", image_size=256, seed=0)


@pytest.fixture(scope="session")
def sam2_tiny_128() -> Any:
    """SAM2.1 tiny, seeded random weights, 128 px, CPU: the cheapest real model, for the pages."""
    from workers.vision import load_sam2

    return load_sam2("tiny", weights="random", device="cpu", image_size=128, seed=0)


@pytest.fixture(scope="session")
def model(sam2_tiny_128: Any) -> Any:
    """The clip, image and page tests' SAM2: sam2_tiny_128, loaded once per test process (each
    module loaded its own)."""
    return sam2_tiny_128


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 40-frame 160x120 MP4 of a moving square (tests/test_clip_media.py write_clip), written
    once: tests upload copies of it."""
    from tests.test_clip_media import write_clip

    return write_clip(
        tmp_path_factory.mktemp("clip") / "moving.mp4", frames=40, width=160, height=120
    )


@pytest.fixture
def moving_shape() -> Iterator[Callable[..., Any]]:
    """Factory for synthetic camera tracks; stops them at teardown."""
    tracks: list[Any] = []

    def make(width: int = 160, height: int = 120, fps: int = 15) -> Any:
        t = make_moving_shape_track(width, height, fps)
        tracks.append(t)
        return t

    yield make
    for t in tracks:
        t.stop()


def spotlight_answerer(
    description: str = "a red square block on a dark grey background",
    chat_answer: str = "It is red.",
) -> Callable[[dict[str, Any]], str]:
    """A scripted-VLM answer function that verifies whatever object the Spotlight shows.

    Describe requests get `description` and their Spotlight image is kept; the grounding request
    that follows carries the original frame at the same size, so the object's pixels are those the
    Spotlight left undimmed, and their box is the answer: the verdict is "verified" whatever mask
    the (random-weight) tracker made. Chat requests get `chat_answer`. A grounding request with no
    describe before it ("Find") gets the whole image.
    """
    import cv2

    from workers.reasoning.images import decode_data_url

    state: dict[str, Any] = {"spot": None}

    def object_box(spot: np.ndarray, orig: np.ndarray) -> list[int] | None:
        s, o = spot.astype(np.int32), orig.astype(np.int32)
        kept = np.abs(s - o).sum(axis=2) < np.abs(s - o // 2).sum(axis=2)
        kept &= ~(spot >= 235).all(axis=2)  # the outline is background
        kept = cv2.morphologyEx(kept.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        ys, xs = np.nonzero(kept)
        if not xs.size:
            return None
        return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]

    def answer(body: dict[str, Any]) -> str:
        texts, urls = request_parts(body)
        text = "\n".join(texts)
        if "Locate" in text:
            img = decode_data_url(urls[0])
            spot, state["spot"] = state["spot"], None
            box = None
            if spot is not None and spot.shape == img.shape:
                box = object_box(spot, img)
            box = box or [0, 0, img.shape[1], img.shape[0]]
            return json.dumps([{"bbox_2d": box, "label": "red square"}])
        if "Describe only the highlighted object" in text and urls:
            state["spot"] = decode_data_url(urls[0])
            return description
        return chat_answer

    return answer


def request_parts(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A chat request's text parts and image URLs, each in order."""
    texts: list[str] = []
    urls: list[str] = []
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                urls.append(part["image_url"]["url"])
    return texts, urls


def request_text(body: dict[str, Any]) -> str:
    """Every text part of a chat request, joined."""
    return " ".join(request_parts(body)[0])


class CheckedFindScript:
    """A scripted VLM for checked Find: grounding answers `boxes` (frame pixels, written as
    Qwen2.5-VL writes them), and the n-th candidate check answers `verdicts[n]` ("yes" past the
    end). The check requests are kept. Anything else gets `other`."""

    def __init__(
        self,
        boxes: list[tuple[float, float, float, float]],
        verdicts: list[str],
        frame_size: tuple[int, int],
        other: str = "It is red.",
    ) -> None:
        self.boxes, self.verdicts, self.frame_size, self.other = boxes, verdicts, frame_size, other
        self.checks: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> str:
        from workers.reasoning.grounding import from_frame_box
        from workers.reasoning.images import fitted_size

        text = request_text(body)
        if "Is the highlighted object" in text:
            self.checks.append(body)
            n = len(self.checks) - 1
            return self.verdicts[n] if n < len(self.verdicts) else "yes"
        if "Locate" in text:
            w, h = self.frame_size
            size = fitted_size(w, h, 768)
            sent = [
                from_frame_box(b, convention="absolute", image_size=size, frame_size=(w, h))
                for b in self.boxes
            ]
            return json.dumps(
                [{"bbox_2d": list(s), "label": f"cand{i}"} for i, s in enumerate(sent)]
            )
        return self.other

    def check_images(self) -> list[int]:
        """How many images each check request carried."""
        return [
            sum(
                1
                for m in body["messages"]
                if isinstance(m["content"], list)
                for p in m["content"]
                if p.get("type") == "image_url"
            )
            for body in self.checks
        ]
