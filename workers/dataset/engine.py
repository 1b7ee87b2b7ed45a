"""The Spotlight Data Engine: fine-tuning data for the service's VLM, made the way the service asks.

COCO instances -> the Spotlight images the service sends (full view, plus the zoom crop for a small
object; resized and JPEG-encoded by the same functions) -> a teacher model on any OpenAI-compatible
endpoint describes each, with the service's own describe prompt -> ShareGPT records for
LLaMA-Factory, plus grounding records (category phrase -> every instance's box, in the coordinate
convention of the VLM family being trained) and the `dataset_info.json` entries that name them.

Output folder:
  images/               the JPEGs the records point to (paths relative to the folder)
  spotlight.jsonl       describe records, one ShareGPT conversation per line
  grounding.jsonl       grounding records
  failures.jsonl        what the last run could not make, with why (retried next run): the
                        teacher's failures, unreadable images, unusable segmentations
  dataset_info.json     LLaMA-Factory's dataset entries (dataset_dir = this folder)

Resumable: a record is appended (one line, flushed) only after its images are on disk, and a run
skips every id already in the output, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from workers.evaluation.data import (
    CocoInstances,
    DataError,
    Instance,
    InstanceFilter,
    read_image,
)
from workers.reasoning import Reasoner, VLMError, prompts, render_spotlight
from workers.reasoning.families import FAMILIES, VLMFamily
from workers.reasoning.grounding import from_frame_box
from workers.reasoning.images import encode_jpeg, fit_image

log = logging.getLogger("fmu.dataset")

IMAGE_TOKEN = "<image>"  # LLaMA-Factory's placeholder: one per entry of `images`, in order
DESCRIBE_FILE = "spotlight.jsonl"
GROUND_FILE = "grounding.jsonl"
FAILURES_FILE = "failures.jsonl"
# The student family the records were made for: their images follow its grid, their boxes its
# coordinates, so a resume for another family would mix two kinds of training data.
RUN_FILE = "run.json"


def made_for(out: Path) -> str | None:
    """The student family the records in `out` were made for; None when none are (or were made
    by an fmu-live from before it was kept)."""
    try:
        family = json.loads((out / RUN_FILE).read_text()).get("student_family")
    except (OSError, ValueError, AttributeError):
        return None
    return family if isinstance(family, str) else None


@dataclass
class DatasetPlan:
    coco: CocoInstances
    images: Path
    out: Path
    instance_filter: InstanceFilter = field(default_factory=InstanceFilter)
    samples: int | None = None  # describe records at most (instances, after the filters)
    concurrency: int = 4
    grounding: bool = True
    # The family of the model to be fine-tuned: its image grid and its box coordinates are what
    # the saved images and grounding answers follow.
    student: VLMFamily = FAMILIES["qwen2.5-vl"]
    name: str = "fmu"


@dataclass
class DatasetSummary:
    described: int = 0
    grounded: int = 0
    skipped_done: int = 0
    failed: int = 0
    bad_inputs: int = 0  # of the failed: an unreadable image, an unusable segmentation
    # (what failed and why, whether it was a bad input), in the order they came
    failures: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def first_cause(self) -> str:
        """The failure to quote: the first a rerun could get past (the teacher, the disk), which a
        bad image among them hid when it came first; else the first."""
        return next((f for f, bad in self.failures if not bad), self.failures[0][0])

    @property
    def made_nothing(self) -> bool:
        """Every record this run tried failed, and the cause is one a rerun could get past (the
        teacher, the disk) or the dataset is still empty. Inputs that are bad for good are not
        that: once the rest is done, they are all a rerun finds to do."""
        if self.described or self.grounded or not self.failed:
            return False
        return self.failed > self.bad_inputs or not self.skipped_done


def dataset_info(name: str, grounding: bool) -> dict[str, Any]:
    """LLaMA-Factory's dataset_info.json entries for the files this engine writes."""
    entry = {
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    }
    info = {f"{name}_spotlight": {"file_name": DESCRIBE_FILE, **entry}}
    if grounding:
        info[f"{name}_grounding"] = {"file_name": GROUND_FILE, **entry}
    return info


