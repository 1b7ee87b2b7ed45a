"""Parse a VLM's grounding answer (Qwen-style `[{"bbox_2d": [...], "label": ...}]`) to boxes.

Models wrap JSON in code fences, put prose around it, stop mid-list at the token limit, answer a
single object without a list, or answer junk. The parser takes every complete box it can find and
returns an empty list on junk; it never raises on model output.

Two coordinate conventions (which one a model uses is its family's business, families.py):
- "absolute": pixels of the image the model was given (Qwen2.5-VL), mapped back by the per-axis
  scale between that image's size and the frame's;
- "relative1000": 0..1000 on both axes whatever the image size (Qwen2-VL, Qwen3-VL).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from workers.masks import Box, box_area, box_iou, clip_box, scale_box
from workers.reasoning.families import Coords

# Two boxes of one answer this alike are the same object written twice (parse_grounding).
SAME_BOX_IOU = 0.9

_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box")
_LABEL_KEYS = ("label", "name", "object", "category")
_SCORE_KEYS = ("score", "confidence", "conf")
_NUM = r"-?\d+(?:\.\d+)?"
# A box salvaged from a fragment that is not valid JSON (truncated, single quotes, ...).
_SALVAGE_BOX = re.compile(
    r"[\"']?(?:bbox_2d|bbox|box_2d|box)[\"']?\s*:\s*\[\s*"
    rf"({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"
)
_SALVAGE_LABEL = re.compile(r"[\"']?label[\"']?\s*:\s*[\"']([^\"'\n]*)[\"']")
# Qwen2-VL's own form, <|object_ref_start|>cup<|object_ref_end|><|box_start|>(x0,y0),(x1,y1)<|box_end|>,
# arrives with its special tokens stripped by the server: "cup(x0,y0),(x1,y1)". Either way the
# two points are what counts; the label is whatever text stands right before them.
_QWEN2_BOX = re.compile(
    rf"([^()\[\]{{}}\n<>]*?)\s*(?:<\|[a-z_]+\|>\s*)*"
    rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
)
_BARE_LIST = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")


@dataclass(frozen=True)
class GroundedBox:
    """A box in frame pixels (x0, y0, x1, y1; x1/y1 exclusive), its label, a score if given."""

    box: Box
    label: str
    score: float | None = None


@dataclass(frozen=True)
class RawBox:
    """A box as the model wrote it, before mapping to frame pixels."""

    coords: tuple[float, float, float, float]
    label: str
    score: float | None = None


def _walk(obj: Any) -> Iterator[dict[str, Any]]:
    """Every dict with a box key, however deeply the answer nests it."""
    if isinstance(obj, dict):
        if any(k in obj for k in _BOX_KEYS):
            yield obj
            return
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _raw_box(obj: dict[str, Any]) -> RawBox | None:
    value = next((obj[k] for k in _BOX_KEYS if k in obj), None)
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(p, list) and len(p) == 2 for p in value)
    ):
        value = [value[0][0], value[0][1], value[1][0], value[1][1]]  # [[x0, y0], [x1, y1]]
    if not isinstance(value, list) or len(value) != 4:
        return None
    nums = [_number(v) for v in value]
    if any(n is None for n in nums):
        return None
    label = next((obj[k] for k in _LABEL_KEYS if isinstance(obj.get(k), str)), "")
    score = next((_number(obj[k]) for k in _SCORE_KEYS if k in obj), None)
    return RawBox((nums[0], nums[1], nums[2], nums[3]), label.strip(), score)  # type: ignore[arg-type]


def _strip_fences(text: str) -> str:
    # Keep what is inside ``` fences (closed or not); the prose outside them is noise.
    if "```" not in text:
        return text
    parts = text.split("```")
    inside = parts[1::2]  # odd parts are fenced (the last one may be unterminated)
    body = "\n".join(re.sub(r"^[a-zA-Z]*\s*\n?", "", p, count=1) for p in inside)
    return body if body.strip() else text


def _salvage(fragment: str) -> RawBox | None:
    m = _SALVAGE_BOX.search(fragment)
    if not m:
        return None
    label = _SALVAGE_LABEL.search(fragment)
    nums = tuple(float(g) for g in m.groups())
    return RawBox(nums, label.group(1).strip() if label else "")  # type: ignore[arg-type]


def json_objects(body: str) -> Iterator[tuple[Any, str | None]]:
    """Each JSON object of a model answer, in order, as (object, None); where the text from a `{`
    is not valid JSON (truncated, single quotes, a trailing comma), (None, the text up to the next
    `{`) instead, for the caller to salvage what was written before the next object starts."""
    decoder = json.JSONDecoder()
    i = 0
    while True:
        i = body.find("{", i)
        if i == -1:
            return
        try:
            obj, end = decoder.raw_decode(body, i)
        except ValueError:
            nxt = body.find("{", i + 1)
            yield None, body[i : nxt if nxt != -1 else len(body)]
            i += 1
            continue
        yield obj, None
        i = end


def parse_raw_boxes(text: str) -> list[RawBox]:
    """Every box in a model answer, in the model's own coordinates; [] on junk, never raises."""
    if not isinstance(text, str) or not text:
        return []
    body = _strip_fences(text)
    boxes: list[RawBox] = []
    for obj, fragment in json_objects(body):
        if fragment is not None:  # salvage the box written in it, if it is complete
            raw = _salvage(fragment)
            if raw is not None:
                boxes.append(raw)
            continue
        boxes.extend(b for b in (_raw_box(d) for d in _walk(obj)) if b is not None)
    if boxes:
        return boxes
    for m in _QWEN2_BOX.finditer(body):
        label, *nums = m.groups()
        boxes.append(RawBox(tuple(float(n) for n in nums), (label or "").strip()))  # type: ignore[arg-type]
    if boxes:
        return boxes
    # Last resort: a bare [x0, y0, x1, y1] list (some models drop the object around it).
    return [RawBox(tuple(float(g) for g in m.groups()), "") for m in _BARE_LIST.finditer(body)]  # type: ignore[misc]


def to_frame_box(
    coords: tuple[float, float, float, float],
    *,
    convention: Coords,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
) -> Box:
    """Map a model box to frame pixels, clamped to the frame. Sizes are (width, height)."""
    from_size = (1000, 1000) if convention == "relative1000" else image_size
    mapped = scale_box(coords, from_size, frame_size)
    return clip_box(mapped, frame_size[0], frame_size[1])


def from_frame_box(
    box: Box, *, convention: Coords, image_size: tuple[int, int], frame_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The inverse, rounded to integers as a model writes them (tests and scripted servers)."""
    to_size = (1000, 1000) if convention == "relative1000" else image_size
    x0, y0, x1, y1 = scale_box(box, frame_size, to_size)
    return (round(x0), round(y0), round(x1), round(y1))


def parse_grounding(
    text: str,
    *,
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    coords: Coords = "absolute",
) -> list[GroundedBox]:
    """Boxes from a grounding answer, in frame pixels; empty boxes and repeats dropped; [] on
    junk. A repeat is a box over SAME_BOX_IOU with one given before it: Qwen often writes the
    same object twice (or in a loop until its budget ends), and Find would track it twice.

    image_size is the (width, height) of the image the model saw; frame_size the frame's.
    """
    out: list[GroundedBox] = []
    for raw in parse_raw_boxes(text):
        box = to_frame_box(
            raw.coords, convention=coords, image_size=image_size, frame_size=frame_size
        )
        if box_area(box) > 0 and all(box_iou(box, g.box) <= SAME_BOX_IOU for g in out):
            out.append(GroundedBox(box, raw.label, raw.score))
    return out
