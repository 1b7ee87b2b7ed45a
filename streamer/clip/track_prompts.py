"""`fmu-live track`'s prompts: one object to track per `--point`, `--box` or `--find` (each
`[@FRAME]`), or per entry of a `--prompts` JSON file (batch.py's docstring shows one); every value
checked as it is read, with an error that says what a good one looks like."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.objects.requests import check_box
from streamer.objects.table import NEGATIVE_FIRST, starts_an_object

_NUM = r"-?\d+(?:\.\d+)?"


@dataclass
class ObjectPrompt:
    """One object to track: clicks and/or a box on a frame, or a phrase to Find there."""

    frame: int = 0
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    find: str | None = None


def _split_frame(spec: str) -> tuple[str, int]:
    body, _, frame = spec.rpartition("@") if "@" in spec else (spec, "", "0")
    if not frame.isdigit():
        raise ValueError(f"the frame after @ must be a whole number, got {spec!r}")
    return body, int(frame)


def parse_point(spec: str) -> ObjectPrompt:
    """'X,Y[@FRAME]' -> a one-click object."""
    body, frame = _split_frame(spec)
    m = re.fullmatch(rf"\s*({_NUM})\s*,\s*({_NUM})\s*", body)
    if not m:
        raise ValueError(f"a point is X,Y or X,Y@FRAME (pixels), got {spec!r}")
    return ObjectPrompt(frame, [(float(m[1]), float(m[2]))], [1])


def parse_box(spec: str) -> ObjectPrompt:
    """'X0,Y0,X1,Y1[@FRAME]' -> a box-prompted object."""
    body, frame = _split_frame(spec)
    m = re.fullmatch(rf"\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*", body)
    if not m:
        raise ValueError(f"a box is X0,Y0,X1,Y1 or X0,Y0,X1,Y1@FRAME (pixels), got {spec!r}")
    return ObjectPrompt(frame, box=check_box([float(m[i]) for i in range(1, 5)]))


def parse_find(spec: str) -> ObjectPrompt:
    """'PHRASE[@FRAME]' -> objects the VLM finds for the phrase on that frame."""
    body, frame = _split_frame(spec) if re.search(r"@\d+$", spec) else (spec, 0)
    if not body.strip():
        raise ValueError("--find needs a phrase, e.g. --find 'the red cup'")
    return ObjectPrompt(frame, find=body.strip())


PROMPT_KEYS = frozenset({"frame", "points", "labels", "box", "find"})


def _object_prompt(item: Any) -> ObjectPrompt:
    """One entry of a prompts file as an ObjectPrompt; ValueError saying what is wrong with it."""
    if not isinstance(item, dict):
        raise ValueError("a prompt must be a JSON object")
    unknown = sorted(set(item) - PROMPT_KEYS)
    if unknown:
        raise ValueError(
            f"unknown {'key' if len(unknown) == 1 else 'keys'} {unknown}; a prompt has {sorted(PROMPT_KEYS)}"
        )
    raw = item.get("points") or []
    if not (isinstance(raw, list) and all(isinstance(p, list) and len(p) == 2 for p in raw)):
        raise ValueError('"points" is a list of [x, y] pairs, e.g. [[320, 240]]')
    points = [(float(x), float(y)) for x, y in raw]
    labels = list(item.get("labels", [1] * len(points)))  # not int(): it read 1.9, true as 1
    box = check_box([float(v) for v in item["box"]]) if item.get("box") is not None else None
    if len(labels) != len(points):
        raise ValueError(f'{len(points)} "points" but {len(labels)} "labels"')
    if any(type(v) is not int or v not in (0, 1) for v in labels):  # 2, 3: SAM2's box corners
        raise ValueError('"labels" are 1 (a positive click) or 0 (a negative one), JSON integers')
    if points and not starts_an_object(labels, box):  # every mode's rule
        raise ValueError(f"{NEGATIVE_FIRST} (here: a click labelled 1 or a box starts one)")
    find = item.get("find")
    if find is not None and not (isinstance(find, str) and find.strip()):
        raise ValueError('"find" is a phrase (a non-empty string)')
    if not (points or box or find):
        raise ValueError('nothing to track: give "points", "box" or "find"')
    frame = item.get("frame", 0)
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise ValueError(f'"frame" is a frame number (0 or more), got {frame!r}')
    return ObjectPrompt(frame, points, labels, box, find.strip() if find else None)  # type: ignore[arg-type]


def load_prompts_file(path: Path) -> dict[str, list[ObjectPrompt]]:
    """Per-clip prompts from JSON (see the module docstring); '*' applies to every clip.

    ValueError naming the file, the clip and the entry when one is not a prompt.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the prompts file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"the prompts file {path} must map clip names to lists of prompts")
    out: dict[str, list[ObjectPrompt]] = {}
    for name, items in doc.items():
        if not isinstance(items, list):
            raise ValueError(f"{path}: the prompts for {name!r} must be a list of objects")
        prompts = []
        for n, item in enumerate(items):
            try:
                prompts.append(_object_prompt(item))
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(
                    f"{path}: prompt {n} of {name!r} ({json.dumps(item)[:80]}): {exc}"
                ) from None
        out[name] = prompts
    return out
