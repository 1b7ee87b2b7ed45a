"""HTTP helpers the clip and image routers share: what a request needs before it can be served."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from streamer.objects import vlm
from streamer.services import Services


def require_vision(services: Services) -> Any:
    """The loaded SAM2 model, or a 503 that says why there is none yet."""
    why = services.vision_unavailable
    if why is not None:
        raise HTTPException(503, f"segmentation is not available yet: {why}")
    return services.vision_model


def require_reasoner(services: Services) -> Any:
    """The reasoner, or ObjectRefused('vlm_off') (a 503) saying why descriptions are off."""
    return vlm.require_reasoner(services.reasoner, services.descriptions_off)
