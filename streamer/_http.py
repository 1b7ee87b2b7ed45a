"""HTTP helpers the clip and image routers share: 503s for missing parts, click and point checks."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from streamer.services import Services


def require_vision(services: Services) -> Any:
    """The loaded SAM2 model, or a 503 that says why there is none yet."""
    why = services.vision_unavailable
    if why is not None:
        raise HTTPException(503, f"segmentation is not available yet: {why}")
    return services.vision_model


def require_reasoner(services: Services) -> Any:
    """The reasoner, or a 503 that says why descriptions are off."""
    why = services.descriptions_off
    if why is not None:
        raise HTTPException(503, why)
    return services.reasoner


def check_point(x: float, y: float, width: int, height: int, what: str) -> None:
    """422 unless (x, y) lies on the `what` ("frame", "image") of the given size."""
    if not (0 <= x < width and 0 <= y < height):
        raise HTTPException(
            422, f"click ({x:g}, {y:g}) is outside the {what} (0..{width - 1}, 0..{height - 1})"
        )


def check_new_object(negative: bool, count: int, cap: int, where: str) -> None:
    """422/409 unless a click may start a new object: positive, and under the per-`where` cap."""
    if negative:
        raise HTTPException(
            422, "a negative click removes a region from an object: select the object first"
        )
    if count >= cap:
        raise HTTPException(409, f"at most {cap} objects per {where}; remove one first")
