"""encode_image: SAM2's image features without the padded window tokens' work.

On a CPU the shortcut must give sam2's own forward_image features (up to float rounding), at sizes
where Hiera pads its windows (and where it does not), and it must really take the padded path
there. The cached position encodings must match for any batch size, call after call. On a GPU, or
compiled, the encoder is sam2's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from workers.vision import encoder, load_sam2
from workers.vision.encoder import encode_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _features(out: dict[str, Any]) -> list[torch.Tensor]:
    return [*out["backbone_fpn"], *out["vision_pos_enc"], out["vision_features"]]


def _counting(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    calls = 0
    original = encoder._padded_window_attention

    def wrapped(*args: Any) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return original(*args)

    monkeypatch.setattr(encoder, "_padded_window_attention", wrapped)
    return lambda: calls


# 128 and 160: stage 3 (window 14) and stage 4 (window 7) are padded; 448: neither is.
# At 160 stage 4 is 5 x 5: windows cut at 5 of 7 rows and columns.
@pytest.mark.parametrize(("image_size", "padded_blocks"), [(128, 5), (160, 5), (448, 0)])
def test_features_equal_forward_image(
    image_size: int, padded_blocks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_sam2(size="tiny", weights="random", device="cpu", image_size=image_size)
        images = torch.randn(
            2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)
        )
        padded = _counting(monkeypatch)
        with torch.inference_mode():
            theirs = model.forward_image(images)
            ours = encode_image(model, images)
    finally:
        torch.set_num_threads(threads)
    # blocks 4, 6, 8 (stage 3, windowed), 10 (stage 3 -> 4, with q pooling) and 11 (stage 4)
    assert padded() == padded_blocks
    for a, b in zip(_features(theirs), _features(ours), strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), float((a - b).abs().max())


def test_cached_positions_match_for_every_batch_size() -> None:
    model = load_sam2(size="tiny", weights="random", device="cpu", image_size=128)
    with torch.inference_mode():
        for batch in (1, 3, 1):
            images = torch.randn(batch, 3, 128, 128)
            theirs = model.forward_image(images)["vision_pos_enc"]
            ours = encode_image(model, images)["vision_pos_enc"]
            for a, b in zip(theirs, ours, strict=True):
                assert a.shape == b.shape
                assert torch.equal(a, b)


def test_pos_embed_cache_follows_the_weights() -> None:
    model = load_sam2(size="tiny", weights="random", device="cpu", image_size=128)
    image = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        before = encode_image(model, image)["vision_features"]
    with torch.no_grad():
        model.image_encoder.trunk.pos_embed.add_(1.0)  # e.g. weights loaded after a first use
    with torch.inference_mode():
        after = encode_image(model, image)["vision_features"]
        expected = model.forward_image(image)["vision_features"]
    assert not torch.allclose(before, after)
    assert torch.allclose(after, expected, atol=1e-5, rtol=1e-5)


def test_a_pooling_layout_it_does_not_handle_runs_sam2s_own_block() -> None:
    # block 1 pools queries at the 64 x 64 -> 32 x 32 stage change (windows of 8, unpadded);
    # with an average pool there, the shortcut must step aside rather than fail or differ
    model = load_sam2(size="tiny", weights="random", device="cpu", image_size=128)
    block = model.image_encoder.trunk.blocks[1]
    assert block.attn.q_pool is not None and block.window_size > 0
    block.attn.q_pool = torch.nn.AvgPool2d(kernel_size=2, stride=2)
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        theirs = model.forward_image(images)
        ours = encode_image(model, images)
    for a, b in zip(_features(theirs), _features(ours), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), float((a - b).abs().max())


@pytest.mark.parametrize("compiled", [False, True])
def test_on_a_gpu_or_compiled_the_encoder_is_sam2s_own(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The padding-aware trunk is for the CPU; a GPU (here a meta tensor stands for one) and a
    compiled encoder get sam2's forward_image, which is what torch.compile wrapped."""
    model = load_sam2(size="tiny", weights="random", device="cpu", image_size=128, compile=compiled)
    seen: list[str] = []
    monkeypatch.setattr(model, "forward_image", lambda images: seen.append(images.device.type))
    encode_image(model, torch.empty(1, 3, 128, 128, device="meta"))
    with torch.inference_mode():
        out = encode_image(model, torch.zeros(1, 3, 128, 128))
    if compiled:
        assert seen == ["meta", "cpu"]
    else:
        assert seen == ["meta"] and out["vision_features"].shape == (1, 256, 8, 8)
