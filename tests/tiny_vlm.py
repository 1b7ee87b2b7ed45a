"""Tiny random-weight Qwen-VL models built here from a config (nothing downloaded), for the tests.

Random weights: the text is gibberish, but the code paths are the real ones: Qwen's chat template
shape, the real image processor, the vision tower, mrope. Two uses:

- `build(IN_PROCESS)` builds a very small one in memory (the in-process transformers backend's
  tests; `benchmarks/tiny_vlm.py` saves the same one for smoke runs of the offline commands);
- `saved_tiny_vlm(name)` saves one of the `FAMILIES` to a folder a real vLLM server can load,
  cached by a hash of everything that goes into it, so a second test session reuses it.

vLLM's CPU attention kernels refuse a head_dim of 16, so the models saved for vLLM use hidden 256
with 4 heads (head_dim 64) and mrope sections that add up to head_dim / 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen3's thinking markers are ordinary added tokens (not special): they survive detokenizing,
# and vLLM's qwen3 reasoning parser looks them up in the vocabulary.
THINK = ["<think>", "</think>"]

# Qwen's template, cut down to what our messages use: roles, text parts, image parts (as the
# transformers processor passes them, {"type": "image"}, and as OpenAI clients send them,
# {"type": "image_url"}).
_MESSAGES = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
)
CHAT_TEMPLATE = _MESSAGES + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
# Qwen3-VL-*-Thinking's template opens the answer with <think>: the model thinks first.
THINKING_CHAT_TEMPLATE = (
    _MESSAGES + "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)

_CORPUS = [
    "a red cup on a table",
    "describe the highlighted object",
    "the object is a small blue box made of plastic",
    'locate it: [{"bbox_2d": [10, 20, 110, 220], "label": "cup"}]',
]


def train_tokenizer(vocab_size: int = 300) -> Any:
    """A byte-level BPE tokenizer trained here on a few sentences, with Qwen's special tokens."""
    import transformers
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL[1:],
    )


@dataclass(frozen=True)
class TinyVLM:
    """Everything that decides one tiny model (its hash names the cache folder)."""

    family: str  # "qwen2_5_vl" | "qwen3_vl"
    text_hidden: int = 256
    text_heads: int = 4
    text_kv_heads: int = 2
    text_layers: int = 2
    mrope_section: tuple[int, int, int] = (8, 12, 12)
    vision_hidden: int = 128
    vision_heads: int = 2
    vision_depth: int = 2
    thinking: bool = False
    seed: int = 0
    image_processor: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)  # generation_config.json fields

    def key(self) -> str:
        import tokenizers
        import transformers

        blob = json.dumps(
            [asdict(self), _MESSAGES, _CORPUS, transformers.__version__, tokenizers.__version__],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Qwen2.5-VL-*-Instruct ships these sampling defaults, and vLLM applies a model's
# generation_config.json to every request that does not say otherwise: with top_k=1, a request
# that sends only a temperature is still greedy.
QWEN2_5_VL_GENERATION = dict(
    do_sample=True, top_k=1, top_p=0.001, temperature=0.1, repetition_penalty=1.05
)

# The models the real-vLLM tests serve, by the name the tests use.
FAMILIES: dict[str, TinyVLM] = {
    "qwen2.5-vl": TinyVLM("qwen2_5_vl", generation=QWEN2_5_VL_GENERATION),
    "qwen3-vl": TinyVLM("qwen3_vl"),
    "qwen3-vl-thinking": TinyVLM("qwen3_vl", thinking=True),
}


def _silence_special_tokens(model: Any, tokenizer: Any) -> None:
    # With random weights the end-of-turn token would come up by chance, ending an answer before
    # its first piece. A zero row gives it logit 0, and greedy decoding never picks it while any
    # of the ~300 random logits is positive; answers then run to max_tokens, as a test wants.
    import torch

    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL]
    with torch.no_grad():
        model.get_output_embeddings().weight[ids] = 0.0


