"""Headless Chromium for the browser tests: Debian's binary, the flags it needs here, the skip rule."""

from __future__ import annotations
