"""Parse a VLM's yes/no verdicts (checked Find, find-all's regions) and next clicks (auto-refine).

Like grounding.py's parser: models wrap JSON in fences, put prose around it, stop mid-answer at
the token limit or answer junk. These parsers take what they can and return None on junk; they
never raise on model output.

A click is a point in the model's own coordinates (its family's convention, as for boxes:
"absolute" pixels of the image it was given, or "relative1000"), mapped back to frame pixels with
to_frame_point.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from workers.reasoning.families import Coords
from workers.reasoning.grounding import _number, _strip_fences, json_objects

_NUM = r"-?\d+(?:\.\d+)?"
_YES_NO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_POINT_KEYS = ("point_2d", "point", "click", "xy")
_ACTION_KEYS = ("action", "label", "type", "kind")
_SALVAGE_POINT = re.compile(
    r"[\"']?(?:point_2d|point|click|xy)[\"']?\s*:\s*\[\s*" rf"({_NUM})\s*,\s*({_NUM})\s*\]"
)
# What a model writes for a click's kind: the words asked for, and the ones it uses instead.
_KIND_WORDS = {
    "positive": "positive", "add": "positive", "include": "positive", "foreground": "positive",
    "negative": "negative", "remove": "negative", "exclude": "negative", "background": "negative",
    "done": "done",
}  # fmt: skip
_SALVAGE_ACTION = re.compile(
    r"[\"']?(?:action|label|type|kind)[\"']?\s*:\s*[\"']\s*(" + "|".join(_KIND_WORDS) + ")",
    re.IGNORECASE,
)
_DONE = re.compile(r"^\W*(?:done|finished|stop|the mask is (?:good|correct|fine))\b", re.I)

ClickKind = Literal["positive", "negative"]


def _first_json(body: str) -> Any:
    """The first JSON object or list in an answer, with any prose after it left out (models add a
    sentence after the JSON); None when none decodes (junk, or cut off at the token limit)."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", body):
        try:
            return decoder.raw_decode(body, m.start())[0]
        except ValueError:
            continue
    return None


def parse_yes_no(text: str) -> bool | None:
    """True for a yes, False for a no, None when the answer says neither (or both, first wins).

    Takes `{"answer": "yes"}` (a "reason" beside it, or prose after it, is not read as the
    verdict), `{"match": true}`, a fenced word, or prose ("No, it is a bowl.").
    """
    if not isinstance(text, str) or not text.strip():
        return None
    body = _strip_fences(text).strip()
    value: Any = _first_json(body)
    if isinstance(value, dict):
        value = next(
            (value[k] for k in ("answer", "match", "verdict", "is_match", "result") if k in value),
            None,
        )
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        body = value
    m = _YES_NO.search(body)
    if m is None:
        return None
    return m.group(1).lower() in ("yes", "true")


_NUMBERED = re.compile(
    r"(?:region|image|#)?\s*(\d+)\s*\**\s*[:.)\-=]\s*\**\s*(yes|no|true|false)\b", re.I
)
_ANSWER_LIST_KEYS = ("answers", "answer", "matches", "results", "regions")
# A list's complete entries: a whole quoted string (the words inside it are one answer), or a bare
# word; what a cut leaves unfinished matches neither.
_LIST_ENTRY = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'([^']*)'|\b(yes|no|true|false)\b", re.I)


