"""Evaluation and training data on disk: COCO instances, referring expressions, region captions.

Three standard shapes, each read into small sample records that hold what a run needs:

- COCO instances JSON (+ the images folder): one sample per instance with its mask (pycocotools
  decodes polygons and RLE) and category name. The filters (min area, max per image, categories)
  are shared with the Spotlight Data Engine.
- Referring expressions, RefCOCO-style, as JSONL: ``{"image": "x.jpg", "expression": "...",
  "bbox": [x, y, w, h]}`` (COCO's box convention: top-left corner, width, height).
- Region captions as JSONL: ``{"image": "x.jpg", "bbox": [x, y, w, h], "captions": ["...", ...]}``
  with an optional ``"segmentation"`` (COCO polygons or RLE) for the region's mask; without it
  the box is the region.

Boxes inside samples are the service's (x0, y0, x1, y1), x1/y1 exclusive (workers/masks.py).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from workers.masks import Box, rle_decode


class DataError(ValueError):
    """An input file is missing or not in the expected shape; the message says which and why."""


@dataclass(frozen=True)
class InstanceFilter:
    """Which COCO instances to use: area in pixels, instances per image, category names."""

    min_area: float = 0.0
    max_per_image: int | None = None
    categories: frozenset[str] = frozenset()  # empty: every category


@dataclass
class Instance:
    """One COCO instance: its image, mask, box and category."""

    image_path: Path
    image_id: int
    ann_id: int
    category: str
    box: Box
    area: float
    ann: dict[str, Any] = field(repr=False)

    def mask(self, size: tuple[int, int]) -> np.ndarray:
        """The instance's mask on an image of `size` (width, height)."""
        return segmentation_mask(self.ann.get("segmentation"), size, self.box)


@dataclass
class Referring:
    """One referring expression: the phrase and the box it refers to."""

    image_path: Path
    expression: str
    box: Box
    index: int


@dataclass
class RegionCaption:
    """One captioned region: its box (and mask, if given) and its reference captions."""

    image_path: Path
    box: Box
    references: list[str]
    index: int
    segmentation: Any = None

    def mask(self, size: tuple[int, int]) -> np.ndarray:
        """The region's mask on an image of `size` (width, height)."""
        return segmentation_mask(self.segmentation, size, self.box)


def xywh_to_box(bbox: Sequence[float]) -> Box:
    """COCO's [x, y, w, h] as the service's (x0, y0, x1, y1)."""
    x, y, w, h = (float(v) for v in bbox)
    return (x, y, x + w, y + h)


def box_to_xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = box
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _polygons(seg: list[Any]) -> list[list[float]]:
    """The usable polygons of a COCO polygon list: x, y pairs, at least three points.

    A shorter one is no region, and pycocotools would fail on it, or read a 4-number one as a box.
    """
    return [
        [float(v) for v in poly]
        for poly in seg
        if isinstance(poly, list | tuple)
        and len(poly) >= 6
        and len(poly) % 2 == 0
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in poly)
    ]


