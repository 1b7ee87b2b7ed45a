"""Loading SAM2 (Hugging Face hub, local checkpoint or seeded random weights) as a video predictor.

Every path returns sam2's own `SAM2VideoPredictor` built by `sam2.build_sam`, so the official
predictor and our StreamTracker / ImageSegmenter can run on the very same weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from workers.vision.encoder import COMPILED_ATTRIBUTE
from workers.vision.precision import MODEL_ATTRIBUTE, Precision, resolve_precision

# The sam2.1 configs shipped inside the sam2 package, by model size.
SIZES: dict[str, str] = {"tiny": "t", "small": "s", "base-plus": "b+", "large": "l"}
DEVICES = ("auto", "cpu", "cuda", "mps")
_WHAT_TO_DO = (
    "pass --weights /path/to/sam2.1_hiera_{size_file}.pt, or --weights random for a smoke run "
    "(masks are meaningless)"
)


class SAM2LoadError(ValueError):
    """SAM2 could not be loaded; the message says what was wrong and what to do, `option` which
    of the commands' options holds what is wrong (None: no one option)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def _hf_model_id(size: str) -> str:
    return f"facebook/sam2.1-hiera-{size}"


def _config_name(size: str) -> str:
    return f"configs/sam2.1/sam2.1_hiera_{SIZES[size]}.yaml"


def _what_to_do(size: str) -> str:
    return _WHAT_TO_DO.format(size_file=size.replace("-", "_"))


def resolve_device(device: str) -> torch.device:
    """The torch device `device` names ("auto": a CUDA GPU if torch sees one, else the CPU), or
    SAM2LoadError saying what to use instead: checked before any model is read."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise SAM2LoadError(
            f"unknown device {device!r}: use one of {', '.join(DEVICES)} or cuda:N", "--device"
        )
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SAM2LoadError(
            f"device {device!r} asked for, but torch sees no CUDA GPU: use cpu", "--device"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise SAM2LoadError(
            "device 'mps' asked for, but torch sees no MPS device: use cpu", "--device"
        )
    return torch.device(device)


def _check_image_size(image_size: int) -> None:
    # Hiera pools the stride-4 patch grid three times and the FPN adds the levels back up, so
    # every level must divide evenly: the input side has to be a multiple of 32.
    if not isinstance(image_size, int) or image_size < 32 or image_size % 32:
        raise SAM2LoadError(
            f"image_size must be a multiple of 32 (32, 64, ..., 1024), got {image_size!r}; "
            "the released checkpoints are trained at 1024",
            "--sam2-image-size",
        )


def _download_checkpoint(size: str) -> str:
    """Fetch the sam2.1 checkpoint the way sam2.build_sam._hf_download does."""
    from huggingface_hub import hf_hub_download
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    model_id = _hf_model_id(size)
    _, filename = HF_MODEL_ID_TO_FILENAMES[model_id]
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it again here so a process that
    # turns it on later (tests, a supervisor) gets the cache-only behaviour it asked for.
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        return hf_hub_download(repo_id=model_id, filename=filename, local_files_only=offline)
    except Exception as exc:  # noqa: BLE001 - every download failure gets the same advice
        from huggingface_hub.errors import LocalEntryNotFoundError

        if offline:
            why = "HF_HUB_OFFLINE is set and it is not in the local cache"
        elif isinstance(exc, LocalEntryNotFoundError):  # what no network looks like
            why = "the hub cannot be reached and it is not in the local cache"
        else:
            why = f"{type(exc).__name__}: {_first_line(exc) or 'no detail'}"
        raise SAM2LoadError(
            f"could not download {model_id}/{filename} ({why}): {_what_to_do(size)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else ""


def _hydra_overrides(image_size: int) -> list[str]:
    # Memory attention's RoPE tables are sized from the config (64x64 for 1024); size them for
    # the actual feature grid so they are built once here, not rebuilt inside the first frame.
    side = image_size // 16
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{side},{side}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{side},{side}]",
    ]


def check_sam2(
    size: str, weights: str, device: str, image_size: int, precision: str
) -> tuple[torch.device, Precision]:
    """The device and precision SAM2 would run on, once what load_sam2 is given is found usable
    without reading any weights (SAM2LoadError naming the option otherwise): the commands check
    it before their other work, so a typo in --weights is not found after the clips are read."""
    if size not in SIZES:
        raise SAM2LoadError(
            f"unknown SAM2 size {size!r}: use one of {', '.join(SIZES)}", "--sam2-size"
        )
    _check_image_size(image_size)
    torch_device = resolve_device(device)
    try:
        chosen = resolve_precision(precision, torch_device)
    except ValueError as exc:
        raise SAM2LoadError(str(exc), "--precision") from None
    if weights not in ("random", "hf"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise SAM2LoadError(
                f"no SAM2 checkpoint at {str(path)!r}: {_what_to_do(size)}", "--weights"
            )
    return torch_device, chosen


def load_sam2(
    size: str = "tiny",
    weights: str = "hf",
    device: str = "auto",
    image_size: int = 1024,
    seed: int = 0,
    compile: bool = False,
    precision: str = "auto",
):  # -> sam2.sam2_video_predictor.SAM2VideoPredictor (kept untyped: sam2 imports hydra)
    """Build SAM2.1 as sam2's own SAM2VideoPredictor, in eval mode on `device`.

    size: tiny | small | base-plus | large. weights: "hf" (download facebook/sam2.1-hiera-<size>),
    "random" (seeded, built from sam2's config: real compute, meaningless masks), or a path to a
    .pt checkpoint. image_size: model input side, a multiple of 32. device: auto | cpu | cuda[:N]
    | mps ("auto" picks cuda when available). compile=True wraps the image encoder and memory
    attention in torch.compile (slow first frames, faster after). precision: auto | fp32 | bf16,
    what trackers and image segmenters on this model compute in unless told otherwise (see
    precision.py; the model's `fmu_precision` says what was chosen and why). Raises SAM2LoadError.
    """
    torch_device, chosen = check_sam2(size, weights, device, image_size, precision)
    if weights == "random":
        ckpt_path = None
    elif weights == "hf":
        ckpt_path = _download_checkpoint(size)
    else:
        ckpt_path = str(Path(weights).expanduser())

    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(seed)  # the random init (trunc_normal_ etc.) draws from the global RNG
    try:
        model = build_sam2_video_predictor(
            _config_name(size),
            ckpt_path=ckpt_path,
            device=str(torch_device),
            hydra_overrides_extra=_hydra_overrides(image_size),
        )
    except Exception as exc:  # noqa: BLE001 - unpickling, key mismatch, truncation: one message
        if ckpt_path is None:
            raise
        # sam2's loader logs the mismatched keys and raises a bare RuntimeError
        raise SAM2LoadError(
            f"{ckpt_path!r} is not a SAM2.1 hiera-{size} checkpoint "
            f"({type(exc).__name__}: {_first_line(exc) or 'state dict keys do not match'}): "
            f"check --sam2-size matches the checkpoint, or {_what_to_do(size)}"
        ) from None
    if compile:
        model.image_encoder.forward = torch.compile(model.image_encoder.forward, dynamic=False)
        setattr(model, COMPILED_ATTRIBUTE, True)  # encode_image then calls it
        model.memory_attention.forward = torch.compile(model.memory_attention.forward)
    setattr(model, MODEL_ATTRIBUTE, chosen)
    return model
