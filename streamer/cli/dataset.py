"""`fmu-live dataset`: parsing and wiring; the work (the Spotlight Data Engine) is workers/dataset/."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamer.cli import logs, options
from workers.reasoning.families import FAMILY_CHOICES


def dataset_command(argv: Sequence[str]) -> int:
    """`fmu-live dataset`: the Spotlight Data Engine (COCO -> teacher descriptions -> ShareGPT)."""
    from workers.dataset.engine import DatasetPlan, made_for, make_dataset
    from workers.evaluation.data import DataError, InstanceFilter

    parser = options.command_parser(
        "dataset",
        "The Spotlight Data Engine: COCO instances -> Spotlight images (and zoom crops for small "
        "objects) -> a teacher model on any OpenAI-compatible endpoint (--vlm-url, --vlm-model, "
        "--vlm-api-key: a local large Qwen or GPT-4o alike) describes each -> ShareGPT JSONL and "
        "the dataset_info.json LLaMA-Factory reads, plus grounding samples. Resumable: run it "
        "again to finish an interrupted run or retry the teacher's failures.",
    )
    parser.add_argument("--coco", type=Path, required=True, help="COCO instances JSON.")
    parser.add_argument("--images", type=Path, required=True, help="The COCO images folder.")
    options.add_out_option(parser, "Dataset folder (LLaMA-Factory's dataset_dir).")
    parser.add_argument(
        "--max-per-image", type=int, default=None, help="At most this many objects per image."
    )
    parser.add_argument(
        "--categories", default="", help="Comma-separated category names to keep (default: all)."
    )
    parser.add_argument("--no-grounding", action="store_true", help="Describe records only.")
    parser.add_argument(
        "--student-model",
        default=None,
        help="The model to be fine-tuned; its family picks the image grid and the grounding "
        "boxes' coordinates (e.g. a Qwen3-VL name: 0..1000). Default: a Qwen2.5-VL.",
    )
    parser.add_argument(
        "--student-family",
        choices=FAMILY_CHOICES,
        default="auto",
        help="The student's VLM family, when its name does not tell (auto reads --student-model).",
    )
    parser.add_argument(
        "--name", default="fmu", help="Prefix of the dataset names in dataset_info.json."
    )
    options.add_sample_options(parser, "objects", "Teacher requests")
    options.add_setting_options(parser, options.VLM_FIELDS)
    args = parser.parse_args(argv)
    logs.quiet_noisy_logs()
    options.numbers_or_exit(parser, args, options.SAMPLE_FLOORS | {"max_per_image": (1, True)})
    options.paths_or_exit(parser, "--images", [args.images], kind="folder")
    settings = options.settings_or_exit(parser, vars(args))
    teacher = options.reasoner_or_exit(parser, settings)
    options.out_folder_or_exit(parser, args.out)
    if (args.out / "images").resolve() == args.images.resolve():
        # The records' images are written to OUT/images/ under names COCO's may have
        # (<image id>.jpg): they would replace the photos this run and the next read.
        parser.error(
            f"--out {args.out}: its images/ folder is --images {args.images}, where the "
            "dataset writes its own images (over COCO's photos where the names meet); give "
            f"another folder, e.g. {args.out / 'spotlight-data'}"
        )
    concurrency = options.vlm_concurrency(parser, args.concurrency, settings)
    student = _student_family(parser, args.student_family, args.student_model)
    if (earlier := made_for(args.out)) not in (None, student.name):
        parser.error(
            f"--out {args.out}: its records were made for a {earlier} student (their images and "
            f"boxes follow its grid and coordinates), this run's is {student.name}: give another "
            "--out, or remove that folder to start over"
        )
    categories = frozenset(c.strip() for c in args.categories.split(",") if c.strip())
    # Read last of the checks (seconds on instances_train2017), before the folder is made.
    coco = options.coco_or_exit(parser, args.coco)
    try:
        coco.check_categories(categories)  # was found only after the folder was made
    except DataError as exc:
        parser.error(f"--categories: {exc}")
    plan = DatasetPlan(
        coco=coco,
        images=args.images,
        out=args.out,
        instance_filter=InstanceFilter(args.min_area, args.max_per_image, categories),
        samples=args.samples,
        concurrency=concurrency,
        grounding=not args.no_grounding,
        student=student,
        name=args.name,
    )
    try:
        summary = asyncio.run(make_dataset(plan, teacher, progress=not args.no_progress))
    except DataError as exc:
        sys.exit(f"error: {exc}")
    print(
        f"{summary.described} described, {summary.grounded} grounding samples, "
        f"{summary.skipped_done} already done, {summary.failed} failed (in failures.jsonl) "
        f"-> {args.out}"
    )
    if summary.made_nothing:
        hint = (
            "do --coco and --images belong together?"
            if summary.bad_inputs == summary.failed
            else "is the teacher at --vlm-url serving --vlm-model?"
        )
        sys.exit(
            f"error: all {summary.failed} records this run tried failed (first: "
            f"{summary.first_cause}); see {args.out / 'failures.jsonl'}, fix the cause ({hint}) "
            "and run again"
        )
    return 0


def _student_family(parser: argparse.ArgumentParser, setting: str, model: str | None) -> Any:
    from workers.reasoning.families import FAMILIES, UnknownFamily, choose_family

    if setting == "auto" and model is None:
        return FAMILIES["qwen2.5-vl"]
    try:
        return choose_family(setting, [model] if model else []).family
    except UnknownFamily as exc:
        parser.error(str(exc).replace("--vlm-family", "--student-family"))