def segmentation_mask(seg: Any, size: tuple[int, int], box: Box) -> np.ndarray:
    """An H x W bool mask from COCO polygons or RLE; the filled box when there is none.

    DataError when the segmentation is not a region of this image: a polygon of fewer than three
    points, an RLE of another size or whose runs do not cover its size (workers.masks.rle_decode).
    """
    from pycocotools import mask as mask_utils

    width, height = size
    if isinstance(seg, dict) and seg:
        try:
            mask = rle_decode(seg)
        except ValueError as exc:
            raise DataError(
                f"the segmentation cannot be decoded ({exc}): {str(seg)[:80]}"
            ) from None
        if mask.shape != (height, width):
            raise DataError(
                f"the segmentation's RLE is {mask.shape[1]}x{mask.shape[0]}, its image "
                f"{width}x{height}: {str(seg)[:80]}"
            )
        return mask
    if seg:
        if not isinstance(seg, list):
            raise DataError(f"the segmentation is neither polygons nor an RLE: {str(seg)[:80]}")
        polygons = _polygons(seg)
        if not polygons:
            raise DataError(
                "the segmentation has no polygon of three points or more (x, y pairs): "
                f"{str(seg)[:80]}"
            )
        try:
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
            return mask_utils.decode(rle).astype(bool)
        except Exception as exc:  # pycocotools raises bare Exceptions (and others) on junk
            raise DataError(
                f"the segmentation cannot be decoded ({type(exc).__name__}: {exc}): {str(seg)[:80]}"
            ) from None
    out = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    out[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return out


def read_image(path: Path) -> np.ndarray:
    """An H x W x 3 uint8 RGB image; DataError when it is missing or not an image."""
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if bgr is None:
        raise DataError(f"cannot read image {path}: the file is missing or not an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{what} file {path} is a folder: give the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} file {path} cannot be read: {exc}") from None


def _load_json(path: Path, what: str) -> Any:
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(f"{what} file {path} is not valid JSON: {exc}") from None


def _jsonl(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    lines = _read_text(path, what).splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{what} file {path}, line {n}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise DataError(f"{what} file {path}, line {n}: expected a JSON object")
        yield n, row


# What each list of a COCO instances file needs per entry (what the loading below reads).
_COCO_KEYS = {
    "images": ("id", "file_name"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def read_coco_instances(path: Path) -> dict[str, Any]:
    """A COCO instances file as JSON, or DataError saying what such a file needs (a captions or
    keypoints file, or any other JSON, is refused here, before pycocotools fails on it)."""
    doc = _load_json(path, "COCO annotations")
    need = (
        f"a COCO instances file is a JSON object with lists {', '.join(map(repr, _COCO_KEYS))} "
        "(e.g. instances_val2017.json)"
    )
    if not isinstance(doc, dict):
        raise DataError(f"{path} is not a COCO instances file: {need}, not a {type(doc).__name__}")
    lacking = [key for key in _COCO_KEYS if not isinstance(doc.get(key), list)]
    if lacking:
        raise DataError(
            f"{path} is not a COCO instances file: it has no {' or '.join(map(repr, lacking))} "
            f"list; {need}"
        )
    for key, fields in _COCO_KEYS.items():
        for n, entry in enumerate(doc[key]):
            missing = [f for f in fields if f not in entry] if isinstance(entry, dict) else fields
            if missing:
                raise DataError(
                    f"{path}: {key}[{n}] is not a COCO instances entry: it needs "
                    f"{', '.join(map(repr, fields))} (missing {', '.join(map(repr, missing))})"
                )
    # What is read of each entry, of the types it is read as (they failed as tracebacks).
    for n, img in enumerate(doc["images"]):
        _image(img, "file_name", f"{path}: images[{n}]")
    image_ids = {img["id"] for img in doc["images"]}
    for n, ann in enumerate(doc["annotations"]):
        _bbox(ann, f"{path}: annotations[{n}]", some_area=False)
        area = ann.get("area", 0.0)
        if isinstance(area, bool) or not isinstance(area, int | float):
            raise DataError(f"{path}: annotations[{n}]: 'area' must be a number, got {area!r}")
        if ann["image_id"] not in image_ids:  # instances() walks the images: left out, unsaid
            raise DataError(
                f"{path}: annotations[{n}] (id {ann['id']!r}): 'image_id' {ann['image_id']!r} is "
                "no image of this file (no 'images' entry has that 'id')"
            )
    return doc


class CocoInstances:
    """A COCO instances file, read, checked and indexed once: `fmu-live eval` and `dataset` take
    instances from it several times (checked before any work, then each dimension or pass), and
    on instances_train2017 each read took seconds."""

    def __init__(self, annotations: Path) -> None:
        from pycocotools.coco import COCO

        self.path = annotations
        self._coco = COCO()
        self._coco.dataset = read_coco_instances(annotations)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
            self._coco.createIndex()

    def check_categories(self, names: frozenset[str], shown: int = 20) -> None:
        """DataError naming those of `names` that are no category of this file, each with the
        file's names closest to it, then the file's first `shown` names (COCO has 80)."""
        known = sorted({c["name"] for c in self._coco.loadCats(self._coco.getCatIds())})
        unknown = sorted(names - set(known))
        if not unknown:
            return
        alike = [
            f"{name!r} (did you mean {' or '.join(map(repr, close))}?)"
            if (close := difflib.get_close_matches(name, known, n=2))
            else repr(name)
            for name in unknown
        ]
        more = f", ... ({len(known)} in all)" if len(known) > shown else ""
        raise DataError(
            f"{'categories' if len(unknown) > 1 else 'category'} {', '.join(alike)} "
            f"{'are' if len(unknown) > 1 else 'is'} not in {self.path}; its categories: "
            f"{', '.join(known[:shown])}{more}"
        )

    def instances(
        self, images: Path, filt: InstanceFilter = InstanceFilter(), limit: int | None = None
    ) -> list[Instance]:
        """The file's instances, in image then annotation id order, filtered.

        Crowd regions are left out (they are groups, not one object to describe).
        """
        coco = self._coco
        cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        self.check_categories(filt.categories)
        out: list[Instance] = []
        for image_id in sorted(coco.getImgIds()):
            img = coco.loadImgs(image_id)[0]
            per_image: dict[int, int] = defaultdict(int)
            for ann in coco.loadAnns(sorted(coco.getAnnIds(imgIds=image_id))):
                name = cats.get(ann["category_id"], str(ann["category_id"]))
                if ann.get("iscrowd", 0) or float(ann.get("area", 0.0)) < filt.min_area:
                    continue
                if filt.categories and name not in filt.categories:
                    continue
                if filt.max_per_image is not None and per_image[image_id] >= filt.max_per_image:
                    continue
                per_image[image_id] += 1
                out.append(
                    Instance(
                        image_path=Path(images) / img["file_name"],
                        image_id=int(image_id),
                        ann_id=int(ann["id"]),
                        category=name,
                        box=xywh_to_box(ann["bbox"]),
                        area=float(ann.get("area", 0.0)),
                        ann=ann,
                    )
                )
                if limit is not None and len(out) >= limit:
                    return out
        return out


def _bbox(row: dict[str, Any], where: str, *, some_area: bool = True) -> Box:
    """The row's 'bbox' [x, y, w, h]: finite numbers and, where `some_area`, w and h above 0 (a
    referring or caption box of none was scored as a miss). COCO's own files hold a few boxes of
    no area: they are read, not refused."""
    bbox = row.get("bbox")
    numbers = (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        and all(math.isfinite(v) for v in bbox)
    )
    if not numbers:
        raise DataError(f"{where}: 'bbox' must be [x, y, w, h], four finite numbers, got {bbox!r}")
    if some_area and not (bbox[2] > 0 and bbox[3] > 0):
        raise DataError(f"{where}: 'bbox' [x, y, w, h] needs w and h above 0, got {bbox!r}")
    return xywh_to_box(bbox)


def _image(row: dict[str, Any], key: str, where: str) -> str:
    """The row's image file name (relative to --images)."""
    name = row.get(key)
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: {key!r} must be an image file name, got {name!r}")
    return name


def load_referring(path: Path, images: Path) -> list[Referring]:
    """Referring expressions from JSONL (see the module docstring for the fields)."""
    out: list[Referring] = []
    for n, row in _jsonl(path, "referring expressions"):
        where = f"{path}, line {n}"
        expression = row.get("expression") or row.get("sentence")
        if not isinstance(expression, str) or not expression.strip() or "image" not in row:
            raise DataError(f"{where}: needs 'image' and a non-empty 'expression'")
        image = Path(images) / _image(row, "image", where)
        out.append(Referring(image, expression, _bbox(row, where), len(out)))
    return out


def load_region_captions(path: Path, images: Path) -> list[RegionCaption]:
    """Region captions from JSONL (see the module docstring for the fields)."""
    out: list[RegionCaption] = []
    for n, row in _jsonl(path, "region captions"):
        where = f"{path}, line {n}"
        refs = row.get("captions", row.get("caption"))
        refs = [refs] if isinstance(refs, str) else refs
        if (
            not refs
            or not all(isinstance(r, str) and r.strip() for r in refs)
            or "image" not in row
        ):
            raise DataError(f"{where}: needs 'image' and 'captions' (a list of non-empty strings)")
        out.append(
            RegionCaption(
                Path(images) / _image(row, "image", where),
                _bbox(row, where),
                list(refs),
                len(out),
                row.get("segmentation"),
            )
        )
    return out
