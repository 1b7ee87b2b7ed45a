"""Headless Chromium for the browser tests: Debian's binary, the flags it needs here, the skip rule."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

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

# Page JS: how many overlay-canvas pixels are drawn (non-transparent); 0 before any mask.
OVERLAY_PIXELS = """() => {
  const c = document.querySelector('[data-testid=overlay]');
  if (!c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
}"""

VIEWPORT = {"width": 1200, "height": 800}


@contextlib.asynccontextmanager
async def browser_page(
    args: list[str] | None = None, *, profile: Path | None = None, accept_downloads: bool = False
) -> AsyncIterator[Any]:
    """A 1200x800 page in headless Chromium, closed at the end. With `profile`, a persistent
    context in that folder (a camera permission that sticks, downloads)."""
    from playwright.async_api import async_playwright

    args = args or CHROMIUM_ARGS
    async with async_playwright() as pw:
        if profile is None:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            try:
                yield await browser.new_page(viewport=VIEWPORT)
            finally:
                await browser.close()
            return
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=args,
            viewport=VIEWPORT,
            accept_downloads=accept_downloads,
        )
        try:
            yield context.pages[0] if context.pages else await context.new_page()
        finally:
            await context.close()