def build(spec: TinyVLM) -> tuple[Any, Any]:
    """The model (eval mode, float32, seeded random weights) and its processor."""
    import torch
    import transformers

    tokenizer = train_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    head_dim = spec.text_hidden // spec.text_heads
    if sum(spec.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {spec.mrope_section} must add up to {head_dim // 2}")
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=8192,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.text_hidden,  # the merger feeds the text model
    )
    template = THINKING_CHAT_TEMPLATE if spec.thinking else CHAT_TEMPLATE
    if spec.family == "qwen2_5_vl":
        config = transformers.Qwen2_5_VLConfig(
            text_config=dict(
                text,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 1000000.0,
                    "mrope_section": list(spec.mrope_section),
                },
            ),
            vision_config=dict(
                vision, fullatt_block_indexes=[spec.vision_depth - 1], window_size=112
            ),
            tie_word_embeddings=False,
            **token_ids,
        )
        processor = transformers.Qwen2_5_VLProcessor(
            image_processor=transformers.Qwen2VLImageProcessor(**spec.image_processor),
            tokenizer=tokenizer,
            video_processor=transformers.Qwen2VLVideoProcessor(),
            chat_template=template,
        )
        model_cls: Any = transformers.Qwen2_5_VLForConditionalGeneration
    elif spec.family == "qwen3_vl":
        config = transformers.Qwen3VLConfig(
            text_config=dict(
                text,
                head_dim=head_dim,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 5000000.0,
                    "mrope_section": list(spec.mrope_section),
                    "mrope_interleaved": True,
                },
            ),
            vision_config=dict(vision, patch_size=16, deepstack_visual_indexes=[0]),
            tie_word_embeddings=False,
            **token_ids,
        )
        # Qwen3-VL's own preprocessor settings: 16 px patches, mean/std 0.5.
        image_kw: dict[str, Any] = dict(
            patch_size=16,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            size={"shortest_edge": 65536, "longest_edge": 16777216},
        )
        processor = transformers.Qwen3VLProcessor(
            image_processor=transformers.Qwen2VLImageProcessor(
                **{**image_kw, **spec.image_processor}
            ),
            tokenizer=tokenizer,
            video_processor=transformers.Qwen3VLVideoProcessor(),
            chat_template=template,
        )
        model_cls = transformers.Qwen3VLForConditionalGeneration
    else:
        raise ValueError(f"unknown tiny VLM family {spec.family!r}")
    torch.manual_seed(spec.seed)
    model = model_cls(config).eval()
    _silence_special_tokens(model, tokenizer)
    for name, value in spec.generation.items():
        setattr(model.generation_config, name, value)
    return model, processor


# Smaller than the ones served by vLLM (head_dim 16 is fine for transformers' own attention): the
# in-process transformers backend's tests, and benchmarks/tiny_vlm.py's smoke-run model.
IN_PROCESS = TinyVLM(
    "qwen2_5_vl",
    text_hidden=64,
    mrope_section=(2, 3, 3),
    vision_hidden=32,
    image_processor=dict(min_pixels=56 * 56, max_pixels=112 * 112),
)


def save(model: Any, processor: Any, folder: Path) -> Path:
    """Write a built model to `folder` as a hub folder (config, safetensors, processor, template)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    # Some loaders read the template from the tokenizer's config, others from the processor.
    processor.tokenizer.chat_template = processor.chat_template
    processor.tokenizer.save_pretrained(folder)
    return folder


def cache_root() -> Path:
    """Where saved tiny models live: $FMU_TEST_CACHE, else ~/.cache/fmu-live-tests."""
    env = os.environ.get("FMU_TEST_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fmu-live-tests"


def saved_tiny_vlm(name: str, root: Path | None = None) -> Path:
    """The folder holding FAMILIES[name], saved (config, safetensors, processor, chat template).

    Built on first use, then reused while nothing that goes into it changes. The folder appears
    whole or not at all (built beside it, then renamed), so an interrupted build is not reused.
    """
    spec = FAMILIES[name]
    root = root or cache_root()
    final = root / f"tiny-{name}-{spec.key()}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tiny-{name}-", dir=root))
    try:
        save(*build(spec), work)
        try:
            work.rename(final)
        except OSError:
            if not (final / "config.json").is_file():  # not a concurrent build winning the race
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
