"""The words we send to the VLM: describe, chat, describe-a-track, grounding, match and click prompts."""

# Scripted test models (tests/conftest.py, tests/test_reasoning_verify.py) tell requests apart by
# these words: grounding prompts start with "Locate", the describe prompt says "Describe", the
# match check (checked Find) asks "Is the highlighted object", the click prompt says "next click",
# the find-all classification says "Classify each region".

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

MATCH = (
    "{highlight}{zoom} Is the highlighted object {phrase}? Judge only the highlighted object, "
    "not the rest of the image. Answer with one word: yes or no."
)

MATCH_ZOOM_NOTE = " The last image is a zoomed-in view of the same highlighted object."

CLASSIFY_REGIONS = (
    "Classify each region. Each of these {n} images highlights one region of the same picture: "
    "it keeps its original colors and has a thin white outline; everything else is dimmed. For "
    "each image in order, is the highlighted region {phrase}? Answer only with JSON: "
    '{{"answers": ["yes" or "no", ...]}}, one answer per image, {n} in all.'
)

NEXT_CLICK = (
    "The first image shows the current mask of {target}: the masked pixels keep their original "
    "colors and have a thin white outline; everything else is dimmed. The second image is the "
    "original picture. Decide the next click that makes the mask cover exactly {target}: a "
    "positive click on a part of it the mask misses, or a negative click on a region the mask "
    "covers that is not part of it. If the mask is already right, answer done. Answer only with "
    'JSON: {{"action": "positive", "point_2d": [x, y]}}, {{"action": "negative", "point_2d": '
    '[x, y]}} or {{"action": "done"}}. {coords}{history}'
)

NEXT_CLICK_HISTORY = " Clicks so far (same coordinates): {clicks}."

COORDS_POINT_ABSOLUTE = "x and y are pixels of the second image ({width}x{height})."
COORDS_POINT_RELATIVE = "x and y are relative, from 0 to 1000 on both axes."

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


def match(phrase: str, *, zoom: bool) -> str:
    """Checked Find: is the highlighted object `phrase`? (a yes/no answer, answers.parse_yes_no)"""
    return MATCH.format(
        highlight=HIGHLIGHT, zoom=MATCH_ZOOM_NOTE if zoom else "", phrase=f'"{_quote(phrase)}"'
    )


def classify_regions(phrase: str, n: int) -> str:
    """Find-all: which of the n spotlit regions are `phrase` (answers.parse_region_answers)."""
    return CLASSIFY_REGIONS.format(n=n, phrase=f'"{_quote(phrase)}"')


def next_click(
    target: str | None,
    *,
    coords: str,
    size: tuple[int, int],
    clicks: list[tuple[str, tuple[int, int]]] | None = None,
) -> str:
    """Auto-refine: the next click or done (answers.parse_click). `clicks` are the earlier ones,
    (positive|negative, (x, y)) in the model's coordinates."""
    note = (
        COORDS_POINT_RELATIVE
        if coords == "relative1000"
        else COORDS_POINT_ABSOLUTE.format(width=size[0], height=size[1])
    )
    history = ""
    if clicks:
        history = NEXT_CLICK_HISTORY.format(
            clicks="; ".join(f"{kind} at [{x}, {y}]" for kind, (x, y) in clicks)
        )
    name = f'"{_quote(target)}"' if target and target.strip() else "the object"
    return NEXT_CLICK.format(target=name, coords=note, history=history)
