"""HTTP helpers the clip and image routers share: 503s that say which part is missing and why."""

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
