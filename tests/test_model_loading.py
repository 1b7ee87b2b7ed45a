"""load_sam2: random weights run; bad checkpoints, names and no network fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers.vision import SAM2LoadError, load_sam2

ADVICE = "pass --weights /path/to/sam2.1_hiera_tiny.pt, or --weights random for a smoke run"


def test_random_weights_run_a_forward_pass() -> None:
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    model = load_sam2(size="tiny", weights="random", device="cpu", image_size=64, seed=0)
    assert isinstance(model, SAM2VideoPredictor)
    assert model.image_size == 64 and not model.training
    with torch.inference_mode():
        out = model.forward_image(torch.zeros(1, 3, 64, 64))
    # three feature levels at strides 4, 8 and 16, with 256 channels
    assert [tuple(f.shape[-2:]) for f in out["backbone_fpn"]] == [(16, 16), (8, 8), (4, 4)]


def test_random_weights_are_seeded() -> None:
    def first_weights(seed: int) -> torch.Tensor:
        model = load_sam2(size="tiny", weights="random", device="cpu", image_size=64, seed=seed)
        return model.maskmem_tpos_enc.detach().clone()

    assert torch.equal(first_weights(3), first_weights(3))
    assert not torch.equal(first_weights(3), first_weights(4))


def test_missing_checkpoint_path_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(SAM2LoadError, match="no SAM2 checkpoint at") as info:
        load_sam2(size="tiny", weights=str(missing), device="cpu")
    assert ADVICE in str(info.value)


def test_a_file_that_is_not_a_checkpoint_fails_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SAM2LoadError, match="is not a SAM2.1 hiera-tiny checkpoint"):
        load_sam2(size="tiny", weights=str(junk), device="cpu", image_size=64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": "huge"}, "unknown SAM2 size 'huge': use one of tiny, small, base-plus, large"),
        ({"image_size": 100}, "image_size must be a multiple of 32"),  # not a multiple of 32
        ({"image_size": 0}, "image_size must be a multiple of 32"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_bad_names_say_what_is_allowed(kwargs: dict, message: str) -> None:
    args = {"size": "tiny", "weights": "random", "device": "cpu", "image_size": 64} | kwargs
    with pytest.raises(SAM2LoadError, match=message):
        load_sam2(**args)


def test_hf_download_offline_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # an empty cache, so a checkpoint cached on this machine cannot make the load succeed
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        SAM2LoadError, match="could not download facebook/sam2.1-hiera-tiny"
    ) as info:
        load_sam2(size="tiny", weights="hf", device="cpu")
    assert ADVICE in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no traceback wall


def test_auto_device_picks_what_torch_has() -> None:
    model = load_sam2(size="tiny", weights="random", device="auto", image_size=64)
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
