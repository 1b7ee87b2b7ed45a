"""A tiny COCO-format set for tests: scikit-image's bundled photographs, annotated by hand here.

Nothing is downloaded: the photographs ship inside scikit-image. The polygons were drawn by eye
on the pictures (a 50 px grid over each), so they are rough outlines, but each one is on its
object. `write_coco_tiny(folder)` writes images/ and instances.json and returns their paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

# (file name, skimage.data function, [(category, polygon x0,y0,x1,y1,...)])
PHOTOS = [
    (
        "astronaut.png",
        "astronaut",
        [
            (
                "person",
                [
                    30,
                    511,
                    30,
                    300,
                    110,
                    230,
                    150,
                    50,
                    200,
                    15,
                    290,
                    30,
                    300,
                    150,
                    340,
                    240,
                    360,
                    340,
                    290,
                    511,
                ],
            ),
            ("helmet", [280, 420, 320, 360, 400, 340, 470, 360, 500, 430, 500, 511, 280, 511]),
            ("space shuttle", [355, 250, 380, 170, 400, 10, 420, 10, 450, 60, 470, 270, 380, 280]),
        ],
    ),
    (
        "coffee.png",
        "coffee",
        [
            ("cup", [175, 30, 405, 30, 400, 190, 330, 250, 250, 300, 200, 300, 185, 240, 175, 130]),
            (
                "spoon",
                [325, 245, 380, 190, 405, 70, 420, 70, 400, 200, 405, 300, 360, 325, 325, 300],
            ),
            (
                "saucer",
                [75, 150, 180, 80, 410, 80, 480, 180, 470, 300, 400, 370, 200, 385, 90, 300],
            ),
        ],
    ),
    (
        "chelsea.png",
        "chelsea",
        [
            ("cat", [0, 0, 430, 0, 420, 150, 380, 280, 300, 299, 50, 299, 0, 250]),
            ("nose", [245, 225, 290, 228, 275, 255, 255, 255]),  # small: gets a zoom crop
        ],
    ),
]


def _area_and_box(poly: list[int], width: int, height: int) -> tuple[float, list[float]]:
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.array(poly, np.int32).reshape(-1, 2)], 1)
    ys, xs = np.nonzero(mask)
    box = [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() + 1 - xs.min()),
        float(ys.max() + 1 - ys.min()),
    ]
    return float(mask.sum()), box


def write_coco_tiny(folder: Path) -> tuple[Path, Path]:
    """Write folder/images/*.png and folder/instances.json; (annotations path, images folder)."""
    from skimage import data

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = sorted({cat for _, _, anns in PHOTOS for cat, _ in anns})
    cat_ids = {name: i + 1 for i, name in enumerate(names)}
    doc: dict = {
        "info": {"description": "fmu-live test set from scikit-image photographs"},
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n, "supercategory": "thing"} for n, i in cat_ids.items()],
    }
    ann_id = 1
    for image_id, (file_name, fn, anns) in enumerate(PHOTOS, 1):
        rgb = getattr(data, fn)()
        h, w = rgb.shape[:2]
        cv2.imwrite(str(images / file_name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        doc["images"].append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for cat, poly in anns:
            area, bbox = _area_and_box(poly, w, h)
            doc["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat_ids[cat],
                    "segmentation": [[float(v) for v in poly]],
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    path = folder / "instances.json"
    path.write_text(json.dumps(doc))
    return path, images


def instance_box(annotations: Path, category: str) -> list[float]:
    """The [x, y, w, h] box of the first instance of `category`."""
    doc = json.loads(annotations.read_text())
    cat = next(c["id"] for c in doc["categories"] if c["name"] == category)
    return next(a["bbox"] for a in doc["annotations"] if a["category_id"] == cat)


# Hand-written references for the other two input formats, on the same photographs.
CAPTIONS = [
    ("astronaut.png", "person", ["a smiling woman astronaut in an orange space suit"]),
    ("coffee.png", "cup", ["a red and white cup of espresso", "a small cup of coffee"]),
    ("chelsea.png", "cat", ["a tabby cat looking at the camera"]),
]
REFERRING = [
    ("astronaut.png", "person", "the woman in the orange suit"),
    ("astronaut.png", "helmet", "the helmet in her arm"),
    ("coffee.png", "spoon", "the silver spoon on the saucer"),
    ("chelsea.png", "nose", "the cat's pink nose"),
]


def write_eval_set(folder: Path) -> dict[str, Path]:
    """The COCO set plus captions.jsonl and referring.jsonl: every input `fmu-live eval` reads."""
    annotations, images = write_coco_tiny(folder)
    captions, referring = folder / "captions.jsonl", folder / "referring.jsonl"
    captions.write_text(
        "".join(
            json.dumps({"image": i, "bbox": instance_box(annotations, c), "captions": refs}) + "\n"
            for i, c, refs in CAPTIONS
        )
    )
    referring.write_text(
        "".join(
            json.dumps({"image": i, "expression": e, "bbox": instance_box(annotations, c)}) + "\n"
            for i, c, e in REFERRING
        )
    )
    return {"coco": annotations, "images": images, "captions": captions, "referring": referring}


if __name__ == "__main__":
    import sys

    for name, path in write_eval_set(Path(sys.argv[1])).items():
        print(f"{name}: {path}")
