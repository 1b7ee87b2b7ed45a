"""Screenshots of the page for the README: Live, Clip and Image, and Image on a phone-sized screen.

Drives headless Chromium (Debian's, as the browser tests do) against a running service, with a
generated moving square as the camera, clip and image, so anyone can regenerate them:

    scripts/run.sh --weights random --sam2-image-size 256 --port 8080 &
    .venv/bin/python scripts/screenshots.py --url http://localhost:8080 --out docs/screenshots

Run it again whenever the page changes. With --weights random the masks are blobs (the banner
says so); serve real weights for pictures with real masks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

CHROMIUM = os.environ.get("FMU_CHROMIUM", "/usr/bin/chromium")
# Whether the overlay canvas has a drawn pixel.
DRAWN = """() => {
  const c = document.querySelector('[data-testid=overlay]');
  if (!c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return true;
  return false;
}"""
W, H = 320, 240


def scene(i: int) -> np.ndarray:
    """A grey room with a red square sliding right and a blue disc: frame i."""
    img = np.full((H, W, 3), 110, np.uint8)
    img[H * 2 // 3 :] = 80
    x = 30 + (i * 3) % (W - 90)
    img[70:130, x : x + 60] = (220, 30, 30)
    cv2.circle(img, (240, 160), 30, (40, 80, 220), -1)
    return img


def write_inputs(folder: Path) -> tuple[Path, Path, Path]:
    y4m = folder / "camera.y4m"
    with y4m.open("wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F15:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(60):
            f.write(b"FRAME\n" + cv2.cvtColor(scene(i), cv2.COLOR_RGB2YUV_I420).tobytes())
    clip = folder / "clip.mp4"
    with av.open(str(clip), mode="w") as c:
        s = c.add_stream("libx264", rate=15)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(45):
            for packet in s.encode(av.VideoFrame.from_ndarray(scene(i), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    image = folder / "image.png"
    Image.fromarray(scene(10)).save(image)
    return y4m, clip, image


async def click_media(page, selector: str, x: float, y: float) -> None:  # type: ignore[no-untyped-def]
    """Click media pixel (x, y) as a person would (object-fit: contain, as web/overlay.js)."""
    px, py = await page.evaluate(
        """([sel, x, y]) => { const el = document.querySelector(sel);
          const w = el.tagName === 'VIDEO' ? el.videoWidth : el.width;
          const h = el.tagName === 'VIDEO' ? el.videoHeight : el.height;
          const r = el.getBoundingClientRect(); const s = Math.min(r.width / w, r.height / h);
          return [r.left + (r.width - w * s) / 2 + x * s, r.top + (r.height - h * s) / 2 + y * s]; }""",
        [selector, x, y],
    )
    await page.mouse.click(px, py)


async def segment_in_image_mode(page, image: Path, x: float, y: float) -> None:  # type: ignore[no-untyped-def]
    """Image mode: upload `image`, click its pixel (x, y) and wait for the object to be listed."""
    from playwright.async_api import expect

    await page.get_by_test_id("mode-image").click()
    await page.get_by_test_id("image-input").set_input_files(str(image))
    await expect(page.get_by_test_id("image-info")).to_contain_text("encoded", timeout=120_000)
    await click_media(page, "#image-canvas", x, y)
    await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=60_000)
    await expect_listed_with_object(page, "image")


async def expect_listed_with_object(page, mode: str) -> None:  # type: ignore[no-untyped-def]
    """The mode's library line has caught up with the page (it refreshes shortly after)."""
    from playwright.async_api import expect

    item = page.locator(f"[data-testid=library][data-for={mode}] [data-testid=library-item]")
    await expect(item.first).to_contain_text("1 object", timeout=30_000)


async def shoot(url: str, out: Path) -> list[Path]:
    from playwright.async_api import async_playwright, expect

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        y4m, clip, image = write_inputs(Path(tmp))
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--use-fake-device-for-media-stream",
                    "--use-fake-ui-for-media-stream",
                    f"--use-file-for-fake-video-capture={y4m}",
                ],
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                await page.goto(url)
                status = page.get_by_test_id("status")
                await expect(status).to_contain_text("fps", timeout=120_000)
                await click_media(page, "#live-video", 60, 100)
                await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=60_000)
                # The object's mask drawn on the picture (on a busy machine a step takes seconds).
                await page.wait_for_function(DRAWN, timeout=120_000)
                await page.wait_for_timeout(1500)  # a few overlays on the picture
                written.append(out / "live.png")
                await page.screenshot(path=str(written[-1]))

                await page.get_by_test_id("mode-clip").click()
                await page.get_by_test_id("upload-input").set_input_files(str(clip))
                await page.wait_for_function(
                    "() => document.querySelector('#clip-video').readyState >= 2", timeout=60_000
                )
                await click_media(page, "#clip-video", 60, 100)
                await expect(page.get_by_test_id("progress")).to_have_attribute(
                    "data-state", "done", timeout=300_000
                )
                await page.get_by_test_id("scrubber").fill("20")
                await expect_listed_with_object(page, "clip")
                await page.wait_for_timeout(1000)
                written.append(out / "clip.png")
                await page.screenshot(path=str(written[-1]))

                await segment_in_image_mode(page, image, 240, 160)
                written.append(out / "image.png")
                await page.screenshot(path=str(written[-1]))

                phone = await browser.new_page(
                    viewport={"width": 390, "height": 844}, device_scale_factor=2
                )
                await phone.goto(url)
                await segment_in_image_mode(phone, image, 60, 100)
                written.append(out / "phone.png")
                await phone.screenshot(path=str(written[-1]), full_page=True)
            finally:
                await browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8080", help="the running service")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    for path in asyncio.run(shoot(args.url, args.out)):
        print(path)


if __name__ == "__main__":
    main()
