"""A photo larger than the working size on the Image page: the stage draws the server's working
copy (a bounded canvas), a click reaches the server in the image's own pixels, and the mask is
drawn where the server says it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from streamer.image.decode import working_size
from streamer.settings import Settings
from tests.browser import BROWSER_TEST, IMAGE_TO_PAGE, check_click_hint, image_page
from tests.conftest import request_text, spotlight_answerer
from workers.masks import rle_decode

pytestmark = BROWSER_TEST
W, H = 5000, 3000  # 15 MP: the default working size (4 MP) shrinks it
RED = (3000, 500, 4500, 2000)  # x0, y0, x1, y1 of the red block, in the image's pixels
SAFARI_CANVAS_PIXELS = 16_777_216  # iOS Safari draws no canvas larger

# Page JS: the overlay's alpha at each page point (0: nothing drawn there).
OVERLAY_ALPHA = """(points) => {
  const c = document.querySelector('[data-testid=overlay]');
  const s = document.querySelector('[data-testid=stage]').getBoundingClientRect();
  const ctx = c.getContext('2d');
  const k = c.width / s.width; // the overlay's pixels per CSS pixel (devicePixelRatio)
  return points.map(([x, y]) => ctx.getImageData(Math.floor((x - s.left) * k), Math.floor((y - s.top) * k), 1, 1).data[3]);
}"""


def well_inside_and_outside(mask: np.ndarray, margin: int, box: list[float]) -> tuple[Any, Any]:
    """Image points (x, y) whose whole (2 margin + 1)^2 square is on the mask, and ones whose
    square is off it and off the box's outline: a pixel or two of scaling changes neither."""
    sums = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    side = 2 * margin + 1
    inside, outside = [], []
    for y in range(margin, mask.shape[0] - margin, 97):
        for x in range(margin, mask.shape[1] - margin, 97):
            y0, x0, y1, x1 = y - margin, x - margin, y + margin + 1, x + margin + 1
            on = sums[y1, x1] - sums[y0, x1] - sums[y1, x0] + sums[y0, x0]
            near_outline = any(abs(x - bx) <= margin for bx in box[0::2]) or any(
                abs(y - by) <= margin for by in box[1::2]
            )
            if on == side * side:
                inside.append((x + 0.5, y + 0.5))
            elif on == 0 and not near_outline:
                outside.append((x + 0.5, y + 0.5))
    return inside[::7][:12], outside[::7][:12]


async def test_a_large_photo_is_drawn_at_its_working_size_and_clicked_in_its_own_pixels(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    png = tmp_path / "large.png"
    picture = Image.new("RGB", (W, H), (90, 90, 90))  # flat colours: a small file
    ImageDraw.Draw(picture).rectangle((RED[0], RED[1], RED[2] - 1, RED[3] - 1), (230, 20, 20))
    picture.save(png)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    describe, refine_asked = spotlight_answerer(), []

    def answer(body: dict[str, Any]) -> str:
        if "next click" not in request_text(body):
            return describe(body)
        refine_asked.append(True)  # one click (in the pixels of the picture it was sent), then done
        if len(refine_asked) > 1:
            return '{"action": "done"}'
        return json.dumps({"action": "positive", "point_2d": [500, 150]})

    async with image_page(sam2_tiny_128, settings, answer, png) as (page, errors):
        await expect(page.get_by_test_id("image-info")).to_contain_text(f"{W}x{H}")
        # The stage is the working copy (what the server serves and sees), not the 15 MP photo.
        canvas = await page.evaluate(
            "() => { const c = document.querySelector('#image-canvas'); return [c.width, c.height]; }"
        )
        assert tuple(canvas) == working_size(W, H, settings.image_working_pixels)
        assert canvas[0] * canvas[1] <= settings.image_working_pixels < SAFARI_CANVAS_PIXELS

        # A click on the red block reaches the server in the image's own pixels, on the block.
        x, y = (RED[0] + RED[2]) / 2, (RED[1] + RED[3]) / 2
        at = await page.evaluate(IMAGE_TO_PAGE, [x, y, W, H])
        async with page.expect_request("**/clicks") as sent:
            await page.mouse.click(*at)
        body = (await sent.value).post_data_json
        await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=60_000)
        shown = await page.locator("#image-canvas").bounding_box()
        assert shown is not None
        per_css_pixel = W / min(shown["width"], shown["height"] * W / H)  # image pixels
        assert abs(body["x"] - x) <= per_css_pixel and abs(body["y"] - y) <= per_css_pixel, body
        assert picture.getpixel((int(body["x"]), int(body["y"]))) == (230, 20, 20)

        # The mask is drawn where the server's mask (in the image's pixels) is, and only there.
        image_id = await page.locator("#image-canvas").get_attribute("data-image-id")
        fetch = "(id) => fetch('/api/images/' + id).then((r) => r.json())"
        (obj,) = (await page.evaluate(fetch, image_id))["objects"]
        mask = rle_decode(obj["rle"])
        assert mask.shape == (H, W)
        inside, outside = well_inside_and_outside(mask, int(4 * per_css_pixel), obj["box"])
        assert inside and outside, "the random-weight mask should cover some, not all"
        for points, drawn in ((inside, True), (outside, False)):
            pages = [await page.evaluate(IMAGE_TO_PAGE, [*p, W, H]) for p in points]
            alphas = await page.evaluate(OVERLAY_ALPHA, pages)
            assert [a > 0 for a in alphas] == [drawn] * len(points), (points, alphas)
        # Auto-refine: the VLM's click is marked on the photo where it is in the image's pixels
        # (the dot was placed as if those were the working copy's).
        async with page.expect_response("**/auto_refine") as answered:
            await page.get_by_test_id("auto-refine").click()
        lines = (await (await answered.value).text()).splitlines()
        (click,) = [e for e in map(json.loads, lines) if e["type"] == "refine_click"]
        dot = await page.get_by_test_id("refine-click").bounding_box()
        assert dot is not None
        want = await page.evaluate(IMAGE_TO_PAGE, [click["x"], click["y"], W, H])
        assert abs(dot["x"] + dot["width"] / 2 - want[0]) < 3, (dot, want, click)
        assert abs(dot["y"] + dot["height"] / 2 - want[1]) < 3, (dot, want, click)
        # Over its mask a click refines the selected object; elsewhere it makes a new one.
        await check_click_hint(page)
        await page.screenshot(path=str(tmp_path / "stage.png"))
        assert errors == []
    print("screenshot:", tmp_path / "stage.png")


