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
from typing import Any, Literal

log = logging.getLogger("fmu.finetune")

DType = Literal["auto", "float32", "float16", "bfloat16"]
# A local base model's weights, whole or sharded (transformers' names).
BASE_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what peft loads


class MergeError(ValueError):
    """The base or the adapter cannot be merged; the message says why and what to do, `option`
    which of merge-lora's options holds what is wrong (None: no one option, or not known)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def _adapter_base(adapter: Path) -> str | None:
    cfg = adapter / "adapter_config.json"
    if not cfg.is_file():
        raise MergeError(
            f"{adapter} is not a LoRA adapter folder (no adapter_config.json): pass the folder "
            "LLaMA-Factory (or peft's save_pretrained) wrote as output_dir",
            "--adapter",
        )
    try:
        data = json.loads(cfg.read_text())
    except ValueError as exc:
        raise MergeError(f"{cfg} is not valid JSON: {exc}", "--adapter") from None
    if not isinstance(data, dict):
        raise MergeError(
            f"{cfg} is not a LoRA adapter config (a JSON object with peft_type, r, ...), got a "
            f"{type(data).__name__}: pass the folder peft's save_pretrained wrote",
            "--adapter",
        )
    if data.get("peft_type", "LORA") != "LORA":
        raise MergeError(
            f"{adapter} holds a {data.get('peft_type')} adapter, not a LoRA one", "--adapter"
        )
    return data.get("base_model_name_or_path")


def check_merge(base: str, adapter: Path, out: Path) -> Any:
    """The base model's config, once `adapter` is found a LoRA adapter and `out` new or empty:
    what merge-lora's arguments must be, checked before any weights are read (MergeError naming
    the option otherwise)."""
    import transformers

    _adapter_base(Path(adapter))
    if not any((Path(adapter) / name).is_file() for name in ADAPTER_WEIGHTS):
        raise MergeError(
            f"{adapter} has an adapter_config.json but no adapter weights (none of "
            f"{', '.join(ADAPTER_WEIGHTS)}): pass the folder training saved the adapter to",
            "--adapter",
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(
            f"{out} exists and is not empty: choose a new folder for the merged model", "--out"
        )
    try:
        config = transformers.AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise MergeError(
            f"cannot load the base model's config from {base}: {exc}", "--base"
        ) from None
    if Path(base).is_dir() and not any((Path(base) / n).is_file() for n in BASE_WEIGHTS):
        raise MergeError(
            f"{base} has a config.json but no model weights (none of {', '.join(BASE_WEIGHTS)}): "
            "pass the base model's whole folder, as downloaded or saved",
            "--base",
        )
    return config


def _mismatch(base: str, adapter: Path, recorded: str | None, exc: Exception) -> MergeError:
    """The adapter does not fit the base: peft found none of its target modules there, or a
    weight of another shape (torch lists every one; the first says enough)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next(
        (line for line in lines if line.startswith("size mismatch")), lines[0] if lines else ""
    )
    trained = f" (it was trained on {recorded})" if recorded else ""
    detail = detail.split(". ")[0].rstrip(".")  # peft adds "Please check ... and try again."
    return MergeError(
        f"the LoRA adapter {adapter} does not fit the base model {base}{trained}: {detail}; pass "
        "as --base the model the adapter was trained on"
    )


def _local_model_type(name: str) -> str | None:
    """The model type in the config of the adapter's recorded base, where that is a folder here
    (a hub id is not fetched for it: None, as for a folder that is gone or unreadable)."""
    try:
        data = json.loads((Path(name) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    kind = data.get("model_type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def merge_lora(
    base: str, adapter: Path, out: Path, *, dtype: DType = "auto", device: str = "cpu"
) -> Path:
    """Merge `adapter` into `base` (a hub id or a local folder) and save the result to `out`."""
    import torch
    import transformers
    from peft import PeftModel
    from peft.utils.error import NoMatchingPeftModuleError

    adapter, out = Path(adapter), Path(out)
    config = check_merge(base, adapter, out)
    recorded = _adapter_base(adapter)
    if recorded and recorded != str(base) and Path(recorded).name != Path(str(base)).name:
        trained_type = _local_model_type(recorded)
        if trained_type is not None and trained_type != config.model_type:
            # Another architecture whose layers happen to have the adapter's names and shapes
            # merges without an error from peft or torch, into a model that answers garbage.
            raise MergeError(
                f"the LoRA adapter {adapter} does not fit the base model {base} (it was trained "
                f"on {recorded}): that is a {trained_type} model, this a {config.model_type} "
                "one; pass as --base the model the adapter was trained on"
            )
        log.warning("the adapter was trained on %s, merging it into %s", recorded, base)
    vision = getattr(config, "vision_config", None) is not None
    auto = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = auto.from_pretrained(base, dtype=torch_dtype).to(device)
    try:
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except NoMatchingPeftModuleError as exc:  # no module of the base is one the adapter targets
        raise _mismatch(base, adapter, recorded, exc) from None
    except RuntimeError as exc:  # torch: a weight of the adapter has another shape than the base's
        if "size mismatch" not in str(exc):
            raise
        raise _mismatch(base, adapter, recorded, exc) from None
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
