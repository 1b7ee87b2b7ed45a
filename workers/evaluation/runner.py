"""The eval run: FMU-Agent's four dimensions against one VLM backend (and optionally SAM2 masks).

1. Region captioning: describe each region's Spotlight, score against the references.
2. Grounding: ground each referring expression on its image, box IoU with the reference box.
3. Hallucination: the service's verified describe on each COCO instance; the first attempt is the
   baseline, the retries are the verified run, in the same run.
4. Time to first token of each pipeline step (describe, verify, chat), stateless vs cached.

Everything goes through the service's own Reasoner (prompts, Spotlight, grounding parser, retry
policy), so the numbers are the service's. Samples run with bounded concurrency; a sample whose
request fails is recorded with its error and left out of the metrics (counted as failed).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from workers.evaluation import metrics
from workers.evaluation.data import (
    CocoInstances,
    DataError,
    Instance,
    InstanceFilter,
    Referring,
    RegionCaption,
    box_to_xywh,
    read_image,
)
from workers.evaluation.metered import MeteredBackend
from workers.masks import Box, mask_iou, mask_to_box
from workers.reasoning import Reasoner, VerdictEvent, VLMError
from workers.reasoning.reasoner import answer_text

MaskSource = Literal["annotation", "sam2"]
TTFT_STEPS = ("describe", "verify", "chat")
CHAT_QUESTION = "What is it made of?"


async def _model_name(backend: Any) -> str | None:
    """The model the report is of: the one named (--vlm-model), else the one its server serves
    (GET /models); None where the server cannot say (its dimensions then say why)."""
    resolve = getattr(backend, "resolve_model", None)
    if resolve is not None:
        try:
            return await resolve()  # type: ignore[no-any-return]
        except VLMError:
            return None
    return getattr(backend, "model", None)


@dataclass
class EvalPlan:
    """What to evaluate and how; every input file is optional (its dimension is then skipped)."""

    images: Path
    coco: CocoInstances | None = None
    # Read whole and checked before the VLM is asked anything (load_referring,
    # load_region_captions), once: each dimension takes its first `samples`.
    referring: list[Referring] | None = None
    captions: list[RegionCaption] | None = None
    samples: int | None = None  # per dimension
    concurrency: int = 4
    masks: MaskSource = "annotation"
    ttft_samples: int = 3
    instance_filter: InstanceFilter = field(default_factory=InstanceFilter)
    bertscore_model: str | None = None
    clip_model: str | None = None


class MaskMaker:
    """The region mask a sample is described from: the annotation's, or SAM2's from its box.

    With SAM2 (the service's ImageSegmenter, prompted with the annotation's box as a Find does),
    every call runs on one worker thread, as the service's vision thread.
    """

    def __init__(self, source: MaskSource, sam2_model: Any = None) -> None:
        if source == "sam2" and sam2_model is None:
            raise ValueError("masks from SAM2 need a SAM2 model")
        self.source = source
        self._segmenter: Any = None
        self._model = sam2_model
        self._executor = (
            ThreadPoolExecutor(1, thread_name_prefix="eval-sam2") if sam2_model else None
        )

    def _segment(self, image: np.ndarray, box: Box) -> np.ndarray:
        if self._segmenter is None:
            from workers.vision import ImageSegmenter

            self._segmenter = ImageSegmenter(self._model)
        self._segmenter.set_image(image)
        mask, _ = self._segmenter.segment(box=box)
        return mask

    async def __call__(
        self, image: np.ndarray, annotation: np.ndarray, box: Box
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if self.source == "annotation":
            return annotation, {}
        loop = asyncio.get_running_loop()
        mask = await loop.run_in_executor(
            self._executor, functools.partial(self._segment, image, box)
        )
        return mask, {"sam2_mask_iou": round(mask_iou(mask, annotation), 4)}

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)


def _crop(image: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    crop = image[max(y0, 0) : max(y1, y0 + 1), max(x0, 0) : max(x1, x0 + 1)]
    return crop if crop.size else image


def _round_box(box: Sequence[float] | None) -> list[float] | None:
    return None if box is None else [round(float(v), 2) for v in box]


async def _bounded(
    items: Sequence[Any],
    run: Callable[[Any], Awaitable[dict[str, Any]]],
    ident: Callable[[Any], dict[str, Any]],
    *,
    concurrency: int,
    desc: str,
    progress: bool,
) -> list[dict[str, Any]]:
    """run(item) for every item, at most `concurrency` at once; failures become error records."""
    sem = asyncio.Semaphore(max(1, concurrency))
    bar = tqdm(total=len(items), desc=desc, unit="sample", disable=not progress, leave=True)

    async def one(item: Any) -> dict[str, Any]:
        async with sem:
            try:
                record = {**ident(item), **await run(item)}
            except (VLMError, DataError, ValueError) as exc:
                record = {**ident(item), "error": f"{type(exc).__name__}: {exc}"}
            bar.update(1)
            return record

    try:
        return list(await asyncio.gather(*(one(i) for i in items)))
    finally:
        bar.close()


class Evaluation:
    """One eval run; `run()` returns the report (metrics and every per-sample record)."""

    def __init__(
        self, plan: EvalPlan, reasoner: Reasoner, *, sam2_model: Any = None, progress: bool = True
    ) -> None:
        self.plan = plan
        self.reasoner = reasoner
        self.masks = MaskMaker(plan.masks, sam2_model)
        self.progress = progress

    async def _each(
        self,
        desc: str,
        items: Sequence[Any],
        run: Callable[[Any], Awaitable[dict[str, Any]]],
        ident: Callable[[Any], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """_bounded over one section's items, at the plan's concurrency, with its progress bar."""
        return await _bounded(
            items, run, ident, concurrency=self.plan.concurrency, desc=desc, progress=self.progress
        )

    async def _region(
        self, path: Path, annotation_mask: Callable[[tuple[int, int]], np.ndarray], box: Box
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        image = await asyncio.to_thread(read_image, path)
        size = (image.shape[1], image.shape[0])
        mask, extra = await self.masks(image, annotation_mask(size), box)
        if mask_to_box(mask) is None:
            raise DataError("the region's mask is empty on its image")
        return image, mask, extra

    # -- 1. captioning -------------------------------------------------------------------------

    async def captioning(self) -> dict[str, Any]:
        assert self.plan.captions is not None
        items = self.plan.captions[: self.plan.samples]
        crops: dict[int, np.ndarray] = {}

        async def run(s: RegionCaption) -> dict[str, Any]:
            image, mask, extra = await self._region(s.image_path, s.mask, s.box)
            prediction = await self.reasoner.description(image, mask)
            crops[s.index] = _crop(image, s.box)
            return {"prediction": prediction, **extra}

        def ident(s: RegionCaption) -> dict[str, Any]:
            return {
                "index": s.index,
                "image": s.image_path.name,
                "bbox": box_to_xywh(s.box),
                "references": s.references,
            }

        records = await self._each("captioning", items, run, ident)
        ok = [r for r in records if "error" not in r]
        preds = [r["prediction"] for r in ok]
        refs = [r["references"] for r in ok]
        scores = {
            "bleu4": metrics.bleu4(preds, refs),
            "rouge_l": metrics.rouge_l(preds, refs),
            "bert_score": metrics.bert_score_f1(preds, refs, self.plan.bertscore_model),
            "clip_score": metrics.clip_score(
                [crops[r["index"]] for r in ok], preds, self.plan.clip_model
            ),
        }
        return _section(records, scores)

    # -- 2. grounding --------------------------------------------------------------------------

    async def grounding(self) -> dict[str, Any]:
        assert self.plan.referring is not None
        items = self.plan.referring[: self.plan.samples]

        async def run(s: Any) -> dict[str, Any]:
            image = await asyncio.to_thread(read_image, s.image_path)
            boxes = [g.box for g in await self.reasoner.ground(image, s.expression, one=True)]
            iou = metrics.iou_of_first(boxes, s.box)
            return {"predicted_box": _round_box(boxes[0] if boxes else None), "iou": round(iou, 4)}

        def ident(s: Any) -> dict[str, Any]:
            return {
                "index": s.index,
                "image": s.image_path.name,
                "expression": s.expression,
                "box": _round_box(s.box),
            }

        records = await self._each("grounding", items, run, ident)
        scores = metrics.grounding_scores([r["iou"] for r in records if "error" not in r])
        return _section(records, scores)

    # -- 3. hallucination ----------------------------------------------------------------------

    def _instances(self) -> list[Instance]:
        assert self.plan.coco is not None
        return self.plan.coco.instances(
            self.plan.images, self.plan.instance_filter, self.plan.samples
        )

    async def hallucination(self) -> dict[str, Any]:
        items = self._instances()

        async def run(s: Instance) -> dict[str, Any]:
            image, mask, extra = await self._region(s.image_path, s.mask, s.box)
            verdict: VerdictEvent | None = None
            async for event in self.reasoner.describe_verified(image, mask):
                if isinstance(event, VerdictEvent):
                    verdict = event
            assert verdict is not None
            if verdict.note or verdict.iou is None:
                # A request failed before the attempts ran out (never checked, or a retry that
                # might have corrected it): a failed sample, neither hallucinated nor corrected.
                raise VLMError(verdict.note or "the description was never checked")
            first_ok = verdict.verdict == "verified" and verdict.attempts == 1
            return {
                "mask_box": _round_box(mask_to_box(mask)),
                "attempt_texts": list(verdict.tried),
                "description": verdict.description,
                "verdict": verdict.verdict,
                "attempts": verdict.attempts,
                "iou": round(verdict.iou, 4),
                "grounded_box": _round_box(verdict.box),
                "hallucinated_first_attempt": not first_ok,
                "corrected": (not first_ok) and verdict.verdict == "verified",
                **extra,
            }

        def ident(s: Instance) -> dict[str, Any]:
            return {
                "image": s.image_path.name,
                "image_id": s.image_id,
                "ann_id": s.ann_id,
                "category": s.category,
            }

        records = await self._each("hallucination", items, run, ident)
        counts = metrics.hallucination_counts([r for r in records if "error" not in r])
        section = _section(records, counts.rates())
        section["counts"] = asdict(counts)
        return section

    # -- 4. time to first token ----------------------------------------------------------------

    async def ttft(self) -> dict[str, Any]:
        """Each step once stateless, then twice unchanged (the second is the cached figure).

        Sequential on purpose: concurrent requests would measure the server's queue, not a step.
        """
        if self.plan.coco is not None:
            regions = [(s.image_path, s.mask, s.box, s.category) for s in self._instances()]
        else:
            assert self.plan.captions is not None
            regions = [(s.image_path, s.mask, s.box, s.references[0]) for s in self.plan.captions]
        regions = regions[: self.plan.ttft_samples]
        stateless = self._metered(stateless=True)
        cached = self._metered(stateless=False)
        records: list[dict[str, Any]] = []
        for path, annotation_mask, box, fallback in tqdm(
            regions, desc="ttft", unit="sample", disable=not self.progress
        ):
            record: dict[str, Any] = {"image": path.name}
            try:
                image, mask, _ = await self._region(path, annotation_mask, box)
                phrase = fallback
                for name in TTFT_STEPS:
                    text = await _step(stateless, name, image, mask, phrase)
                    if name == "describe" and text:
                        phrase = text  # verify grounds what was described
                    record[f"{name}_stateless_ms"] = _last(stateless)
                    await _step(cached, name, image, mask, phrase)  # warms the prefix cache
                    await _step(cached, name, image, mask, phrase)
                    record[f"{name}_cached_ms"] = _last(cached)
            except (VLMError, DataError, ValueError) as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            records.append(record)
        ok = [r for r in records if "error" not in r]
        steps_out = {
            name: {
                "stateless_ms": metrics.median_ms(
                    [
                        r[f"{name}_stateless_ms"]
                        for r in ok
                        if r.get(f"{name}_stateless_ms") is not None
                    ]
                ),
                "cached_ms": metrics.median_ms(
                    [r[f"{name}_cached_ms"] for r in ok if r.get(f"{name}_cached_ms") is not None]
                ),
            }
            for name in TTFT_STEPS
        }
        return {
            "steps": steps_out,
            "samples": len(ok),
            "failed": len(records) - len(ok),
            "records": records,
        }

    def _metered(self, *, stateless: bool) -> Reasoner:
        r = copy.copy(self.reasoner)
        r.backend = MeteredBackend(self.reasoner.backend, stateless=stateless)
        return r

    # -- the whole run -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        p = self.plan
        report: dict[str, Any] = {
            "config": {
                "model": await _model_name(self.reasoner.backend),
                "server": getattr(self.reasoner.backend, "base_url", None),
                "verify_iou_threshold": self.reasoner.verify_iou_threshold,
                "verify_max_attempts": self.reasoner.max_attempts,
                "masks": p.masks,
                "samples": p.samples,
                "concurrency": p.concurrency,
            }
        }
        try:
            report["captioning"] = await self.captioning() if p.captions else _not_run("--captions")
            report["grounding"] = await self.grounding() if p.referring else _not_run("--referring")
            report["hallucination"] = await self.hallucination() if p.coco else _not_run("--coco")
            if p.ttft_samples <= 0:
                report["ttft"] = {"not_run": f"not run: skipped by --ttft-samples {p.ttft_samples}"}
            elif p.coco or p.captions:
                report["ttft"] = await self.ttft()
            else:
                report["ttft"] = _not_run("--coco or --captions")
        finally:
            self.masks.close()
        return report


async def _step(r: Reasoner, name: str, image: np.ndarray, mask: np.ndarray, phrase: str) -> str:
    """One pipeline step as the service runs it; the text it produced (boxes for verify)."""
    if name == "describe":
        return await r.description(image, mask)
    if name == "verify":
        return str([g.box for g in await r.ground(image, phrase, one=True)])
    return (await answer_text(r.chat(image, mask, [], CHAT_QUESTION))).strip()


def _last(r: Reasoner) -> float | None:
    value = r.backend.ttft_ms[-1]  # type: ignore[attr-defined]
    return None if value is None else round(value, 2)


def _not_run(flag: str) -> dict[str, Any]:
    return {"not_run": f"not run: no {flag} given"}


def _section(records: list[dict[str, Any]], scores: dict[str, metrics.Score]) -> dict[str, Any]:
    ok = sum(1 for r in records if "error" not in r)
    return {
        "metrics": {k: v.public() for k, v in scores.items()},
        "samples": ok,
        "failed": len(records) - ok,
        "records": records,
    }


def nothing_measured(report: dict[str, Any]) -> str | None:
    """Why a run measured nothing (no sample of any dimension that ran succeeded); None if it did.

    Such a report (the VLM unreachable, a wrong model name) is no result to keep: the caller says
    why and leaves any earlier report in place.
    """
    sections = [
        report[k]
        for k in ("captioning", "grounding", "hallucination", "ttft")
        if "not_run" not in report.get(k, {"not_run": ""})
    ]
    if any(s["samples"] for s in sections):
        return None
    errors = [r["error"] for s in sections for r in s["records"] if "error" in r]
    if not errors:
        return "no samples to evaluate: the input files hold none (after the filters)"
    distinct = list(dict.fromkeys(errors))
    shown = "; ".join(distinct[:3]) + (
        f"; and {len(distinct) - 3} more" if len(distinct) > 3 else ""
    )
    return f"all {len(errors)} samples failed: {shown}"


# -- the table ---------------------------------------------------------------------------------

_ROWS = [
    ("captioning", "bleu4", "Captioning", "BLEU-4", "{:.4f}"),
    ("captioning", "rouge_l", "Captioning", "ROUGE-L", "{:.4f}"),
    ("captioning", "bert_score", "Captioning", "BERT-Score (F1)", "{:.4f}"),
    ("captioning", "clip_score", "Captioning", "CLIP-Score", "{:.2f}"),
    ("grounding", "miou", "Grounding", "mIoU", "{:.4f}"),
    ("grounding", "acc", "Grounding", "Acc@0.5", "{:.2f}"),
    ("hallucination", "baseline", "Hallucination", "rate, one attempt", "pct"),
    ("hallucination", "verified", "Hallucination", "rate, with cycle verification", "pct"),
    ("hallucination", "correction", "Hallucination", "errors corrected", "pct"),
]


def _fmt(value: float, fmt: str) -> str:
    return f"{100.0 * value:.1f}%" if fmt == "pct" else fmt.format(value)


def _cell(report: dict[str, Any], section: str, key: str, fmt: str) -> tuple[str, str]:
    """(value or why not, samples) of one metric of one report."""
    sec = report.get(section, {})
    if "not_run" in sec:
        return sec["not_run"], ""
    m = sec["metrics"][key]
    value = _fmt(m["value"], fmt) if m["value"] is not None else m["reason"]
    return value, str(sec["samples"]) + (f" ({sec['failed']} failed)" if sec["failed"] else "")


def markdown_report(report: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """The seed's tables: metrics by dimension, then time to first token by pipeline step.

    With a `baseline` report (an earlier run's report.json, e.g. the base model before a
    fine-tune), the metrics table puts its values in a column beside this run's, as the seed does.
    """
    if baseline is None:
        lines = ["| dimension | metric | value | samples |", "| --- | --- | ---: | ---: |"]
    else:
        # Labelled by role, not by model alone: a fine-tune is often compared under the same name.
        def heading(role: str, run: dict[str, Any]) -> str:
            model = run.get("config", {}).get("model")
            return f"{role}: {model}" if model else role

        then, now = heading("baseline", baseline), heading("this run", report)
        lines = [
            f"| dimension | metric | {then} | {now} | samples |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
    for section, key, dim, name, fmt in _ROWS:
        value, n = _cell(report, section, key, fmt)
        if baseline is not None:
            value = f"{_cell(baseline, section, key, fmt)[0]} | {value}"
        lines.append(f"| {dim} | {name} | {value} | {n} |")
    ttft = report.get("ttft", {})
    lines += [
        "",
        "| pipeline step | TTFT stateless (ms) | TTFT cached (ms) | samples |",
        "| --- | ---: | ---: | ---: |",
    ]
    if "not_run" in ttft:
        lines.append(f"| all | {ttft['not_run']} | | |")
    else:
        n = str(ttft["samples"]) + (f" ({ttft['failed']} failed)" if ttft["failed"] else "")
        for name in TTFT_STEPS:
            s = ttft["steps"][name]
            lines.append(f"| {name} | {_na(s['stateless_ms'])} | {_na(s['cached_ms'])} | {n} |")
    return "\n".join(lines) + "\n"


def _na(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


async def evaluate(
    plan: EvalPlan, reasoner: Reasoner, *, sam2_model: Any = None, progress: bool = True
) -> dict[str, Any]:
    """Run the evaluation, then close the reasoner's backend."""
    try:
        return await Evaluation(plan, reasoner, sam2_model=sam2_model, progress=progress).run()
    finally:
        await reasoner.backend.aclose()


def write_report(
    report: dict[str, Any], out_dir: Path, baseline: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """report.json (every per-sample record) and report.md (the tables) in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(markdown_report(report, baseline))
    return json_path, md_path
