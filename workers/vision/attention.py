"""SAM2's memory attention with each stored memory's keys and values computed once, not per frame.

Every frame, sam2 projects every memory it attends to (the clicked frames and the last six
frames, 7 x HW tokens per object at the defaults) to keys and values in each of the four
layers, and rotates the keys (RoPE). A memory never changes once stored; only the temporal
encoding added to its keys changes as it ages. Keys are linear in their input and RoPE is an
elementwise rotation, so

    rope(Wk (m + p + t_age) + b) = rope(Wk (m + p) + b) + rope(Wk t_age)

and the first term is computed once per stored memory and layer (cached on the memory's bank
entry), the second once per model, layer and age. Values need no temporal term. Per frame only
the queries, the object-pointer tokens and the attention itself are computed. On a CPU the
attention reads each memory's cached keys and values in place (_cross_attention_by_memory);
elsewhere they are copied into one buffer for a fused attention kernel.

The first layer's self-attention and cross-attention queries read only the current frame's
features, which every object shares, so a batch of objects computes them once.

The layers' own modules (norms, projections, self-attention, MLP) are sam2's, called in the order
of MemoryAttentionLayer.forward; results equal sam2's MemoryAttention up to float rounding
(tests/test_vision_equivalence.py compares whole tracks with the official predictor).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sam2.modeling.sam.transformer import RoPEAttention

from workers.vision.memory import FrameOutput

_CACHE_KEY = "_fmu_kv"  # on a MemoryBank entry: (its maskmem_features, per layer (keys, values))
_AGE_KEYS: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
_FREQS: weakref.WeakKeyDictionary[Any, dict[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


@dataclass
class MemoryInputs:
    """What memory attention reads for one object on one frame, as sam2 assembled it."""

    curr: torch.Tensor  # HW x 1 x C, the frame's features (the same for every object)
    curr_pos: torch.Tensor  # HW x 1 x C
    blocks: list[tuple[FrameOutput, int]]  # per spatial memory: its bank entry, its age index
    pointers: torch.Tensor  # P x 1 x mem_dim object-pointer tokens
    pointers_pos: torch.Tensor  # P x 1 x mem_dim
    dtype: torch.dtype  # of sam2's assembled memory (stored memories are bf16; cat promotes)

    @property
    def shape_key(self) -> tuple[int, int]:
        """Objects with equal keys have equal attention shapes and can share one batch."""
        return len(self.blocks), self.pointers.shape[0]


def supported(model: Any) -> bool:
    """Whether this model's memory attention has the layout the cached path reproduces."""
    attention = model.memory_attention
    return (
        not model.training
        and attention.batch_first
        and all(isinstance(layer.cross_attn_image, RoPEAttention) for layer in attention.layers)
        and all(layer.cross_attn_image.rope_k_repeat for layer in attention.layers)
    )


def resolve_inputs(
    model: Any, kwargs: dict[str, Any], read_order: list[FrameOutput]
) -> MemoryInputs | None:
    """Split sam2's assembled memory back into stored memories and pointer tokens.

    kwargs are the arguments sam2 passed to memory_attention; read_order the bank entries whose
    maskmem_features it read, in order. Each spatial memory's age is found from its position
    encoding (sam2 adds maskmem_tpos_enc[age] to the stored one). None when anything does not
    line up, and the caller then runs sam2's own attention.
    """
    (curr,), (curr_pos,) = kwargs["curr"], kwargs["curr_pos"]
    memory, memory_pos = kwargs["memory"], kwargs["memory_pos"]
    n_pointers = kwargs["num_obj_ptr_tokens"]
    hw = curr.shape[0]
    if curr.shape[1] != 1 or memory.shape[0] != len(read_order) * hw + n_pointers:
        return None
    ages = model.maskmem_tpos_enc.reshape(model.maskmem_tpos_enc.shape[0], -1)
    blocks = []
    for b, entry in enumerate(read_order):
        stored = entry["maskmem_pos_enc"][-1].flatten(2)[0, :, 0]  # position 0 of the memory
        added = memory_pos[b * hw, 0] - stored.to(memory_pos)
        distances = (ages.to(added) - added).abs().amax(dim=1)
        age = int(distances.argmin())
        if float(distances[age]) > 1e-3 * (1.0 + float(ages[age].abs().max())):
            return None
        blocks.append((entry, age))
    split = memory.shape[0] - n_pointers
    return MemoryInputs(curr, curr_pos, blocks, memory[split:], memory_pos[split:], memory.dtype)


