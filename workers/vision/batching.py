"""Tracking several objects in one batched SAM2 pass, through sam2's own methods.

The official predictor runs objects one by one. sam2 gathers each object's memory and runs
attention inside one method, so we run that method per object on a ModelView that records the
attention inputs (and which stored memories it read) instead of attending, attend once per group
of objects with equal memory shapes (attention.py: stored memories' keys and values are cached),
and then run sam2's _run_single_frame_inference for the group on a view that hands back those
results. All other code (prompt encoder, mask decoder, object pointers, memory encoder, hole
filling) is sam2's, unchanged, so masks equal the official predictor's up to float rounding.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections import defaultdict
from typing import Any

import torch

from workers.vision import attention
from workers.vision.memory import FrameOutput, MemoryBank


class ModelView:
    """The shared model with some attributes replaced, for this call only.

    sam2's methods run with `self` = the view, so an attribute set on the view (a method or a
    module) is what they see, while everything else is the model's. Nothing is set on the
    model, so trackers sharing it stay independent.
    """

    def __init__(self, model: Any, **overrides: Any) -> None:
        self.__dict__["_model"] = model
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        cls = type(self._model)
        attr = getattr(cls, name, None)
        if inspect.isfunction(attr) and _is_method(cls, name, attr):
            return types.MethodType(attr, self)
        return getattr(self._model, name)


@functools.cache
def _is_method(cls: type, name: str, function: Any) -> bool:
    """Whether cls defines (or inherits) function under name as a plain method, not e.g. a
    staticmethod. Cached: sam2's methods read a few hundred attributes through a view per frame,
    and the full static lookup costs more than the rest of the access."""
    return inspect.getattr_static(cls, name, None) is function


class _AttentionInputs:
    """Stands in for memory_attention: records its inputs, returns the features untouched."""

    def __init__(self) -> None:
        self.kwargs: dict[str, Any] | None = None

    def __call__(self, **kwargs: Any) -> torch.Tensor:
        self.kwargs = kwargs
        return kwargs["curr"][0]


class _ReadLog(dict):
    """A bank entry handed to sam2 that notes when its spatial memory is read."""

    def __init__(self, entry: FrameOutput, log: list[FrameOutput]) -> None:
        super().__init__(entry)
        self._entry, self._log = entry, log

    def __getitem__(self, key: str) -> Any:
        if key == "maskmem_features":
            self._log.append(self._entry)
        return super().__getitem__(key)


def _memory_inputs(
    model: Any, session: dict[str, Any], idx: int, bank: MemoryBank, reverse: bool
) -> tuple[dict[str, Any] | None, list[FrameOutput]]:
    """The memory-attention inputs sam2 builds for one object on frame idx (no attention run),
    and the bank entries whose spatial memories it read, in order."""
    _, _, feats, pos, sizes = model._get_image_feature(session, idx, 1)
    recorder = _AttentionInputs()
    view = ModelView(model, memory_attention=recorder)
    read: list[FrameOutput] = []
    logged = {
        kind: {t: _ReadLog(entry, read) for t, entry in entries.items()}
        for kind, entries in bank.output_dict().items()
    }
    view._prepare_memory_conditioned_features(
        frame_idx=idx,
        is_init_cond_frame=False,
        current_vision_feats=feats[-1:],
        current_vision_pos_embeds=pos[-1:],
        feat_sizes=sizes[-1:],
        output_dict=logged,
        num_frames=session["num_frames"],
        track_in_reverse=reverse,
    )
    return recorder.kwargs, read


def _attend(model: Any, inputs: list[dict[str, Any]]) -> torch.Tensor:
    """sam2's MemoryAttention for a group of objects: HW x B x C (the fallback path)."""
    batch = len(inputs)
    first = inputs[0]
    # the frame's features are the same for every object; a real copy per object (not a
    # stride-0 view) keeps the attention kernels on their fast contiguous path
    return model.memory_attention(
        curr=[x.repeat(1, batch, 1) for x in first["curr"]],
        curr_pos=[x.repeat(1, batch, 1) for x in first["curr_pos"]],
        memory=torch.cat([i["memory"] for i in inputs], dim=1),
        memory_pos=torch.cat([i["memory_pos"] for i in inputs], dim=1),
        num_obj_ptr_tokens=first["num_obj_ptr_tokens"],
    )