def _conversation(user: str, n_images: int, answer: str) -> list[dict[str, str]]:
    # The service puts the images before the text; so does the training prompt.
    return [
        {"role": "user", "content": IMAGE_TOKEN * n_images + user},
        {"role": "assistant", "content": answer},
    ]


def _done_ids(path: Path) -> set[str]:
    """Ids of complete records; a torn last line (a run killed mid-write) is cut off.

    The cut file is written beside the old one and swapped in, so an interruption here never
    loses the records already made (and paid for).
    """
    if not path.exists():
        return set()
    good: list[str] = []
    ids: set[str] = set()
    text = path.read_text()
    lines = text.splitlines()
    for line in lines:
        try:
            row = json.loads(line)
            ids.add(row["id"])
        except (ValueError, KeyError, TypeError):
            continue
        good.append(line)
    # Rewritten only when something is cut (or the last line lacks its newline: appending to it
    # would tear it).
    if len(good) != len(lines) or (text and not text.endswith("\n")):
        tmp = path.with_name(path.name + ".part")
        with tmp.open("w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in good))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return ids


class _Appender:
    """One JSONL file that records are appended to, a line at a time, flushed at once."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class SpotlightDataEngine:
    """Make the dataset; `run()` returns what it did (and logs what the teacher failed at)."""

    def __init__(self, plan: DatasetPlan, teacher: Reasoner, *, progress: bool = True) -> None:
        self.plan = plan
        self.teacher = teacher
        self.progress = progress
        self.image_dir = plan.out / "images"

    def _save(self, image: np.ndarray, name: str) -> tuple[str, tuple[int, int]]:
        """Save the image as the service would send it; (path relative to out, sent size)."""
        fitted = fit_image(image, self.teacher.max_side, self.plan.student.grid_multiple)
        path = self.image_dir / name
        tmp = path.with_suffix(".part")
        tmp.write_bytes(encode_jpeg(fitted, rgb=self.teacher.rgb))
        tmp.replace(path)
        return f"images/{name}", (fitted.shape[1], fitted.shape[0])

    async def _describe(self, inst: Instance) -> dict[str, Any]:
        frame = await asyncio.to_thread(read_image, inst.image_path)
        mask = inst.mask((frame.shape[1], frame.shape[0]))
        if not mask.any():
            raise DataError("the instance's mask is empty on its image")
        description = await self.teacher.description(frame, mask)
        if not description:
            raise ValueError("the teacher answered with no text")
        spot = await asyncio.to_thread(render_spotlight, frame, mask)
        names = [
            f"{inst.image_id}_{inst.ann_id}_spotlight.jpg",
            f"{inst.image_id}_{inst.ann_id}_zoom.jpg",
        ]
        paths = [
            (await asyncio.to_thread(self._save, img, name))[0]
            for img, name in zip(spot.images, names, strict=False)
        ]
        user = prompts.describe(zoom=spot.crop is not None)
        return {
            "id": f"describe:{inst.ann_id}",
            "messages": _conversation(user, len(paths), description),
            "images": paths,
        }

    async def _ground(
        self, key: tuple[int, str], instances: list[Instance], convention: str
    ) -> dict[str, Any]:
        image_id, category = key
        frame = await asyncio.to_thread(read_image, instances[0].image_path)
        path, size = await asyncio.to_thread(self._save, frame, f"{image_id}.jpg")
        frame_size = (frame.shape[1], frame.shape[0])
        answer = [
            {
                "bbox_2d": list(
                    from_frame_box(
                        i.box,
                        convention=convention,
                        image_size=size,
                        frame_size=frame_size,  # type: ignore[arg-type]
                    )
                ),
                "label": category,
            }
            for i in instances
        ]
        user = prompts.ground(category, coords=convention, size=size)
        return {
            "id": f"ground:{image_id}:{category}",
            "messages": _conversation(user, 1, json.dumps(answer)),
            "images": [path],
        }

    async def run(self) -> DatasetSummary:
        p = self.plan
        self.image_dir.mkdir(parents=True, exist_ok=True)
        summary = DatasetSummary()
        # A rerun with --no-grounding leaves an earlier run's grounding records listed: they
        # are still in the folder, and LLaMA-Factory finds only what dataset_info.json names.
        grounded = (p.out / GROUND_FILE).is_file() and (p.out / GROUND_FILE).stat().st_size > 0
        (p.out / "dataset_info.json").write_text(
            json.dumps(dataset_info(p.name, p.grounding or grounded), indent=2) + "\n"
        )
        (p.out / RUN_FILE).write_text(json.dumps({"student_family": p.student.name}) + "\n")
        instances = p.coco.instances(p.images, p.instance_filter, p.samples)
        done = _done_ids(p.out / DESCRIBE_FILE)
        todo = [i for i in instances if f"describe:{i.ann_id}" not in done]
        summary.skipped_done += len(instances) - len(todo)

        records = _Appender(p.out / DESCRIBE_FILE)
        (p.out / FAILURES_FILE).write_text("")  # this run's failures: earlier ones are retried
        failures = _Appender(p.out / FAILURES_FILE)
        sem = asyncio.Semaphore(max(1, p.concurrency))
        bar = tqdm(total=len(todo), desc="describe", unit="obj", disable=not self.progress)

        def failed(record_id: str, image: Path, what: str, exc: Exception) -> None:
            why = f"{type(exc).__name__}: {exc}"
            log.warning("failed on %s (%s): %s", what, image.name, why)
            failures.write({"id": record_id, "image": image.name, "error": why})
            summary.failed += 1
            summary.bad_inputs += isinstance(exc, DataError)
            summary.failures.append((f"{what}: {why}", isinstance(exc, DataError)))

        async def one(inst: Instance) -> None:
            async with sem:
                try:
                    record = await self._describe(inst)
                    records.write(record)
                    done.add(record["id"])
                    summary.described += 1
                except (VLMError, ValueError, OSError) as exc:
                    failed(
                        f"describe:{inst.ann_id}", inst.image_path, f"annotation {inst.ann_id}", exc
                    )
                bar.update(1)

        try:
            await asyncio.gather(*(one(i) for i in todo))
        finally:
            bar.close()
            records.close()
        try:
            if p.grounding:
                described = [i for i in instances if f"describe:{i.ann_id}" in done]
                await self._grounding(described, summary, failed)
        finally:
            failures.close()
        return summary

    async def _grounding(
        self,
        described: Iterable[Instance],
        summary: DatasetSummary,
        failed: Callable[[str, Path, str, Exception], None],
    ) -> None:
        """One record per (image, category) among the described images: every instance's box.

        An image that cannot be read is a failure of its own records (in failures.jsonl, retried
        next run), not of the run.
        """
        p = self.plan
        convention = p.student.coords
        images = {i.image_id for i in described}
        # Every instance of the category goes in the answer, small ones too: leaving any out
        # would teach the model to miss them.
        everything = p.coco.instances(
            p.images, InstanceFilter(categories=p.instance_filter.categories)
        )
        groups: dict[tuple[int, str], list[Instance]] = defaultdict(list)
        for inst in everything:
            if inst.image_id in images:
                groups[(inst.image_id, inst.category)].append(inst)
        done = _done_ids(p.out / GROUND_FILE)
        out = _Appender(p.out / GROUND_FILE)
        try:
            for key in tqdm(
                sorted(groups), desc="ground", unit="phrase", disable=not self.progress
            ):
                record_id = f"ground:{key[0]}:{key[1]}"
                if record_id in done:
                    summary.skipped_done += 1
                    continue
                try:
                    out.write(await self._ground(key, groups[key], convention))
                except (ValueError, OSError) as exc:
                    where = f"image {key[0]}, {key[1]!r}"
                    failed(record_id, groups[key][0].image_path, where, exc)
                    continue
                summary.grounded += 1
        finally:
            out.close()


async def make_dataset(
    plan: DatasetPlan, teacher: Reasoner, *, progress: bool = True
) -> DatasetSummary:
    """Run the engine, then close the teacher's backend."""
    try:
        return await SpotlightDataEngine(plan, teacher, progress=progress).run()
    finally:
        await teacher.backend.aclose()