def _verdict(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_yes_no(value)
    if isinstance(value, dict):
        return parse_yes_no(json.dumps(value))
    return None


def _by_number(values: dict[str, Any], n: int) -> list[Any] | None:
    """`{"1": "yes", "region 2": "no"}`: the answers in region order; None if no key numbers one."""
    keyed: dict[int, Any] = {}
    for key, value in values.items():
        m = re.search(r"\d+", str(key))
        if m is not None:
            keyed.setdefault(int(m.group()) - 1, value)
    return [keyed.get(i) for i in range(n)] if keyed else None


def parse_region_answers(text: str, n: int) -> list[bool | None]:
    """Find-all: the model's yes (True) / no (False) / neither (None) for each of n regions.

    Takes `{"answers": ["yes", "no"]}` (prose after it ignored), a bare list, a dict keyed by
    region number, a fenced or truncated list (the answers written before the cut count), numbered
    prose ("1: yes, 2: no", "**Image 1**: Yes") or exactly n bare words in order ("yes, no, yes"). Always n
    entries; junk gives n Nones. Never raises on model output."""
    out: list[bool | None] = [None] * max(0, n)
    if n <= 0 or not isinstance(text, str) or not text.strip():
        return out
    body = _strip_fences(text).strip()
    values: Any = _first_json(body)
    if isinstance(values, dict):
        listed = next((values[k] for k in _ANSWER_LIST_KEYS if k in values), None)
        values = listed if listed is not None else _by_number(values, n)
    if values is None and (start := body.find("[")) != -1:  # truncated: its complete entries
        values = [
            next(g for g in m.groups() if g is not None) for m in _LIST_ENTRY.finditer(body[start:])
        ]
    if isinstance(values, list):
        got = [_verdict(v) for v in values[:n]]
        if any(v is not None for v in got):
            out[: len(got)] = got
            return out
    for m in _NUMBERED.finditer(body):
        i = int(m.group(1)) - 1
        if 0 <= i < n and out[i] is None:
            out[i] = m.group(2).lower() in ("yes", "true")
    words = _YES_NO.findall(body)
    if n > 1 and all(v is None for v in out) and len(words) == n:  # "yes, no, yes": one a region
        out[:] = [w.lower() in ("yes", "true") for w in words]
    if n == 1 and out[0] is None:
        out[0] = parse_yes_no(body)
    return out


@dataclass(frozen=True)
class RawClick:
    """A click as the model wrote it: (x, y) in its own coordinates and whether it adds or cuts."""

    point: tuple[float, float]
    kind: ClickKind


@dataclass(frozen=True)
class Done:
    """The model says the mask is right: no more clicks."""


def _kind(value: Any) -> str | None:
    if isinstance(value, str):  # "positive", "Add", "negative click": the first word says it
        words = value.strip().lower().split()
        return _KIND_WORDS.get(words[0]) if words else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return "positive" if value == 1 else "negative"  # SAM's own labels
    return None


def _from_json(obj: dict[str, Any]) -> RawClick | Done | None:
    kind = next((_kind(obj[k]) for k in _ACTION_KEYS if k in obj), None)
    if kind == "done" or obj.get("done") is True:
        return Done()
    point = next((obj[k] for k in _POINT_KEYS if k in obj), None)
    if not (isinstance(point, list) and len(point) == 2):
        return None
    x, y = _number(point[0]), _number(point[1])
    if x is None or y is None or kind is None:
        return None
    return RawClick((x, y), kind)  # type: ignore[arg-type]


def parse_click(text: str) -> RawClick | Done | None:
    """The next click or Done from an auto-refine answer; None on junk (never raises).

    Expected `{"action": "positive"|"negative"|"done", "point_2d": [x, y]}`; the first complete
    click counts. A truncated object keeps its click if the point and action were both written.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    body = _strip_fences(text)
    if _DONE.search(body.strip()):
        return Done()
    for obj, fragment in json_objects(body):
        if fragment is not None:
            action = _SALVAGE_ACTION.search(fragment)
            kind = _KIND_WORDS[action.group(1).lower()] if action else None
            if kind == "done":
                return Done()
            point = _SALVAGE_POINT.search(fragment)
            if kind and point:
                xy = (float(point.group(1)), float(point.group(2)))
                return RawClick(xy, kind)  # type: ignore[arg-type]
            continue
        found = _from_json(obj) if isinstance(obj, dict) else None
        if found is not None:
            return found
    return None


def to_frame_point(
    point: tuple[float, float],
    *,
    convention: Coords,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
) -> tuple[float, float] | None:
    """A model point in frame pixels; None when it lies outside the image (sizes are (w, h))."""
    fw, fh = image_size if convention == "absolute" else (1000, 1000)
    x, y = point
    if not (0 <= x <= fw and 0 <= y <= fh):
        return None
    px = min(x * frame_size[0] / fw, frame_size[0] - 0.5)
    py = min(y * frame_size[1] / fh, frame_size[1] - 0.5)
    return (px, py)


def from_frame_point(
    point: tuple[float, float],
    *,
    convention: Coords,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
) -> tuple[int, int]:
    """The inverse, rounded as a model writes it (tests and scripted servers)."""
    tw, th = image_size if convention == "absolute" else (1000, 1000)
    return (round(point[0] * tw / frame_size[0]), round(point[1] * th / frame_size[1]))
