"""BERT-Score and CLIP-Score with local models: tiny ones built here from configs (random weights).

Random weights make the scores meaningless, but not arbitrary: BERT-Score of a sentence against
itself is exactly 1, and a CLIP score is 100 x a cosine, floored at 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from tokenizers.processors import TemplateProcessing  # noqa: E402

from workers.evaluation import metrics  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cup", "woman", "in", "an"]
WORDS += ["orange", "space", "suit", "of", "coffee", "zzz", "qqq"]


def _saved(model_class: Any, config: Any, preprocessor: Any, folder: Path) -> Path:
    """A model of `model_class` with seeded random weights and its preprocessor, saved in `folder`."""
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    preprocessor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bert")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )  # fmt: skip
    config = transformers.BertConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    return _saved(transformers.BertModel, config, tokenizer, folder)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    processor = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
    )
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        projection_dim=16,
    )  # fmt: skip
    return _saved(transformers.CLIPModel, config, processor, folder)


def test_bert_score_is_one_for_the_reference_itself(tiny_bert: Path) -> None:
    same = metrics.bert_score_f1(["a red cup"], [["zzz qqq", "a red cup"]], tiny_bert)
    assert same.value == pytest.approx(1.0, abs=1e-5)  # the best of the two references counts
    other = metrics.bert_score_f1(["zzz qqq"], [["a woman in an orange space suit"]], tiny_bert)
    assert other.value is not None and other.value < 0.999


def test_bert_score_pairs_each_prediction_with_its_own_references(tiny_bert: Path) -> None:
    # Pairs of different lengths: a batched call that mixed them up would score a prediction
    # against another pair's reference, and its figure would change with the order.
    predictions = ["a red cup", "a woman in an orange space suit", "zzz", "coffee in a red cup"]
    references = [["a red cup of coffee"], ["orange suit", "zzz"], ["a woman in space"], ["qqq"]]
    alone = [
        metrics.bert_score_f1([p], [r], tiny_bert).value
        for p, r in zip(predictions, references, strict=True)
    ]
    together = metrics.bert_score_f1(predictions, references, tiny_bert)
    assert together.value == pytest.approx(float(np.mean(alone)), abs=1e-6)
    reversed_order = metrics.bert_score_f1(predictions[::-1], references[::-1], tiny_bert)
    assert reversed_order.value == pytest.approx(together.value, abs=1e-6)


def test_clip_score_is_a_floored_scaled_cosine(tiny_clip: Path) -> None:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8) for _ in range(2)]
    score = metrics.clip_score(crops, ["a red cup", "zzz"], tiny_clip)
    assert score.value is not None and 0.0 <= score.value <= 100.0


def test_scores_without_a_model_say_why(tmp_path: Path) -> None:
    assert metrics.clip_score([], [], None).reason == (
        "not computed: no local model given (--clip-model PATH)"
    )
    missing = metrics.bert_score_f1(["a"], [["a"]], tmp_path)
    assert missing.value is None
    assert (
        missing.reason
        == f"not computed: {tmp_path} is not a local model folder (no config.json there)"
    )
