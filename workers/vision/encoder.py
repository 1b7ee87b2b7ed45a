"""SAM2's image encoder without the work its window padding wastes: same features, less compute.

Hiera attends within square windows (14 x 14 in stage 3 for every released size). A feature map
that is not a multiple of the window is zero-padded first: at 1024 px stage 3 is 64 x 64, padded
to 70 x 70 (20% more tokens); at 512 px 32 x 32 becomes 42 x 42 (72% more); at 256 px 16 x 16
becomes 28 x 28 (3x). sam2 then projects, queries and attends from every padded token.

A padded token is zero after the block's norm, so its q, k and v are exactly the qkv layer's
bias, and the output at padded positions is cropped away. encode_image therefore projects only
the real tokens, queries only from real positions, and lets each window's padded tokens, all
with the same key and value, enter its softmax as one key weighted by their number: the same
attention, without the padding's work. The output projection is per token, so it runs after the
crop. The pos-embed interpolation and the neck's position encodings, the same every frame, are
made once per size.

Everything else is sam2's own modules, called in sam2's order; tests/test_vision_encoder.py checks
the features against SAM2Base.forward_image. This is the CPU's encoder: on a GPU, or compiled,
encode_image hands the frame to sam2's own forward_image (why: encode_image).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import do_pool
from sam2.modeling.backbones.utils import window_partition, window_unpartition

from workers.vision.batching import ModelView

_POSITIONS: weakref.WeakKeyDictionary[Any, dict[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()
_POS_EMBED: weakref.WeakKeyDictionary[Any, dict[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


# Set on a model whose image encoder load_sam2 wrapped in torch.compile.
COMPILED_ATTRIBUTE = "fmu_compiled_encoder"


def encode_image(model: Any, images: torch.Tensor) -> dict[str, Any]:
    """SAM2Base.forward_image(images): backbone features for a B x 3 x S x S normalised batch.

    The padding-aware trunk below is for the CPU, where the padded tokens' arithmetic is the
    cost. On a GPU the cost is launching kernels, and sam2's own forward_image is faster (one
    H200, 1024 px, bf16: 6.2 ms against 9.1 ms); a compiled encoder is sam2's own too (it is what
    torch.compile wrapped). Both get sam2's forward_image.
    """
    if images.device.type != "cpu" or getattr(model, COMPILED_ATTRIBUTE, False):
        return model.forward_image(images)
    return padding_aware_features(model, images)


def padding_aware_features(model: Any, images: torch.Tensor) -> dict[str, Any]:
    """forward_image's features, the padded window tokens' work left out (the module docstring)."""
    encoder = model.image_encoder
    features, pos = _neck(encoder.neck, _trunk(encoder.trunk, images))
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


def _neck(neck: Any, levels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """FpnNeck.forward, with its position encodings (constants of the map size) made once.

    sam2 caches the sine encoding but hands back a fresh channels-first copy of it on every call:
    at 256 px that copy is 7 ms of a 150 ms encode. The cached tensor is handed out as is, to
    every frame: sam2 only ever reads vision_pos_enc (it adds, flattens and expands it).
    """
    view = ModelView(neck, position_encoding=_Positions(neck.position_encoding))
    return type(neck).forward(view, levels)


class _Positions:
    """A position-encoding module, cached per input shape, dtype and device."""

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cache = _POSITIONS.setdefault(self.encoding, {})
        key = (x.shape[0], *x.shape[2:], x.dtype, x.device)
        if key not in cache:
            cache[key] = self.encoding(x).to(x.dtype).contiguous()
        return cache[key]


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
    """MultiScaleBlock.forward, with padded windows' work skipped and no needless copies.

    The residual adds and the MLP's activation write into tensors the block has just made, so
    the large intermediates (1.5 M values each at 256 px) are not allocated twice: on a CPU that
    memory traffic costs as much as the arithmetic around it. Sums are the same either way round.
    """
    window = block.window_size
    height, width = x.shape[1], x.shape[2]
    stride = _pool_stride(block.attn.q_pool)
    if window > 0 and (stride is None or window % stride != 0):
        return block(x)  # a pooling layout not handled here: sam2's own forward
    padded = window > 0 and (height % window != 0 or width % window != 0)
    shortcut = x  # the block's input may be a stage output the trunk returns: never written
    x = block.norm1(x)
    if block.dim != block.dim_out:
        shortcut = do_pool(block.proj(x), block.pool)
    if padded:
        x = _padded_window_attention(block, x, shortcut.shape[1], shortcut.shape[2])
    elif window > 0:
        windows, _ = window_partition(x, window)  # a multiple of the window: no padding
        out_window = window // stride
        x = window_unpartition(
            block.attn(windows), out_window, shortcut.shape[1:3], shortcut.shape[1:3]
        )
    else:
        x = block.attn(x)
    x = _add_(x, block.drop_path, shortcut)
    return _add_(_mlp(block.mlp, block.norm2(x)), block.drop_path, x)


def _add_(fresh: torch.Tensor, drop_path: Any, other: torch.Tensor) -> torch.Tensor:
    """other + drop_path(fresh), written into fresh (made by the caller, not shared)."""
    if not isinstance(drop_path, torch.nn.Identity) or other.dtype != fresh.dtype:
        # under bf16 autocast a block's output is bf16 and its residual fp32: sam2's sum keeps
        # the residual stream in fp32, and so must this (in place would round it to bf16)
        return other + drop_path(fresh)
    return fresh.add_(other)


def _mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    """sam2's MLP.forward with the activation applied in place."""
    last = len(mlp.layers) - 1
    for i, layer in enumerate(mlp.layers):
        x = layer(x)
        if i < last:
            x = _activate_(mlp.act, x)
    return torch.sigmoid(x) if mlp.sigmoid_output else x