def attend(model: Any, inputs: list[MemoryInputs], by_memory: bool | None = None) -> torch.Tensor:
    """MemoryAttention for a group of objects with equal shape_key: HW x B x C features.

    by_memory: attend to each stored memory's cached keys and values where they lie, merging
    the scores in one softmax (the default on CPU, where copying them into one buffer first
    costs memory traffic); otherwise copy them into one buffer for one fused attention call
    (the default elsewhere).
    """
    attention = model.memory_attention
    first = inputs[0]
    if any(inp.shape_key != first.shape_key for inp in inputs):
        raise ValueError("one memory-attention batch needs objects with equal memory shapes")
    x = first.curr
    if attention.pos_enc_at_input:
        x = x + 0.1 * first.curr_pos
    x = x.transpose(0, 1)  # batch first: 1 x HW x C, shared until the first cross-attention
    query_pos = first.curr_pos.transpose(0, 1)
    pointers = torch.cat([i.pointers for i in inputs], dim=1).transpose(0, 1)
    pointers_pos = torch.cat([i.pointers_pos for i in inputs], dim=1).transpose(0, 1)
    for index, layer in enumerate(attention.layers):
        x = layer._forward_sa(x, query_pos)
        if by_memory if by_memory is not None else x.device.type == "cpu":
            x = _cross_attention_by_memory(
                model, index, layer, x, query_pos, inputs, pointers, pointers_pos
            )
        else:
            keys, values = _keys_values(model, index, layer, inputs, pointers, pointers_pos)
            x = _cross_attention(layer, x, query_pos, keys, values)
        x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
    return attention.norm(x).transpose(0, 1)


