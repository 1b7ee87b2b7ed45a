"""SAM2's image encoder without the work its window padding wastes: same features, less compute.

Hiera attends within square windows (14 x 14 in stage 3 for every released size). A feature map
that is not a multiple of the window is zero-padded first: at 1024 px stage 3 is 64 x 64, padded
to 70 x 70 (20% more tokens); at 512 px 32 x 32 becomes 42 x 42 (72% more); at 256 px 16 x 16
becomes 28 x 28 (3x). sam2 then runs the qkv and output projections on every padded token.

A padded token is zero after the block's norm, so its q, k and v are exactly the qkv layer's
bias. encode_image therefore projects only the real tokens, fills the padding with that bias,
attends over the same windows as sam2 (padded keys included, so the softmax is unchanged),
crops, and only then applies the output projection (per token, so cropping first is exact).
The pos-embed interpolation, the same every frame, is computed once per size.

Everything else is sam2's own modules, called in sam2's order; tests/test_vision_encoder.py checks
the features against SAM2Base.forward_image.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import do_pool
from sam2.modeling.backbones.utils import window_partition, window_unpartition

_POS_EMBED: weakref.WeakKeyDictionary[Any, dict[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


def encode_image(model: Any, images: torch.Tensor) -> dict[str, Any]:
    """SAM2Base.forward_image(images): backbone features for a B x 3 x S x S normalised batch."""
    encoder = model.image_encoder
    features, pos = encoder.neck(_trunk(encoder.trunk, images))
    if encoder.scalp > 0:
        features, pos = features[: -encoder.scalp], pos[: -encoder.scalp]
    out = {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}
    if model.use_high_res_features_in_sam:
        out["backbone_fpn"][0] = model.sam_mask_decoder.conv_s0(out["backbone_fpn"][0])
        out["backbone_fpn"][1] = model.sam_mask_decoder.conv_s1(out["backbone_fpn"][1])
    return out


def _trunk(trunk: Any, images: torch.Tensor) -> list[torch.Tensor]:
    """Hiera.forward with the padding-aware block below."""
    x = trunk.patch_embed(images)
    x = x + _pos_embed(trunk, x.shape[1], x.shape[2])
    outputs = []
    for i, block in enumerate(trunk.blocks):
        x = _block(block, x)
        if i == trunk.stage_ends[-1] or (i in trunk.stage_ends and trunk.return_interm_layers):
            outputs.append(x.permute(0, 3, 1, 2))
    return outputs


def _pos_embed(trunk: Any, height: int, width: int) -> torch.Tensor:
    """trunk._get_pos_embed((height, width)), cached while the weights are unchanged."""
    key = (
        height,
        width,
        trunk.pos_embed.device,
        trunk.pos_embed._version,
        trunk.pos_embed_window._version,
    )
    cache = _POS_EMBED.setdefault(trunk, {})
    if key not in cache:
        cache.clear()
        cache[key] = trunk._get_pos_embed((height, width))
    return cache[key]


def _block(block: Any, x: torch.Tensor) -> torch.Tensor:
    """MultiScaleBlock.forward; windowed attention skips the padded tokens' projections."""
    window = block.window_size
    height, width = x.shape[1], x.shape[2]
    if window == 0 or (height % window == 0 and width % window == 0):
        return block(x)  # nothing padded: sam2's own forward
    shortcut = x
    x = block.norm1(x)
    if block.dim != block.dim_out:
        shortcut = do_pool(block.proj(x), block.pool)
    x = _padded_window_attention(block, x, shortcut.shape[1], shortcut.shape[2])
    x = shortcut + block.drop_path(x)
    return x + block.drop_path(block.mlp(block.norm2(x)))


def _padded_window_attention(block: Any, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """MultiScaleAttention over zero-padded windows, projecting the real tokens only."""
    attn = block.attn
    window = block.window_size
    batch, height, width, _ = x.shape
    qkv = attn.qkv(x)  # real tokens only
    padded_h = height + (window - height % window) % window
    padded_w = width + (window - width % window) % window
    bias = attn.qkv.bias if attn.qkv.bias is not None else qkv.new_zeros(qkv.shape[-1])
    full = bias.to(qkv.dtype).expand(batch, padded_h, padded_w, -1).clone()
    full[:, :height, :width] = qkv
    windows, _ = window_partition(full, window)  # already a multiple: no further padding
    n_windows = windows.shape[0]
    qkv = windows.reshape(n_windows, window * window, 3, attn.num_heads, -1)
    q, k, v = torch.unbind(qkv, 2)
    out_window = window
    if attn.q_pool:
        q = do_pool(q.reshape(n_windows, window, window, -1), attn.q_pool)
        out_window = q.shape[1]
        q = q.reshape(n_windows, out_window * out_window, attn.num_heads, -1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out.transpose(1, 2).reshape(n_windows, out_window, out_window, -1)
    pad_hw = (
        out_h + (out_window - out_h % out_window) % out_window,
        out_w + (out_window - out_w % out_window) % out_window,
    )
    out = window_unpartition(out, out_window, pad_hw, (out_h, out_w))
    return attn.proj(out)
