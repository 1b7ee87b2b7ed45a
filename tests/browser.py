"""Headless Chromium for the browser tests: Debian's binary, the flags it needs here, the skip rule."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import weakref
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("FMU_CHROMIUM", "/usr/bin/chromium")

# No network beyond loopback here: without the background-networking flags Chromium keeps trying
# to reach Google's hosts, and QUIC/sync/component updates add more of the same.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Skip on a developer machine without Chromium; in CI (which installs it) a missing browser must
# fail the run instead of quietly skipping the browser tests.
needs_chromium = pytest.mark.skipif(
    not shutil.which(CHROMIUM) and not os.environ.get("CI"),
    reason=f"no Chromium at {CHROMIUM} (scripts/setup.sh --dev installs Debian's chromium)",
)
# Every browser test module's marks: `pytestmark = BROWSER_TEST` (-m "not browser" leaves them
# out; a page test on a slow CI machine gets 300 s).
BROWSER_TEST = [pytest.mark.browser, pytest.mark.timeout(300), needs_chromium]

# How long Playwright's `expect` waits for the page to reach a state: 20 s, not its 5 s. The
# suite's other xdist worker (tests/parallel.py) can hold both cores of a small CI machine for
# seconds; a state the page never reaches still fails, only later.
with contextlib.suppress(ImportError):
    from playwright.async_api import expect

    expect.set_options(timeout=20_000)

# Page JS: how many overlay-canvas pixels are drawn (non-transparent); 0 before any mask.
OVERLAY_PIXELS = """() => {
  const c = document.querySelector('[data-testid=overlay]');
  if (!c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
}"""

# Page JS: notes, in window.__handled, each answer the page has finished reading and handling:
# `json` (a JSON body read: its URL, after "held " when the test's route marked it with an
# x-held header), `streams` (NDJSON streams read to their end) and `decoding` (image decodes
# under way). Each is noted a task after it settles, once the page's own code that awaited it has
# run: a test waits until the page has handled an answer, also one it must ignore (a late answer,
# another image's events), instead of sleeping.
HANDLED = """() => {
  if (window.__handled) return;
  const h = (window.__handled = { json: [], streams: 0, decoding: 0 });
  const later = (fn) => () => setTimeout(fn, 0);
  const json = Response.prototype.json;
  Response.prototype.json = function () {
    const url = (this.headers.get("x-held") ? "held " : "") + this.url;
    return json.call(this).finally(later(() => h.json.push(url)));
  };
  const read = ReadableStreamDefaultReader.prototype.read;
  ReadableStreamDefaultReader.prototype.read = function () {
    return read.call(this).then((r) => {
      if (r.done) later(() => (h.streams += 1))();
      return r;
    });
  };
  const decode = HTMLImageElement.prototype.decode;
  HTMLImageElement.prototype.decode = function () {
    h.decoding += 1;
    return decode.call(this).finally(later(() => (h.decoding -= 1)));
  };
}"""


def held_route(release: asyncio.Event, held: asyncio.Event) -> Any:
    """A route handler that takes the server's answer to the first GET request at once (what
    the server said then) and hands it to the page, marked with an x-held header (HANDLED),
    only once `release` is set; `held` is set when it has it. Other requests go through."""
    taken: list[Any] = []

    async def handler(route: Any) -> None:
        if route.request.method != "GET" or taken:
            await route.continue_()
            return
        taken.append(await route.fetch())
        held.set()
        await release.wait()
        await route.fulfill(response=taken[0], headers={**taken[0].headers, "x-held": "1"})

    return handler


def held_post(release: asyncio.Event, held: asyncio.Event) -> Any:
    """A route handler that holds a POST (an upload, a resume) until `release` is set, before the
    server has it (Playwright's route.fetch drops a file body); `held` is set when it holds it."""

    async def handler(route: Any) -> None:
        if route.request.method == "POST":
            held.set()
            await release.wait()
        await route.continue_()

    return handler


def handled(path: str, held: bool = True) -> str:
    """Page JS (HANDLED): the page has handled the answer from `path` (the held one)."""
    tag = "held " if held else ""
    return f"() => window.__handled.json.some((u) => u.startsWith('{tag}') && u.endsWith('{path}'))"


# Page coordinates of a media pixel, laid out as object-fit: contain does (as web/overlay.js).
MEDIA_TO_PAGE = """([sel, x, y]) => {
  const el = document.querySelector(sel);
  const w = el.tagName === 'VIDEO' ? el.videoWidth : el.width;
  const h = el.tagName === 'VIDEO' ? el.videoHeight : el.height;
  const r = el.getBoundingClientRect();
  const s = Math.min(r.width / w, r.height / h);
  return [r.left + (r.width - w * s) / 2 + x * s, r.top + (r.height - h * s) / 2 + y * s];
}"""


async def upload_clip(page: Any, clip: Path, *, ready: int = 1, timeout: float = 60_000) -> None:
    """Clip mode: upload `clip` and wait until its video has `ready` (readyState: 1, its size;
    2, the frame shown)."""
    await page.get_by_test_id("mode-clip").click()
    await page.get_by_test_id("upload-input").set_input_files(str(clip))
    await page.wait_for_function(
        f"() => document.querySelector('#clip-video').readyState >= {ready}", timeout=timeout
    )


async def click_clip(page: Any, x: float, y: float) -> None:
    """A click on the clip's picture at clip pixel (x, y)."""
    await page.mouse.click(*await page.evaluate(MEDIA_TO_PAGE, ["#clip-video", x, y]))


def square_png(folder: Path) -> Path:
    """folder/square.png: a grey 160x120 picture (not black: the Spotlight dims the background)
    with a red square at x 50..90, y 40..80."""
    png = folder / "square.png"
    img = np.full((120, 160, 3), 90, np.uint8)
    img[40:80, 50:90] = (230, 20, 20)
    Image.fromarray(img).save(png)
    return png


def write_indexed_y4m(
    path: Path, width: int = 320, height: int = 240, frames: int = 60, fps: int = 15
) -> Path:
    """The moving-square clip with each frame's index as a bar code along the top: BAR_CELLS cells
    of BAR_W x BAR_H px, white for a set bit (least significant first). Chromium's fake camera
    loops it, so the index says which camera frame a picture is."""
    import cv2

    from tests.conftest import moving_shape_frame

    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            rgb = moving_shape_frame(i * 3, width, height)
            rgb[:BAR_H] = 0
            for bit in range(BAR_CELLS):
                if i >> bit & 1:
                    rgb[:BAR_H, bit * BAR_W : (bit + 1) * BAR_W] = 255
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


BAR_CELLS, BAR_W, BAR_H = 8, 40, 16


def read_bar_code(rgb: np.ndarray) -> int:
    row = rgb[BAR_H // 2]
    return sum(1 << b for b in range(BAR_CELLS) if row[b * BAR_W + BAR_W // 2].mean() > 127.5)


def recording_bar_codes(step: Any, computed_on: dict[int, int]) -> Any:
    """LiveTracker.step that also notes which camera frame (its bar code) each overlay's
    frame_index was computed on, in `computed_on`."""

    def recording_step(self: Any, frame: Any) -> Any:
        snapshot, overlay = step(self, frame)
        computed_on[snapshot.frame_index] = read_bar_code(snapshot.rgb)
        return snapshot, overlay

    return recording_step


# Page JS: the bar code of what a video or canvas element shows now.
READ_BAR_CODE = f"""(el) => {{
  const w = el.videoWidth || el.width;
  const h = el.videoHeight || el.height;
  if (!w || !h) return null;
  const c = document.createElement('canvas');
  c.width = w;
  c.height = h;
  const ctx = c.getContext('2d');
  ctx.drawImage(el, 0, 0);
  const d = ctx.getImageData(0, {BAR_H // 2}, w, 1).data;
  let code = 0;
  for (let b = 0; b < {BAR_CELLS}; b++) {{
    const k = (b * {BAR_W} + {BAR_W // 2}) * 4;
    if ((d[k] + d[k + 1] + d[k + 2]) / 3 > 127.5) code |= 1 << b;
  }}
  return code;
}}"""

# Page JS: the synced picture's bar code and the overlay it was painted for, read together.
SYNCED_PAINT = f"""() => {{
  const c = document.querySelector('[data-testid=synced-frame]');
  if (c.hidden || !c.width) return null;
  return {{code: ({READ_BAR_CODE})(c), frameIndex: Number(c.dataset.frameIndex)}};
}}"""


# Page JS: a point well inside the drawn masks and one well clear of them, both on the media, in
# page coordinates ({inside, outside}: [x, y] or null). "Well": every overlay pixel within
# `margin` is drawn (inside) or empty (outside), so box outlines and a mask that moves a little
# between overlays do not change the answer.
MASK_POINTS = """(margin) => {
  const c = document.querySelector('[data-testid=overlay]');
  const stage = document.querySelector('[data-testid=stage]').getBoundingClientRect();
  const media = [...document.querySelectorAll('#stage [data-for]')].find((e) => !e.hidden);
  const r = media.getBoundingClientRect();
  const mw = media.videoWidth || media.width, mh = media.videoHeight || media.height;
  const s = Math.min(r.width / mw, r.height / mh);
  const x0 = r.left - stage.left + (r.width - mw * s) / 2, y0 = r.top - stage.top + (r.height - mh * s) / 2;
  const x1 = x0 + mw * s, y1 = y0 + mh * s;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const k = c.width / stage.width; // the overlay's pixels per CSS pixel (devicePixelRatio)
  const drawn = (x, y) => d[(Math.floor(y * k) * c.width + Math.floor(x * k)) * 4 + 3] > 0;
  const all = (x, y, want) => {
    for (let dy = -margin; dy <= margin; dy++)
      for (let dx = -margin; dx <= margin; dx++) if (drawn(x + dx, y + dy) !== want) return false;
    return true;
  };
  let inside = null, outside = null;
  for (let y = Math.ceil(y0) + margin; y < y1 - margin && !(inside && outside); y += 2)
    for (let x = Math.ceil(x0) + margin; x < x1 - margin; x += 2) {
      if (!inside && all(x, y, true)) inside = [stage.left + x, stage.top + y];
      if (!outside && all(x, y, false)) outside = [stage.left + x, stage.top + y];
    }
  return {inside, outside};
}"""


async def check_click_hint(page: Any, margin: int = 6) -> None:
    """The one object on the stage is selected: the hint says "refine #id" over its mask and "new
    object" clear of it."""
    from playwright.async_api import expect

    item = page.get_by_test_id("object-item")
    await expect(item).to_have_count(1)
    await expect(item).to_have_class("selected")
    oid = await item.get_attribute("data-object-id")
    points = await page.evaluate(MASK_POINTS, margin)
    assert points["inside"] and points["outside"], points
    hint = page.get_by_test_id("click-hint")
    for where, text in (("inside", f"refine #{oid}"), ("outside", "new object")):
        await page.mouse.move(*points[where])
        await expect(hint).to_be_visible()
        await expect(hint).to_have_text(text)


async def check_esc_and_delete(page: Any) -> None:
    """The one object is selected: Esc deselects it; Delete removes it."""
    from playwright.async_api import expect

    item = page.get_by_test_id("object-item")
    await expect(item).to_have_count(1)
    await expect(item).to_have_class("selected")
    await page.keyboard.press("Escape")
    await expect(item).not_to_have_class("selected")
    await item.locator(".label").click()
    await expect(item).to_have_class("selected")
    await page.keyboard.press("Delete")
    await expect(item).to_have_count(0)


async def count_with_find_all(page: Any, question: str, noun: str, double: bool = False) -> int:
    """Ask Find all `question` (`double`: with a double-click, as many people click buttons);
    once the status shows the count, check that it found at least one and names `noun`, and
    return the count."""
    from playwright.async_api import expect

    await page.get_by_test_id("find-input").fill(question)
    button = page.get_by_test_id("find-all")
    await (button.dblclick() if double else button.click())
    status = page.get_by_test_id("find-status")
    await expect(status).to_contain_text("count: ", timeout=90_000)
    text = await status.inner_text()
    count = int(text.split("count: ")[1].split(" ")[0])
    assert count >= 1 and f'"{noun}"' in text
    return count


def fake_camera_args(clip: Path) -> list[str]:
    """Chromium's flags for a fake camera playing `clip` (a .y4m, looped) with no prompt."""
    return [
        *CHROMIUM_ARGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    ]


VIEWPORT = {"width": 1200, "height": 800}


async def intercepting(context: Any) -> None:
    """Request interception on in `context` from the start, so that a test's own `route()` later
    only adds a handler. Chromium turns interception on for a page that had none asynchronously:
    a request the page sends just after that first `route()` has returned can still go out
    unseen, with no route called and no `request` event. A CI run lost a click's POST that way
    (its test waited 60 s for the click to reach its route); a bare page with a 50 ms poll lost
    9 requests in 620 so, and none in 620 with interception on beforehand (300 of them with this
    route, set before the page loads). The route matches no URL: Playwright's driver continues
    every other request itself, without a call into the test's event loop."""
    await context.route("**/no-request-goes-here", lambda route: route.fallback())


# Per page: its last requests, console lines and script errors, for `reached` to show.
_SEEN: weakref.WeakKeyDictionary[Any, deque[str]] = weakref.WeakKeyDictionary()


def recording(page: Any) -> Any:
    """Keep `page`'s last 40 requests, console lines and script errors (every page the tests
    open does), so that a wait that times out can say what the page was doing."""
    seen = _SEEN.setdefault(page, deque(maxlen=40))
    page.on("request", lambda r: seen.append(f"request {r.method} {r.url}"))
    page.on("console", lambda m: seen.append(f"console {m.type}: {m.text}"))
    page.on("pageerror", lambda e: seen.append(f"script error: {e}"))
    return page


async def reached(event: asyncio.Event, page: Any, what: str, timeout_s: float = 60.0) -> None:
    """Wait for `event` (set by a test's route handler, say); on a timeout fail with `what` did
    not happen and the page's last requests, console lines and script errors."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        seen = list(_SEEN.get(page, ())) or ["(nothing recorded: not a page from browser_page?)"]
        lines = "\n  ".join(seen)
        raise AssertionError(
            f"{what}: not within {timeout_s:.0f} s. The page ({page.url}) last:\n  {lines}"
        ) from None


async def _persistent(pw: Any, profile: Path, args: list[str], **options: Any) -> tuple[Any, Any]:
    """A persistent headless Chromium context in `profile` (localStorage and a camera permission
    survive a reload) and its first page, 1200x800: (context, page)."""
    context = await pw.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=args,
        viewport=VIEWPORT,
        **options,
    )
    await intercepting(context)
    return context, recording(context.pages[0] if context.pages else await context.new_page())


@contextlib.asynccontextmanager
async def browser_page(
    args: list[str] | None = None,
    *,
    profile: Path | None = None,
    accept_downloads: bool = False,
    scale: float = 1.0,
) -> AsyncIterator[Any]:
    """A 1200x800 page in headless Chromium, closed at the end. With `profile`, a persistent
    context in that folder (a camera permission that sticks, downloads). `scale`: the screen's
    device pixels per CSS pixel (2: a HiDPI laptop or phone)."""
    from playwright.async_api import async_playwright

    args = args or CHROMIUM_ARGS
    async with async_playwright() as pw:
        if profile is None:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            try:
                page = recording(
                    await browser.new_page(viewport=VIEWPORT, device_scale_factor=scale)
                )
                await intercepting(page.context)
                yield page
            finally:
                await browser.close()
            return
        context, page = await _persistent(pw, profile, args, accept_downloads=accept_downloads)
        try:
            yield page
        finally:
            await context.close()


async def open_with_camera(pw: Any, profile: Path, clip: Path) -> tuple[Any, Any]:
    """A persistent Chromium context whose camera plays `clip`, and its page: (context, page)."""
    return await _persistent(pw, profile, fake_camera_args(clip))


# Page JS: page coordinates of pixel (x, y) of a w x h image on the Image stage, which shows its
# working copy (each axis scaled by its own ratio).
# A point of a w x h frame (the server's pixels) -> page coordinates on the media `sel`, which
# shows that frame scaled (a photo's working copy, a clip of non-square pixels).
FRAME_TO_PAGE = f"""([sel, x, y, w, h]) => {{
  const el = document.querySelector(sel);
  const mw = el.tagName === 'VIDEO' ? el.videoWidth : el.width;
  const mh = el.tagName === 'VIDEO' ? el.videoHeight : el.height;
  return ({MEDIA_TO_PAGE})([sel, x * mw / w, y * mh / h]);
}}"""
IMAGE_TO_PAGE = f"""([x, y, w, h]) => ({FRAME_TO_PAGE})(['#image-canvas', x, y, w, h])"""


@contextlib.asynccontextmanager
async def served_page(
    app: Any, mode: str, scale: float = 1.0
) -> AsyncIterator[tuple[Any, list[str]]]:
    """`app` served, and a page open on it in `mode`: (the page, its script errors)."""
    from tests.conftest import ServerThread

    with ServerThread(app) as server:
        async with browser_page(scale=scale) as page:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(server.base_url)
            await page.get_by_test_id(f"mode-{mode}").click()
            yield page, errors


@contextlib.asynccontextmanager
async def image_page(
    model: Any,
    settings: Any,
    answer: Any,
    png: Path,
    token_delay_s: float = 0.0,
    scale: float = 1.0,
) -> AsyncIterator[tuple[Any, list[str]]]:
    """The page in Image mode, served with a scripted VLM, `png` uploaded and encoded; the
    page's script errors. `scale`: as browser_page's."""
    from playwright.async_api import expect

    from streamer.app import create_app
    from streamer.services import build_reasoner
    from streamer.settings import Settings
    from tests.fakes.openai_server import ScriptedVLMServer

    with ScriptedVLMServer(answer=answer, token_delay_s=token_delay_s) as vlm:
        reasoner = build_reasoner(Settings(vlm_url=vlm.url))[0]
        app = create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
        async with served_page(app, "image", scale) as (page, errors):
            await page.get_by_test_id("image-input").set_input_files(str(png))
            await expect(page.get_by_test_id("image-info")).to_contain_text(
                "encoded in", timeout=60_000
            )
            yield page, errors


@contextlib.asynccontextmanager
async def two_images_page(
    model: Any, tmp_path: Path
) -> AsyncIterator[tuple[Any, list[str], str, str]]:
    """image_page with square.png and a copy of it uploaded after it (shown now), a Spotlight
    answerer for its VLM and the page's answers counted (HANDLED): (the page, its script errors,
    the first image's id, the copy's), once the library lists both."""
    from playwright.async_api import expect

    from streamer.settings import Settings
    from tests.conftest import spotlight_answerer

    png = square_png(tmp_path)
    other = png.with_name("other.png")
    other.write_bytes(png.read_bytes())
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    async with image_page(model, settings, spotlight_answerer(), png) as (page, errors):
        await page.evaluate(HANDLED)
        canvas = page.locator("#image-canvas")
        first = await canvas.get_attribute("data-image-id") or ""
        await page.get_by_test_id("image-input").set_input_files(str(other))
        await expect(canvas).not_to_have_attribute("data-image-id", first, timeout=60_000)
        second = await canvas.get_attribute("data-image-id") or ""
        library = page.locator("[data-testid=library][data-for=image]")
        await expect(library.get_by_test_id("library-item")).to_have_count(2, timeout=30_000)
        yield page, errors, first, second
