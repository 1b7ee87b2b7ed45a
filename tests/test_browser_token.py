"""The page on a network config (listening on every address, with an access token) in headless
Chromium: without the token the page is refused with a message saying what to open; the start-up
URL's ?token= sets the cookie once, and then the page works (an image larger than the working size
is uploaded and a click on it segments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from streamer.app import create_app
from streamer.settings import Settings
from tests.browser import BROWSER_TEST, IMAGE_TO_PAGE, OVERLAY_PIXELS, browser_page
from tests.conftest import ServerThread

pytestmark = BROWSER_TEST
TOKEN = "f00dcafe" * 4
W, H = 400, 300  # over the 65,536-pixel working size below: the page shows a reduced copy


async def test_the_page_needs_its_token_and_works_with_it(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    png = tmp_path / "square.png"
    picture = np.full((H, W, 3), 90, np.uint8)
    picture[100:200, 250:350] = (230, 20, 20)  # the red square the click lands on
    Image.fromarray(picture).save(png)
    settings = Settings(
        data_dir=tmp_path / "data",
        host="0.0.0.0",
        auth_token=TOKEN,
        image_working_pixels=65_536,
        weights="random",
        sam2_image_size=256,
        device="cpu",
    )
    app = create_app(settings, vision_model=sam2_tiny_random, reasoner=None, load_vision=False)
    with ServerThread(app) as server:
        async with browser_page(profile=tmp_path / "profile") as page:
            refused = await page.goto(server.base_url)
            assert refused is not None and refused.status == 401
            await expect(page.locator("body")).to_contain_text("needs its access token")
            await expect(page.locator("body")).to_contain_text("?token=")

            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            opened = await page.goto(f"{server.base_url}/?token={TOKEN}")
            assert opened is not None and opened.status == 200
            assert "token" not in page.url  # dropped from the address bar once the cookie is set
            await page.reload()  # the cookie alone lets the page in from now on
            await page.get_by_test_id("mode-image").click()
            await page.get_by_test_id("image-input").set_input_files(str(png))
            await expect(page.get_by_test_id("image-info")).to_contain_text(
                f"{W}x{H}", timeout=60_000
            )
            await expect(page.get_by_test_id("error")).to_be_hidden()
            # (the page draws a working copy, not always at the image's own size)
            cx, cy = await page.evaluate(IMAGE_TO_PAGE, [300, 150, W, H])
            await page.mouse.click(cx, cy)
            await expect(page.get_by_test_id("image-info")).to_contain_text("decoder only")
            await page.wait_for_function(f"({OVERLAY_PIXELS})() > 0", timeout=30_000)
            await expect(page.get_by_test_id("objects").locator("li")).to_have_count(1)
            assert errors == []