def track_batched(
    model: Any,
    session: dict[str, Any],
    idx: int,
    banks: list[MemoryBank],
    reverse: bool,
    batch: bool = True,
) -> tuple[list[FrameOutput], list[torch.Tensor]]:
    """Track every object onto frame idx; per object its compact output and low-res logits.

    Memory attention runs through attention.attend (stored memories' keys and values cached)
    where the model's layout allows, else through sam2's own module. batch=False gives every
    object its own pass.
    """
    outs: list[FrameOutput | None] = [None] * len(banks)
    masks: list[torch.Tensor | None] = [None] * len(banks)
    recorded = [_memory_inputs(model, session, idx, bank, reverse) for bank in banks]
    cached = attention.supported(model)
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    resolved: list[attention.MemoryInputs | None] = []
    for i, (kwargs, read) in enumerate(recorded):
        inputs = None
        if kwargs is not None and cached:
            inputs = attention.resolve_inputs(model, kwargs, read)
        resolved.append(inputs)
        if kwargs is None:  # no memory attention for this model (num_maskmem == 0)
            key: tuple[Any, ...] = ("sam2", i)
        elif inputs is not None:
            key = ("cached", *inputs.shape_key)
        else:
            key = ("module", kwargs["memory"].shape[0], kwargs["num_obj_ptr_tokens"])
        groups[key if batch else (*key, i)].append(i)
    _, _, _, _, sizes = model._get_image_feature(session, idx, 1)
    height, width = sizes[-1]
    for key, members in groups.items():
        if key[0] == "sam2" or (key[0] == "module" and len(members) == 1):
            i = members[0]
            outs[i], masks[i] = model._run_single_frame_inference(
                inference_state=session,
                output_dict=banks[i].output_dict(),
                frame_idx=idx,
                batch_size=1,
                is_init_cond_frame=False,
                point_inputs=None,
                mask_inputs=None,
                reverse=reverse,
                run_mem_encoder=True,
            )
            continue
        if key[0] == "cached":
            features = attention.attend(model, [resolved[i] for i in members])  # type: ignore[misc]
        else:
            features = _attend(model, [recorded[i][0] for i in members])  # type: ignore[misc]
        conditioned = features.permute(1, 2, 0).view(len(members), model.hidden_dim, height, width)
        view = ModelView(
            model,
            _prepare_memory_conditioned_features=_returning(conditioned),
            memory_encoder=SharedFrameMemoryEncoder(model.memory_encoder),
        )
        out, pred_masks = view._run_single_frame_inference(
            inference_state=session,
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},  # unread
            frame_idx=idx,
            batch_size=len(members),
            is_init_cond_frame=False,
            point_inputs=None,
            mask_inputs=None,
            reverse=reverse,
            run_mem_encoder=True,
        )
        for row, i in enumerate(members):
            outs[i] = _slice_output(out, row) if len(members) > 1 else out
            masks[i] = pred_masks[row : row + 1]
    return outs, masks  # type: ignore[return-value]


class SharedFrameMemoryEncoder:
    """MemoryEncoder.forward for a batch of objects on one frame, projecting the frame once.

    sam2 hands the memory encoder the frame's features expanded to the batch (stride 0: one
    frame, every object) and projects every copy; this projects one and broadcasts it onto the
    objects' masks. Any other input goes to sam2's module unchanged.
    """

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def __call__(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> dict[str, Any]:
        encoder = self.encoder
        if pix_feat.shape[0] == 1 or pix_feat.stride(0) != 0:
            return encoder(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        masks = encoder.mask_downsampler(masks)
        x = encoder.pix_feat_proj(pix_feat[:1].to(masks.device)) + masks
        x = encoder.out_proj(encoder.fuser(x))
        return {"vision_features": x, "vision_pos_enc": [encoder.position_encoding(x).to(x.dtype)]}


def _returning(features: torch.Tensor) -> Any:
    """Stands in for _prepare_memory_conditioned_features with already-attended features."""

    def prepared(**_: Any) -> torch.Tensor:
        return features

    return prepared


def _slice_output(out: FrameOutput, row: int) -> FrameOutput:
    """One object's part of a batched output, copied so it does not pin the whole batch."""
    sliced: FrameOutput = {}
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            sliced[key] = value[row : row + 1].clone()
        elif isinstance(value, list):  # maskmem_pos_enc: views of one cached constant
            sliced[key] = [x[row : row + 1] for x in value]
        else:
            sliced[key] = value
    return sliced
