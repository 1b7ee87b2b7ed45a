"""`fmu-live eval`: parsing and wiring; the work is workers/evaluation/."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamer.cli import logs, options


def eval_command(argv: Sequence[str]) -> int:
    """`fmu-live eval`: FMU-Agent's four dimensions against a VLM server (and SAM2 masks)."""
    from workers.evaluation.data import (
        DataError,
        InstanceFilter,
        load_referring,
        load_region_captions,
    )
    from workers.evaluation.metrics import model_folder_problem
    from workers.evaluation.runner import (
        EvalPlan,
        evaluate,
        markdown_report,
        nothing_measured,
        write_report,
    )

    parser = options.command_parser(
        "eval",
        "Evaluate a VLM (any OpenAI-compatible server) the way the service uses it: region "
        "captioning (BLEU-4, ROUGE-L, BERT-Score, CLIP-Score), grounding (mIoU, Acc@0.5), "
        "hallucination and correction rates with cycle verification, and time to first token per "
        "pipeline step, stateless vs cached. Writes report.json (every sample) and report.md.",
    )
    parser.add_argument(
        "--images",
        type=Path,
        required=True,
        help="Folder the image names in the input files are relative to.",
    )
    parser.add_argument("--coco", type=Path, help="COCO instances JSON: hallucination and TTFT.")
    parser.add_argument(
        "--referring",
        type=Path,
        help="Referring expressions JSONL {image, expression, bbox}: grounding.",
    )
    parser.add_argument(
        "--captions",
        type=Path,
        help="Region captions JSONL {image, bbox, captions[, segmentation]}: captioning.",
    )
    parser.add_argument(
        "--masks",
        choices=["annotation", "sam2"],
        default="annotation",
        help="Describe the annotation's mask, or SAM2's mask from the annotation's box (loads SAM2 as the --weights options say).",
    )
    parser.add_argument(
        "--ttft-samples", type=int, default=3, help="Regions timed for TTFT (0: skip)."
    )
    parser.add_argument(
        "--bertscore-model",
        help="Local folder of a BERT-style model for BERT-Score (else not computed).",
    )
    parser.add_argument(
        "--clip-model", help="Local folder of a CLIP model for CLIP-Score (else not computed)."
    )
    options.add_out_option(parser, "Where report.json and report.md go.", Path("eval-out"))
    parser.add_argument(
        "--baseline",
        type=Path,
        help="An earlier run's report.json (e.g. the base model): its values go in a column "
        "beside this run's, as in the seed's table.",
    )
    options.add_sample_options(parser, "samples per dimension", "Samples in flight")
    options.add_setting_options(
        parser, options.VLM_FIELDS + options.VERIFY_FIELDS + options.SAM2_FIELDS
    )
    args = parser.parse_args(argv)
    logs.quiet_noisy_logs()
    options.numbers_or_exit(parser, args, options.SAMPLE_FLOORS | {"ttft_samples": (0, True)})
    if not (args.coco or args.referring or args.captions):
        parser.error("nothing to evaluate: give at least one of --coco, --referring, --captions")
    # The SAM2 options were taken and did nothing without --masks sam2 (SAM2 is not loaded).
    if args.masks != "sam2":
        options.refuse_unused(
            parser,
            args,
            options.SAM2_FIELDS,
            "SAM2's options apply with --masks sam2 alone (SAM2's mask from each annotation's "
            "box); without it the annotations' own masks are described and SAM2 is not loaded",
        )
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(args.baseline.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--baseline {args.baseline}: not a readable report.json ({exc})")
        try:
            markdown_report(baseline, baseline)  # what report.md does with it, before any work
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            parser.error(
                f"--baseline {args.baseline}: not a report.json that `fmu-live eval` wrote (its "
                "metrics are not in that shape); pass an earlier run's OUT/report.json"
            )
    # Read whole here, once, before the VLM is asked anything: they were read only when their
    # dimension ran, after the others' VLM work (and the captions again for TTFT).
    loaded: dict[str, Any] = {}
    for option, load in (("--referring", load_referring), ("--captions", load_region_captions)):
        if (path := getattr(args, option[2:])) is not None:
            options.paths_or_exit(parser, option, [path], kind="file")
            try:
                loaded[option[2:]] = load(path, args.images)
            except DataError as exc:
                parser.error(f"{option}: {exc}")
    # A model folder without weights failed as a traceback after every dimension had run.
    for option, folder in (
        ("--bertscore-model", args.bertscore_model),
        ("--clip-model", args.clip_model),
    ):
        if folder and (problem := model_folder_problem(folder)):
            parser.error(f"{option}: {problem}")
    settings = options.settings_or_exit(parser, vars(args))
    if args.masks == "sam2":
        options.sam2_options_or_exit(parser, settings)
    reasoner = options.reasoner_or_exit(parser, settings)
    concurrency = options.vlm_concurrency(parser, args.concurrency, settings)
    options.paths_or_exit(parser, "--images", [args.images], kind="folder")
    options.out_folder_or_exit(parser, args.out)
    plan = EvalPlan(
        images=args.images,
        # Read last of the checks: on instances_train2017 it takes seconds.
        coco=None if args.coco is None else options.coco_or_exit(parser, args.coco),
        referring=loaded.get("referring"),
        captions=loaded.get("captions"),
        samples=args.samples,
        concurrency=concurrency,
        masks=args.masks,
        ttft_samples=args.ttft_samples,
        instance_filter=InstanceFilter(min_area=args.min_area),
        bertscore_model=args.bertscore_model,
        clip_model=args.clip_model,
    )
    sam2_model = options.sam2_or_exit(settings) if args.masks == "sam2" else None
    try:
        report = asyncio.run(
            evaluate(plan, reasoner, sam2_model=sam2_model, progress=not args.no_progress)
        )
    except DataError as exc:
        sys.exit(f"error: {exc}")
    if why := nothing_measured(report):
        earlier = args.out / "report.json"
        kept = f" ({earlier} is left as it was)" if earlier.exists() else ""
        sys.exit(f"error: nothing was measured, no report written{kept}: {why}")
    json_path, md_path = write_report(report, args.out, baseline)
    print(markdown_report(report, baseline))
    print(f"wrote {json_path} and {md_path}")
    return 0
