"""Merge a LoRA adapter into its base model with peft and save a folder vLLM can serve.

The merged folder holds full weights (safetensors), the config, and the base model's processor or
tokenizer (and chat template), so `vllm serve <folder>` and the in-process transformers backend
load it as they load the base model. Vision-language bases (a config with a vision part) load
through AutoModelForImageTextToText, text-only ones through AutoModelForCausalLM.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

log = logging.getLogger("fmu.finetune")

DType = Literal["auto", "float32", "float16", "bfloat16"]


class MergeError(ValueError):
    """The base or the adapter cannot be merged; the message says why and what to do."""


def _adapter_base(adapter: Path) -> str | None:
    cfg = adapter / "adapter_config.json"
    if not cfg.is_file():
        raise MergeError(
            f"{adapter} is not a LoRA adapter folder (no adapter_config.json): pass the folder "
            "LLaMA-Factory (or peft's save_pretrained) wrote as output_dir"
        )
    try:
        data = json.loads(cfg.read_text())
    except ValueError as exc:
        raise MergeError(f"{cfg} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MergeError(
            f"{cfg} is not a LoRA adapter config (a JSON object with peft_type, r, ...), got a "
            f"{type(data).__name__}: pass the folder peft's save_pretrained wrote"
        )
    if data.get("peft_type", "LORA") != "LORA":
        raise MergeError(f"{adapter} holds a {data.get('peft_type')} adapter, not a LoRA one")
    return data.get("base_model_name_or_path")


def merge_lora(
    base: str, adapter: Path, out: Path, *, dtype: DType = "auto", device: str = "cpu"
) -> Path:
    """Merge `adapter` into `base` (a hub id or a local folder) and save the result to `out`."""
    import torch
    import transformers
    from peft import PeftModel

    adapter = Path(adapter)
    recorded = _adapter_base(adapter)
    if recorded and recorded != str(base) and Path(recorded).name != Path(str(base)).name:
        log.warning("the adapter was trained on %s, merging it into %s", recorded, base)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(f"{out} exists and is not empty: choose a new folder for the merged model")
    try:
        config = transformers.AutoConfig.from_pretrained(base)
    except OSError as exc:
        raise MergeError(f"cannot load the base model's config from {base}: {exc}") from None
    vision = getattr(config, "vision_config", None) is not None
    auto = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = auto.from_pretrained(base, dtype=torch_dtype).to(device)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    # What serving needs besides the weights: the processor (image + chat template) or tokenizer.
    try:
        transformers.AutoProcessor.from_pretrained(base).save_pretrained(out)
    except (OSError, ValueError, TypeError, KeyError):
        try:
            transformers.AutoTokenizer.from_pretrained(base).save_pretrained(out)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("no processor or tokenizer saved with the merged model: %s", exc)
    return out