def _activate_(act: Any, x: torch.Tensor) -> torch.Tensor:
    """act(x), in place where act is GELU or ReLU."""
    if type(act) is torch.nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    if type(act) is torch.nn.ReLU:
        return x.relu_()
    return act(x)


def _pool_stride(pool: Any) -> int | None:
    """The square stride of a q-pooling layer (1 without one); None for any other layout."""
    if pool is None:
        return 1
    kernel, stride = pool.kernel_size, pool.stride
    if (
        not isinstance(pool, torch.nn.MaxPool2d)
        or kernel != stride
        or pool.padding not in (0, (0, 0))
    ):
        return None
    if isinstance(stride, tuple):
        return stride[0] if len(set(stride)) == 1 else None
    return stride


def _padded_window_attention(block: Any, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """MultiScaleAttention over zero-padded windows, without the padded tokens' work.

    Only real tokens are projected, and only real (output) positions are queried. A window's
    padded tokens all have the same key and value (the qkv bias), so they enter its softmax as
    one key whose logit carries + log(number of padded tokens): exp(l + log n) = n exp(l).
    Windows are grouped by how much of them is real (whole, cut at the right, at the bottom, in
    the corner), one attention call per group.
    """
    attn = block.attn
    window, heads = block.window_size, attn.num_heads
    stride = _pool_stride(attn.q_pool)
    batch, height, width, _ = x.shape
    qkv = attn.qkv(x)  # real tokens only
    channels = qkv.shape[-1] // 3
    head_dim = channels // heads
    qkv = qkv.view(batch, height, width, 3, heads, head_dim)
    q = qkv[..., 0, :, :]
    if attn.q_pool:  # pooling never mixes windows (window % stride == 0), so pool the whole map
        q = do_pool(q.reshape(batch, height, width, channels), attn.q_pool)
        q = q.reshape(batch, q.shape[1], q.shape[2], heads, head_dim)
    bias = attn.qkv.bias if attn.qkv.bias is not None else qkv.new_zeros(3 * channels)
    pad_kv = bias.to(qkv.dtype).view(3, heads, 1, head_dim)[1:]  # the padded tokens' k and v
    out = qkv.new_empty(batch, out_h, out_w, channels)
    for rows in _spans(height, out_h, window, stride):
        for cols in _spans(width, out_w, window, stride):
            _attend_windows(qkv, q, pad_kv, out, rows, cols, window)
    return attn.proj(out)


def _spans(
    size: int, out_size: int, window: int, stride: int
) -> list[tuple[int, int, int, int, int]]:
    """Along one axis, the windows that share a real extent: (start, real length, count, output
    start, output length) for the whole windows, then for the cut last one (if it has output)."""
    whole, out_window = size // window, window // stride
    spans = [(0, window, whole, 0, out_window)] if whole else []
    rest, out_rest = size - whole * window, out_size - whole * out_window
    if rest and out_rest > 0:
        spans.append((whole * window, rest, 1, whole * out_window, out_rest))
    return spans


def _attend_windows(
    qkv: torch.Tensor,
    q: torch.Tensor,
    pad_kv: torch.Tensor,
    out: torch.Tensor,
    rows: tuple[int, int, int, int, int],
    cols: tuple[int, int, int, int, int],
    window: int,
) -> None:
    """Attention within one group of equally cut windows, written into out."""
    (r0, rh, nr, or0, orh), (c0, cw, nc, oc0, ocw) = rows, cols
    batch, heads, head_dim = qkv.shape[0], qkv.shape[-2], qkv.shape[-1]
    n = batch * nr * nc
    region = qkv[:, r0 : r0 + nr * rh, c0 : c0 + nc * cw, 1:]
    kv = region.reshape(batch, nr, rh, nc, cw, 2, heads, head_dim)
    kv = kv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(2, n, heads, rh * cw, head_dim)
    queries = q[:, or0 : or0 + nr * orh, oc0 : oc0 + nc * ocw]
    queries = queries.reshape(batch, nr, orh, nc, ocw, heads, head_dim)
    queries = queries.permute(0, 1, 3, 5, 2, 4, 6).reshape(n, heads, orh * ocw, head_dim)
    padded = window * window - rh * cw
    mask = None
    if padded:
        kv = torch.cat([kv, pad_kv.unsqueeze(1).expand(2, n, heads, 1, head_dim)], dim=3)
        mask = kv.new_zeros(1, rh * cw + 1)
        mask[0, -1] = math.log(padded)
    k, v = kv.unbind(0)
    y = F.scaled_dot_product_attention(queries, k, v, attn_mask=mask)
    y = y.view(batch, nr, nc, heads, orh, ocw, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
    out[:, or0 : or0 + nr * orh, oc0 : oc0 + nc * ocw] = y.reshape(
        batch, nr * orh, nc * ocw, heads * head_dim
    )
