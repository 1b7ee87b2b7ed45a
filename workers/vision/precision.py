"""The compute precision of SAM2 calls: fp32, or bf16 autocast where the hardware runs it natively.

`auto` picks bf16 on a CUDA GPU with native bf16 and on a CPU whose torch reports AMX-BF16 or
AVX512-BF16; anything else computes in fp32 (an AVX2 CPU has no bf16 arithmetic: oneDNN's bf16 kernels need
AVX512 or AMX, so torch falls back to its slow reference matmul and convolution, measured 9-18x
slower than fp32 on a 2-core AVX2 EPYC; benchmarks/RESULTS.md, Streaming peers).

bf16 is torch.autocast around the whole tracker step and image-mode call: matrix multiplies,
convolutions and attention run in bf16, while what decides a mask stays fp32: the logits are
cast to fp32 before they are upsampled and thresholded, RLE and boxes are made from the boolean
masks, and memory bookkeeping is frame indices (sam2 already stores every memory as bf16, in
either precision).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS = ("auto", "fp32", "bf16")

# The attribute load_sam2 sets on the model it returns: the precision the service asked for.
MODEL_ATTRIBUTE = "fmu_precision"


@dataclass(frozen=True)
class Precision:
    """A resolved precision: what the SAM2 calls compute in, and why (for the start-up log)."""

    name: str  # "fp32" | "bf16"
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32


def cpu_bf16_feature() -> str | None:
    """The CPU feature that gives torch native bf16 matrix multiplies, or None without one."""
    caps = _cpu_capabilities()
    for feature in ("amx_bf16", "avx512_bf16"):
        if caps.get(feature):
            return feature
    return None


def _cpu_capabilities() -> dict[str, Any]:
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is None:  # an older torch: no way to ask, so assume none
        return {}
    try:
        return dict(get())
    except Exception:  # a report, never a crash
        return {}


def _cuda_bf16(device: torch.device) -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older signature
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """Turn auto | fp32 | bf16 into the precision used on `device`, with the reason."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    device = torch.device(device)
    if device.type == "cuda":
        native = _cuda_bf16(device)
        where = "this GPU " + ("has native bf16" if native else "has no native bf16")
    elif device.type == "cpu":
        feature = cpu_bf16_feature()
        native = feature is not None
        if native:
            where = f"this CPU has {feature.upper().replace('_', '-')}"
        else:
            where = (
                "this CPU has neither AMX-BF16 nor AVX512-BF16 (torch reports "
                f"{torch.backends.cpu.get_cpu_capability()}), so bf16 would run on slow "
                "fallback kernels, many times slower than fp32"
            )
    else:  # mps and others: autocast support varies, fp32 is what sam2 is tested in
        native = False
        where = f"bf16 autocast is not used on {device.type}"
    if requested == "fp32":
        return Precision("fp32", "fp32 asked for")
    if requested == "bf16":
        if device.type not in ("cuda", "cpu"):
            raise ValueError(f"precision bf16 is supported on cuda and cpu, not {device.type}")
        return Precision("bf16", "bf16 asked for" + ("" if native else f"; note: {where}"))
    if native:
        return Precision("bf16", f"auto: {where}")
    return Precision("fp32", f"auto: {where}")


def model_precision(model: Any) -> Precision:
    """The precision a model was loaded with (load_sam2); the old rule for models built
    elsewhere: bf16 on CUDA, fp32 otherwise."""
    chosen = getattr(model, MODEL_ATTRIBUTE, None)
    if isinstance(chosen, Precision):
        return chosen
    if model.device.type == "cuda":
        return Precision("bf16", "default on CUDA")
    return Precision("fp32", "default off CUDA")


@contextlib.contextmanager
def compute_mode(device: torch.device, precision: Precision) -> Iterator[None]:
    """inference_mode, plus bf16 autocast on the device when the precision is bf16."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        if precision.name == "bf16":
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        yield
