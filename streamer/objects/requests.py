"""What a person asks about objects over HTTP (Clip, Image): the click, find and chat bodies, and
the click's in-picture check (every mode's).

Live's websocket messages carry the same fields (streamer/live/protocol.py); Clip's bodies add
which frame (streamer/clip/protocol.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from streamer.objects.refusal import ObjectRefused


def field_error(error: Mapping[str, Any]) -> str:
    """One pydantic error in words, its field path first: `x: Input should be a valid number`
    (HTTP bodies and queries, Live's and Clip's websocket messages, the offer)."""
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "function-after")
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


# What a person types, with the same limits in every mode (Live's messages use these too): the
# spaces around it are not part of it, so one of only spaces is empty, and refused. The page
# learns the limits from /api/capabilities (text_limits).
PHRASE_MAX_CHARS = 300
QUESTION_MAX_CHARS = 2000
Phrase = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=PHRASE_MAX_CHARS)
]
Question = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=QUESTION_MAX_CHARS)
]


class Body(BaseModel):
    """What every client sends is read the one way: the HTTP bodies, Clip's socket messages, Live's
    messages and its offer."""

    # allow_inf_nan=False: json.loads reads Infinity and NaN; they are a 422, never a 500 later.
    # strict: "1" or true for a number, "yes" for a flag is a 422, not a click somewhere else.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ClickBody(Body):
    x: float
    y: float
    negative: bool = False
    object_id: int | None = Field(None, description="Refine this object; none starts a new one.")


def check_point(point: tuple[float, float], width: int, height: int, what: str) -> None:
    """Refuse a click outside the frame or image of the given size."""
    x, y = point
    if not (0 <= x < width and 0 <= y < height):
        raise ObjectRefused(
            "bad_prompt",
            f"click ({x:g}, {y:g}) is outside the {what} (0..{width - 1}, 0..{height - 1}); "
            f"click on the {'picture' if what == 'frame' else what}",
        )


def check_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """A box prompt as (x0, y0, x1, y1), refused (ValueError) when it has no room: every box a
    person gives (Live's box message, `fmu-live track`'s --box and --prompts), before SAM2 (whose
    Prompt.build, a library's check, also refuses one outside the frame)."""
    if len(box) != 4:
        raise ValueError(f"a box is [x0, y0, x1, y1], got {len(box)} numbers")
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) must have x0 < x1, y0 < y1")
    return x0, y0, x1, y1


class FindBody(Body):
    phrase: Phrase
    all_candidates: bool = Field(
        False,
        description="Keep the candidates the VLM rejects too, flagged (find_check 'no_match').",
    )


class FindAllBody(Body):
    phrase: Phrase = Field(
        ...,
        description='What to find all of and count: "cups", "find all: cups", "how many cups?".',
    )


AUTO_REFINE_MAX_STEPS = 8  # clicks one auto-refine may apply (and VLM requests it may make)


class AutoRefineBody(Body):
    max_steps: int = Field(
        4, ge=1, le=AUTO_REFINE_MAX_STEPS, description="Most clicks to apply before stopping."
    )


class ChatBody(Body):
    question: Question
