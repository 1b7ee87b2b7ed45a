"""The words we send to the VLM: describe, chat, describe-a-track and grounding prompts."""

# Scripted test models (tests/conftest.py, tests/test_reasoning_verify.py) tell requests apart by
# these words: grounding prompts start with "Locate", the describe prompt says "Describe".

from __future__ import annotations

import json

HIGHLIGHT = (
    "One object is highlighted: it keeps its original colors and has a thin white outline; "
    "everything else is dimmed."
)

DESCRIBE = (
    "{highlight}{zoom} Describe only the highlighted object in one or two sentences: start with "
    "what it is, then its color, material, shape and anything notable about it. Do not describe "
    "the rest of the scene."
)

ZOOM_NOTE = " The second image is a zoomed-in view of the same highlighted object."

RETRY = (
    ' A previous description of it was: "{previous}". That description did not match where the '
    "object is, so look again carefully at the outlined object only and describe it afresh."
)

CHAT_SYSTEM = (
    "You answer questions about one object in an image. " + HIGHLIGHT + " Answer briefly and "
    "only about the highlighted object. If the image does not show enough to answer, say so."
)

CHAT_OPENING = "This is the object I am asking about."

DESCRIBE_TRACK = (
    "These {n} images are keyframes from a video, in time order. In each one the same object is "
    "highlighted: it keeps its original colors and has a thin white outline; everything else is "
    "dimmed. In two to four sentences, say what the object is, what it looks like, and what it "
    "does over time (how it moves, changes or interacts with things)."
)

GROUND = (
    'Locate every instance of "{phrase}" in the image. Answer only with JSON in this form: '
    '[{{"bbox_2d": [x1, y1, x2, y2], "label": "..."}}]. {coords} If there is none, answer [].'
)

GROUND_ONE = (
    'Locate the one object this description refers to: "{phrase}". Answer only with JSON in '
    'this form: [{{"bbox_2d": [x1, y1, x2, y2], "label": "..."}}]. {coords} If no object in the '
    "image matches, answer []."
)

COORDS_ABSOLUTE = "Coordinates are pixels of this image ({width}x{height})."
COORDS_RELATIVE = "Coordinates are relative, from 0 to 1000 on both axes."

_MAX_PHRASE = 300  # a grounding phrase longer than this is mostly noise for the model


def describe(*, zoom: bool, previous: str | None = None) -> str:
    text = DESCRIBE.format(highlight=HIGHLIGHT, zoom=ZOOM_NOTE if zoom else "")
    if previous is not None:
        text += RETRY.format(previous=_quote(previous))
    return text


def describe_track(n: int, previous: str | None = None) -> str:
    text = DESCRIBE_TRACK.format(n=n)
    if previous is not None:
        text += RETRY.format(previous=_quote(previous))
    return text


def ground(phrase: str, *, coords: str, size: tuple[int, int], one: bool = False) -> str:
    note = (
        COORDS_RELATIVE
        if coords == "relative1000"
        else COORDS_ABSOLUTE.format(width=size[0], height=size[1])
    )
    template = GROUND_ONE if one else GROUND
    return template.format(phrase=_quote(phrase), coords=note)


def _quote(text: str) -> str:
    # json.dumps escapes quotes and newlines, then we drop its outer quotes: the phrase sits
    # inside our own quotes without breaking them.
    text = " ".join(text.split())[:_MAX_PHRASE]
    return json.dumps(text, ensure_ascii=False)[1:-1]
