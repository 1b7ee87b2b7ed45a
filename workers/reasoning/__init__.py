"""Reasoning about one object with a VLM: Spotlight, backends, prompts, grounding, verification."""

from workers.reasoning.backends import VLMBackend
from workers.reasoning.errors import (
    VLMBadResponse,
    VLMBusy,
    VLMError,
    VLMTimeout,
    VLMUnavailable,
)
from workers.reasoning.grounding import GroundedBox, parse_grounding
from workers.reasoning.openai_backend import OpenAICompatibleBackend
from workers.reasoning.reasoner import DescribeEvent, Reasoner, TokenEvent, VerdictEvent
from workers.reasoning.spotlight import Spotlight, render_spotlight
from workers.reasoning.transformers_backend import TransformersBackend

__all__ = [
    "render_spotlight",
    "Spotlight",
    "VLMBackend",
    "OpenAICompatibleBackend",
    "TransformersBackend",
    "VLMError",
    "VLMUnavailable",
    "VLMBusy",
    "VLMTimeout",
    "VLMBadResponse",
    "Reasoner",
    "GroundedBox",
    "TokenEvent",
    "VerdictEvent",
    "DescribeEvent",
    "parse_grounding",
]
