"""Scrubbing a variable-frame-rate clip in headless Chromium: each frame of a fast burst is the one the video shows, the label names and a click lands on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamer.app import create_app
from streamer.clip.video_io import probe
from streamer.settings import Settings
from tests.browser import BROWSER_TEST, MEDIA_TO_PAGE, browser_page
from tests.conftest import ServerThread
from tests.test_clip_media import LIMITS, square_at, square_center
from tests.test_clip_video_io import BURST_MS, write_timed

pytestmark = BROWSER_TEST
STRIDE = 6  # the clip's frame i is the synthetic clip's frame 6 i: its square moves ~4 px a frame

# Page JS: the left edge of the red square in the picture the video shows now (null: none).
SHOWN_SQUARE_LEFT = """() => {
  const v = document.querySelector('#clip-video');
  const c = document.createElement('canvas');
  c.width = v.videoWidth;
  c.height = v.videoHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(v, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  for (let x = 0; x < c.width; x++)
    for (let y = 0; y < c.height; y++) {
      const k = (y * c.width + x) * 4;
      if (d[k] > 180 && d[k + 1] < 80 && d[k + 2] < 80) return x;
    }
  return null;
}"""


async def open_clip(page: Any, base_url: str, clip: Path) -> list[str]:
    """Open the app, upload `clip` in Clip mode and wait until the video can show a frame; the
    list the page's script errors are collected into."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(base_url)
    await page.get_by_test_id("mode-clip").click()
    await page.get_by_test_id("upload-input").set_input_files(str(clip))
    await page.wait_for_function(
        "() => document.querySelector('#clip-video').readyState >= 2", timeout=30_000
    )
    return errors


async def test_scrubbing_a_burst_shows_labels_and_clicks_each_frame(
    model: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    clip_path = write_timed(tmp_path / "burst.mp4", BURST_MS, stride=STRIDE)
    info = probe(clip_path, LIMITS)
    burst = [i for i in range(1, info.frame_count - 1) if BURST_MS[i + 1] - BURST_MS[i] == 4]
    assert len(burst) >= 5
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    app = create_app(settings, vision_model=model, reasoner=None, load_vision=False)
    with ServerThread(app) as server:
        async with browser_page() as page:
            errors = await open_clip(page, server.base_url, clip_path)
            scrub, label = page.get_by_test_id("scrubber"), page.get_by_test_id("frame-label")
            for i in burst:
                await scrub.fill(str(i))
                await expect(label).to_contain_text(f"frame {i} /")
                await page.wait_for_function("() => !document.querySelector('#clip-video').seeking")
                # The picture is frame i's, not the next one's.
                left = await page.evaluate(SHOWN_SQUARE_LEFT)
                assert left is not None and abs(left - square_at(i * STRIDE)[0]) <= 1, (i, left)
            # A click on the last burst frame shown lands on that frame on the server.
            square = square_center(burst[-1] * STRIDE)
            cx, cy = await page.evaluate(MEDIA_TO_PAGE, ["#clip-video", *square])
            await page.mouse.click(cx, cy)
            await expect(label).to_contain_text(f"last click on frame {burst[-1]}")
            assert errors == []
