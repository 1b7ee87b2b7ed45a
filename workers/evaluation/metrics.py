"""FMU-Agent's metrics: captioning scores, grounding IoU, hallucination and correction rates, TTFT.

Captioning uses maintained implementations: sacrebleu (BLEU-4, corpus level, its 13a tokenizer),
rouge-score (ROUGE-L F-measure, best reference per prediction, averaged), torchmetrics (BERT-Score)
and transformers' CLIPModel (CLIP-Score, 100 x cosine as torchmetrics defines it). The last two
need model weights: they run when a local model folder is given and are otherwise reported as not
computed, with the reason; nothing is ever estimated in their place.
Grounding IoU is workers.masks.box_iou, the function the service's verification uses.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.masks import Box, box_iou


@dataclass(frozen=True)
class Score:
    """A metric's value, or why it was not computed (value None)."""

    value: float | None
    reason: str = ""

    def public(self) -> dict[str, Any]:
        return (
            {"value": self.value}
            if self.value is not None
            else {"value": None, "reason": self.reason}
        )


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Score:
    """Corpus BLEU-4 in [0, 1] (sacrebleu reports 0..100)."""
    import sacrebleu

    if not predictions:
        return Score(None, "no predictions")
    depth = max(len(r) for r in references)
    # sacrebleu wants one stream per reference position; missing references are None.
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(depth)]
    return Score(sacrebleu.corpus_bleu(list(predictions), streams).score / 100.0)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Score:
    """Mean over predictions of the best ROUGE-L F-measure against its references."""
    from rouge_score import rouge_scorer

    if not predictions:
        return Score(None, "no predictions")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    best = [
        max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs)
        for pred, refs in zip(predictions, references, strict=True)
    ]
    return Score(float(np.mean(best)))


# The files transformers reads a model's weights from: one file, or the index of its shards.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def model_folder_problem(path: str | Path) -> str | None:
    """Why `path` is no local model folder whose weights transformers can load (none there, no
    config.json, or a config without weights); None when it is one. `fmu-live eval` refuses such
    a --bertscore-model or --clip-model before any work; a score given one is not computed."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        there = " (no config.json there)" if folder.is_dir() else " (no such folder)"
        return f"{path} is not a local model folder{there}"
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return (
            f"{path} has a config.json but no weights (none of {', '.join(WEIGHT_FILES)}): "
            "download the whole model into it, not its config alone"
        )
    return None


def _load_errors() -> tuple[type[Exception], ...]:
    """What transformers raises on a model folder it cannot load (a tokenizer, processor or
    weights file missing or damaged, a config of another model type)."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError)


def _why_not_computed(path: str | Path | None, flag: str, predictions: Sequence[Any]) -> str:
    """Why a score that needs the local model at `path` (given with `flag`) cannot be computed
    for these predictions; "" when it can."""
    if not path:
        return f"not computed: no local model given ({flag} PATH)"
    if problem := model_folder_problem(path):
        return f"not computed: {problem}"
    if not predictions:
        return "no predictions"
    return ""


def _not_loaded(path: Path, exc: Exception) -> Score:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return Score(
        None, f"not computed: cannot load the model at {path} ({type(exc).__name__}: {first})"
    )


def bert_score_f1(
    predictions: Sequence[str], references: Sequence[Sequence[str]], model_path: str | Path | None
) -> Score:
    """Mean BERT-Score F1 (best reference) with a local encoder model, via torchmetrics."""
    if why := _why_not_computed(model_path, "--bertscore-model", predictions):
        return Score(None, why)
    path = Path(str(model_path))
    from torchmetrics.functional.text.bert import bert_score
    from transformers import AutoModel, AutoTokenizer

    # The model is loaded once, then each (prediction, reference) pair is scored in a call of its
    # own: torchmetrics 1.9 sorts a batch's predictions and references by length separately and
    # puts them back with the wrong permutation, so in one batched call a prediction is scored
    # against another pair's reference.
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path))
    except _load_errors() as exc:
        return _not_loaded(path, exc)

    def f1(prediction: str, reference: str) -> float:
        out = bert_score([prediction], [reference], model=model, user_tokenizer=tokenizer)
        return float(np.asarray(out["f1"], dtype=float).reshape(-1)[0])

    best = [max(f1(p, r) for r in refs) for p, refs in zip(predictions, references, strict=True)]
    return Score(float(np.mean(best)))


def clip_score(
    crops: Sequence[np.ndarray], predictions: Sequence[str], model_path: str | Path | None
) -> Score:
    """Mean CLIP-Score (100 x cosine, floored at 0) of each region crop and its description."""
    if why := _why_not_computed(model_path, "--clip-model", predictions):
        return Score(None, why)
    path = Path(str(model_path))
    import torch
    from transformers import CLIPModel, CLIPProcessor

    # CLIPModel itself, not torchmetrics' clip_score: that one reads get_image_features as a
    # tensor, which transformers 5 no longer returns. Same definition: 100 * max(cos, 0).
    try:
        model = CLIPModel.from_pretrained(str(path)).eval()
        processor = CLIPProcessor.from_pretrained(str(path))
    except _load_errors() as exc:
        return _not_loaded(path, exc)
    limit = model.config.text_config.max_position_embeddings
    scores = []
    with torch.inference_mode():
        for crop, text in zip(crops, predictions, strict=True):
            inputs = processor(
                text=[text], images=[crop], return_tensors="pt",
                padding=True, truncation=True, max_length=limit,
            )  # fmt: skip
            out = model(**inputs)  # image_embeds and text_embeds come out L2-normalised
            cos = float((out.image_embeds * out.text_embeds).sum())
            scores.append(100.0 * max(cos, 0.0))
    return Score(float(np.mean(scores)))


def grounding_scores(ious: Sequence[float], threshold: float = 0.5) -> dict[str, Score]:
    """mIoU and Acc@threshold over per-sample IoUs (a missing box counts as IoU 0)."""
    if not ious:
        return {"miou": Score(None, "no samples"), "acc": Score(None, "no samples")}
    return {
        "miou": Score(float(np.mean(ious))),
        "acc": Score(float(np.mean([i >= threshold for i in ious]))),
    }


def iou_of_first(boxes: Sequence[Box], target: Box) -> float:
    """IoU of the model's first box with the target; 0.0 when it gave none."""
    return box_iou(boxes[0], target) if boxes else 0.0


@dataclass(frozen=True)
class HallucinationCounts:
    """One run over instances: hallucinated on the first attempt, after retries, and fixed."""

    samples: int
    first_attempt: int
    after_retries: int
    corrected: int

    def rates(self) -> dict[str, Score]:
        n = self.samples
        none = Score(None, "no samples")
        return {
            "baseline": Score(self.first_attempt / n) if n else none,
            "verified": Score(self.after_retries / n) if n else none,
            "correction": Score(self.corrected / self.first_attempt)
            if self.first_attempt
            else Score(None, "no hallucinations on the first attempt to correct"),
        }


def hallucination_counts(records: Sequence[dict[str, Any]]) -> HallucinationCounts:
    """Counts from per-instance records with `verdict` and `attempts` (the service's verdicts).

    The first attempt was a hallucination unless it was verified at once (attempts == 1); the
    verified run's hallucinations are what stayed unverified after the retries; a correction is a
    first-attempt hallucination that a retry verified.
    """
    first = sum(1 for r in records if not (r["verdict"] == "verified" and r["attempts"] == 1))
    after = sum(1 for r in records if r["verdict"] != "verified")
    return HallucinationCounts(len(records), first, after, first - after)


def median_ms(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None