# Page JS: the overlay's size against the stage's, and whether it is drawn at a grid of its own
# pixels over the picture, each with the picture pixel at that overlay pixel's centre.
OVERLAY_GRID = """([w, h, step]) => {
  const c = document.querySelector('[data-testid=overlay]');
  const stage = document.querySelector('[data-testid=stage]');
  const s = stage.getBoundingClientRect();
  const r = document.querySelector('#image-canvas').getBoundingClientRect();
  const f = Math.min(r.width / w, r.height / h); // CSS pixels per picture pixel (contain)
  const left = r.left - s.left + (r.width - w * f) / 2, top = r.top - s.top + (r.height - h * f) / 2;
  const k = c.width / s.width;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const samples = [];
  for (let y = Math.ceil(top * k); y < (top + h * f) * k; y += step)
    for (let x = Math.ceil(left * k); x < (left + w * f) * k; x += step)
      samples.push([((x + 0.5) / k - left) / f, ((y + 0.5) / k - top) / f, d[(y * c.width + x) * 4 + 3] > 0]);
  return {overlay: [c.width, c.height], stage: [stage.clientWidth, stage.clientHeight], samples};
}"""


async def test_on_a_hidpi_screen_masks_are_drawn_at_the_screens_pixels(
    sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """A 2x screen (most laptops and phones): the overlay has a pixel for each of the screen's,
    so a mask of a photo larger than its CSS size keeps its detail (it was drawn at CSS pixels
    and scaled up, soft and stepped), and it is drawn where the server's mask is."""
    from playwright.async_api import expect

    w, h = 1600, 1200
    png = tmp_path / "hidpi.png"
    picture = Image.new("RGB", (w, h), (90, 90, 90))
    ImageDraw.Draw(picture).ellipse((500, 300, 1300, 1000), (230, 20, 20))
    picture.save(png)
    settings = Settings(data_dir=tmp_path / "data", weights="random", device="cpu")
    answer = spotlight_answerer()
    async with image_page(sam2_tiny_128, settings, answer, png, scale=2) as (page, errors):
        await page.mouse.click(*await page.evaluate(IMAGE_TO_PAGE, [900, 650, w, h]))
        await expect(page.get_by_test_id("object-item")).to_have_count(1, timeout=60_000)
        image_id = await page.locator("#image-canvas").get_attribute("data-image-id")
        fetch = "(id) => fetch('/api/images/' + id).then((r) => r.json())"
        (obj,) = (await page.evaluate(fetch, image_id))["objects"]
        mask = rle_decode(obj["rle"])
        grid = await page.evaluate(OVERLAY_GRID, [w, h, 5])
        assert grid["overlay"] == [2 * grid["stage"][0], 2 * grid["stage"][1]], grid["overlay"]
        # Each sampled screen pixel shows the mask's pixel there: all but the outlines (the box,
        # 3 CSS pixels wide) and the odd pixel on a mask edge.
        box = obj["box"]
        off = [
            (x, y)
            for x, y, drawn in grid["samples"]
            if drawn != bool(mask[min(int(y), h - 1), min(int(x), w - 1)])
            and not any(abs(x - b) < 8 for b in box[0::2])
            and not any(abs(y - b) < 8 for b in box[1::2])
        ]
        assert 0 < mask.mean() < 1, "the random-weight mask should cover some, not all"
        assert len(off) <= 0.005 * len(grid["samples"]), off[:10]
        await check_click_hint(page)
        await page.screenshot(path=str(tmp_path / "stage.png"))
        assert errors == []
    print("screenshot:", tmp_path / "stage.png")
