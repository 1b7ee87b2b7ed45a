"""Streaming reasoner output to the page as NDJSON lines: token events, a verdict, or an error a person can act on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any


def event_dict(ev: Any) -> dict[str, Any]:
    """A reasoner event (TokenEvent / VerdictEvent) as the JSON the page reads."""
    if getattr(ev, "type", None) == "verdict" or hasattr(ev, "verdict"):
        return {
            "type": "verdict",
            "description": ev.description,
            "verdict": ev.verdict,
            "iou": round(float(ev.iou), 4),
            "attempts": ev.attempts,
            "box": [float(v) for v in ev.box] if ev.box is not None else None,
        }
    return {"type": "token", "text": ev.text, "attempt": getattr(ev, "attempt", 1)}


def line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj) + "\n").encode()


async def ndjson(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Encode events one per line; a VLM failure mid-stream becomes a final {"type": "error"} line
    (the HTTP status is already sent by then, so the page reads the error from the body)."""
    from workers.reasoning import VLMError

    try:
        async for ev in events:
            yield line(ev)
    except VLMError as exc:
        yield line({"type": "error", "message": str(exc)})
    except ValueError as exc:
        yield line({"type": "error", "message": f"cannot describe this object: {exc}"})