def _queries(layer: Any, x: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
    """A layer's cross-attention queries, rotated: B x heads x HW x d."""
    attn = layer.cross_attn_image
    q = layer.norm2(x)
    if layer.pos_enc_at_cross_attn_queries:
        q = q + query_pos
    q = attn._separate_heads(attn.q_proj(q), attn.num_heads)
    return _rope(q, _freqs(attn, q.shape[-2], q.device))


def _pointer_keys_values(
    layer: Any, pointers: torch.Tensor, pointers_pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the object-pointer tokens (no RoPE): B x heads x P x d each."""
    attn = layer.cross_attn_image
    keys_in = pointers + pointers_pos if layer.pos_enc_at_cross_attn_keys else pointers
    keys = attn._separate_heads(attn.k_proj(keys_in), attn.num_heads)
    return keys, attn._separate_heads(attn.v_proj(pointers), attn.num_heads)


def _cross_attention(
    layer: Any, x: torch.Tensor, query_pos: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """MemoryAttentionLayer._forward_ca with ready keys and values (B x heads x N x d)."""
    attn = layer.cross_attn_image
    q = _queries(layer, x, query_pos)
    if q.shape[0] != keys.shape[0]:  # the shared first layer: one query set for every object
        q = q.expand(keys.shape[0], -1, -1, -1).contiguous()
    out = F.scaled_dot_product_attention(q, keys, values)
    return x + attn.out_proj(attn._recombine_heads(out))


def _cross_attention_by_memory(
    model: Any,
    index: int,
    layer: Any,
    x: torch.Tensor,
    query_pos: torch.Tensor,
    inputs: list[MemoryInputs],
    pointers: torch.Tensor,
    pointers_pos: torch.Tensor,
) -> torch.Tensor:
    """_cross_attention reading each stored memory's keys and values where they are cached.

    Per object: the scores against every memory's keys are written side by side into one row
    per query, softmaxed together, and the output accumulates each memory's values weighted by
    its share: the same attention as one call over the concatenated keys and values, without
    building them. Only each memory's aged keys (stored keys + age term) are made, one memory
    at a time in a small scratch buffer.
    """
    attn = layer.cross_attn_image
    q = _queries(layer, x, query_pos)
    q = q.mul_(q.shape[-1] ** -0.5)
    pointer_k, pointer_v = _pointer_keys_values(layer, pointers, pointers_pos)
    outs = []
    for row, inp in enumerate(inputs):
        qb = q[row if q.shape[0] > 1 else 0]  # heads x HW x d
        stored = [(_stored_keys_values(model, e, inp.dtype)[index], age) for e, age in inp.blocks]
        hw = stored[0][0][0].shape[-2] if stored else 0
        n_spatial = hw * len(stored)
        logits = qb.new_empty(qb.shape[0], qb.shape[1], n_spatial + pointer_k.shape[-2])
        scratch = qb.new_empty(qb.shape[0], hw, qb.shape[-1]) if stored else None
        for b, ((k, _), age) in enumerate(stored):
            if layer.pos_enc_at_cross_attn_keys:
                kb = torch.add(k[0], _age_keys(model, index, layer, age, k)[0], out=scratch)
            else:
                kb = k[0]
            torch.bmm(qb, kb.transpose(1, 2), out=logits[:, :, b * hw : (b + 1) * hw])
        torch.bmm(qb, pointer_k[row].transpose(1, 2), out=logits[:, :, n_spatial:])
        weights = torch.softmax(logits, dim=-1)
        out = torch.bmm(weights[:, :, n_spatial:], pointer_v[row])
        for b, ((_, v), _) in enumerate(stored):
            out.baddbmm_(weights[:, :, b * hw : (b + 1) * hw], v[0])
        outs.append(out)
    out = torch.stack(outs)
    return x + attn.out_proj(attn._recombine_heads(out))


def _keys_values(
    model: Any,
    index: int,
    layer: Any,
    inputs: list[MemoryInputs],
    pointers: torch.Tensor,
    pointers_pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of every object's memories for one layer: B x heads x N x d each.

    Written straight into one buffer each (memories in sam2's order, then the pointer tokens):
    no intermediate concatenations, which cost as much as the projections they replace.
    """
    pointer_k, pointer_v = _pointer_keys_values(layer, pointers, pointers_pos)
    if not inputs[0].blocks:
        return pointer_k, pointer_v
    stored = [[_stored_keys_values(model, e, i.dtype)[index] for e, _ in i.blocks] for i in inputs]
    sample = stored[0][0][0]  # 1 x heads x HW x d
    hw = sample.shape[-2]
    n_spatial = hw * len(inputs[0].blocks)
    shape = (len(inputs), sample.shape[1], n_spatial + pointer_k.shape[-2], sample.shape[-1])
    keys = torch.empty(shape, dtype=sample.dtype, device=sample.device)
    values = torch.empty(shape, dtype=sample.dtype, device=sample.device)
    for row, (inp, per_block) in enumerate(zip(inputs, stored, strict=True)):
        for b, ((_, age), (k, v)) in enumerate(zip(inp.blocks, per_block, strict=True)):
            span = slice(b * hw, (b + 1) * hw)
            if layer.pos_enc_at_cross_attn_keys:
                torch.add(k[0], _age_keys(model, index, layer, age, k)[0], out=keys[row, :, span])
            else:  # keys without position encodings: nothing changes with age
                keys[row, :, span].copy_(k[0])
            values[row, :, span].copy_(v[0])
    keys[:, :, n_spatial:].copy_(pointer_k)
    values[:, :, n_spatial:].copy_(pointer_v)
    return keys, values


def _stored_keys_values(
    model: Any, entry: FrameOutput, dtype: torch.dtype
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, rope(Wk (m + p) + b) and Wv m + b of one stored memory, computed once."""
    features = entry["maskmem_features"]
    cached = entry.get(_CACHE_KEY)
    if cached is not None and cached[0] is features:
        return cached[1]
    memory = features.flatten(2).transpose(1, 2).to(dtype)  # 1 x HW x mem_dim
    position = entry["maskmem_pos_enc"][-1].flatten(2).transpose(1, 2).to(memory)
    per_layer = []
    for layer in model.memory_attention.layers:
        attn = layer.cross_attn_image
        keys_in = memory + position if layer.pos_enc_at_cross_attn_keys else memory
        k = attn._separate_heads(attn.k_proj(keys_in), attn.num_heads)
        k = _rope(k, _freqs(attn, k.shape[-2], k.device))
        v = attn._separate_heads(attn.v_proj(memory), attn.num_heads)
        per_layer.append((k, v))
    entry[_CACHE_KEY] = (features, per_layer)
    return per_layer


def _age_keys(model: Any, index: int, layer: Any, age: int, like: torch.Tensor) -> torch.Tensor:
    """rope(Wk t_age) over an HW-token memory: what the temporal encoding adds to its keys."""
    attn = layer.cross_attn_image
    weight, ages = attn.k_proj.weight, model.maskmem_tpos_enc
    versions = (weight._version, ages._version)  # new weights: start over
    cache = _AGE_KEYS.get(model)
    if cache is None or cache["versions"] != versions:
        cache = _AGE_KEYS[model] = {"versions": versions}
    hw = like.shape[-2]
    key = (index, age, hw, like.device, like.dtype)
    if key not in cache:
        t = ages[age].reshape(1, 1, -1).expand(1, hw, -1).to(like.device)
        k = attn._separate_heads(F.linear(t, weight), attn.num_heads)
        cache[key] = _rope(k, _freqs(attn, hw, like.device)).to(like.dtype)
    return cache[key]


def _freqs(attn: Any, tokens: int, device: torch.device) -> torch.Tensor:
    """RoPEAttention's rotation for a square map of `tokens` positions (as its forward picks)."""
    if attn.freqs_cis.shape[0] == tokens:
        return attn.freqs_cis.to(device)
    cache = _FREQS.setdefault(attn, {})
    if (tokens, device) not in cache:
        side = math.sqrt(tokens)
        cache[(tokens, device)] = attn.compute_cis(end_x=side, end_y=side).to(device)
    return cache[(tokens, device)]


def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """sam2's apply_rotary_enc on one tensor (B x heads x N x d, N = freqs' positions)."""
    rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs
    return torch.view_as_real(rotated).flatten(3).type_as(x)
