"""The attention probabilities of a DETR-style transformer, captured in the forward with their
place in the graph, for the ``relevancy`` method (``methods/relevancy.py``).

* Deformable attention (mmcv's ``MultiScaleDeformableAttention``: Deformable DETR, DINO, DDQ,
  the Grounding DINO family): each query's attention weights over its sampling points and the
  points' locations, as the sampling kernel receives them.
* Dense attention (``torch.nn.MultiheadAttention`` inside mmcv's ``MultiheadAttention``: DETR):
  torch computes the probabilities inside one fused function and returns (when asked) a copy
  that is not on the path to the output, so while active each such module runs the same
  computation written out (:func:`explicit_attention`), whose softmax output is recorded.
  mmdet's ``ConditionalAttention`` (Conditional DETR, DAB-DETR decoders) computes them itself:
  they are recorded as its ``attn_drop`` receives them.

Each record has a *role* from the module's place in the detector: ``encoder`` (image tokens
attending to image tokens), ``decoder_self`` (queries to queries) or ``decoder_cross``
(queries to image tokens). Attention over text tokens (Grounding DINO's text layers and
text cross-attention) is not recorded: its keys are not image positions.
"""
import contextlib
import importlib
import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from ..patching import swapped


@dataclass
class AttentionRecord:
    """One attention call: ``probs`` (in the graph) and, for deformable attention, where each
    probability's point samples (``locations``, normalised x, y per level) on ``shapes``
    (``[levels, 2]`` grid heights and widths of the image tokens).

    Shapes: dense ``probs [B, heads, queries, keys]`` (or ``[B x heads, queries, keys]``);
    deformable ``probs [B, queries, heads, levels, points]`` and ``locations [B, queries,
    heads, levels, points, 2]``.
    """
    role: str
    name: str
    probs: Tensor
    locations: Optional[Tensor] = None
    shapes: Optional[Tensor] = None
    splat: Optional[tuple] = field(default=None, repr=False)  # relevancy's, once per image

    @property
    def deformable(self) -> bool:
        return self.locations is not None


def attention_role(name: str) -> Optional[str]:
    """``encoder``, ``decoder_self``, ``decoder_cross`` or None (not over image tokens) for an
    attention module named ``name`` inside the detector."""
    parts = name.split('.')
    if len(parts) < 3 or parts[1] != 'layers' or parts[0] not in ('encoder', 'decoder'):
        return None
    if parts[0] == 'encoder':
        return 'encoder' if parts[-1] == 'self_attn' else None
    return {'self_attn': 'decoder_self', 'cross_attn': 'decoder_cross'}.get(parts[-1])


class AttentionCapture:
    """While active (``with AttentionCapture(detector) as capture``), ``capture.records`` collects
    the :class:`AttentionRecord` of every image-token attention call of ``detector``'s
    ``encoder`` and ``decoder``, in call order."""

    def __init__(self, detector: nn.Module):
        from mmcv.cnn.bricks.transformer import MultiheadAttention
        from mmcv.ops import MultiScaleDeformableAttention
        from mmdet.models.layers.transformer.utils import ConditionalAttention
        self.records: List[AttentionRecord] = []
        self.deformable, self.dense, self.conditional = {}, {}, {}
        for name, module in detector.named_modules():
            role = attention_role(name)
            if role is None:
                continue
            if isinstance(module, MultiScaleDeformableAttention):
                self.deformable[module] = (role, name)
            elif isinstance(module, MultiheadAttention) and isinstance(module.attn,
                                                                       nn.MultiheadAttention):
                self.dense[module.attn] = (role, name)
            elif isinstance(module, ConditionalAttention):
                self.conditional[module.attn_drop] = (role, name)
        if not (self.deformable or self.dense or self.conditional):
            raise UnsupportedModelError(
                f'{type(detector).__name__} has no transformer encoder or decoder attention '
                'that relevancy reads (mmcv MultiScaleDeformableAttention or MultiheadAttention '
                "in 'encoder.layers' / 'decoder.layers'): relevancy is for DETR-style detectors")
        self._calling = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> 'AttentionCapture':
        stack = self._stack.__enter__()
        kernels = importlib.import_module('mmcv.ops.multi_scale_deform_attn')
        pytorch_kernel = kernels.multi_scale_deformable_attn_pytorch
        function = kernels.MultiScaleDeformableAttnFunction
        capture = self

        def recorded_pytorch(value, spatial_shapes, sampling_locations, attention_weights):
            capture._record(spatial_shapes, sampling_locations, attention_weights)
            return pytorch_kernel(value, spatial_shapes, sampling_locations, attention_weights)

        class RecordedFunction:
            @staticmethod
            def apply(value, spatial_shapes, level_start_index, sampling_locations,
                      attention_weights, im2col_step):
                capture._record(spatial_shapes, sampling_locations, attention_weights)
                return function.apply(value, spatial_shapes, level_start_index,
                                      sampling_locations, attention_weights, im2col_step)

        stack.enter_context(swapped(kernels, 'multi_scale_deformable_attn_pytorch',
                                    recorded_pytorch))
        stack.enter_context(swapped(kernels, 'MultiScaleDeformableAttnFunction',
                                    RecordedFunction))
        for module, (role, name) in self.deformable.items():
            stack.callback(module.register_forward_pre_hook(
                lambda _m, _a, role=role, name=name: self._set_calling(role, name)).remove)
            stack.callback(module.register_forward_hook(
                lambda *_: self._set_calling(None, None)).remove)
        for dropout, (role, name) in self.conditional.items():  # [B x heads, queries, keys]
            stack.callback(dropout.register_forward_hook(
                lambda _m, inputs, _o, role=role, name=name:
                self.records.append(AttentionRecord(role, name, inputs[0]))).remove)
        for mha, (role, name) in self.dense.items():
            if mha.bias_k is not None or mha.add_zero_attn:
                raise UnsupportedModelError(f'{name}: attention with bias_k / add_zero_attn is '
                                            'not supported by relevancy')

            def forward(*args, mha=mha, role=role, name=name, **kwargs):
                output, probs = explicit_attention(mha, *args, **kwargs)
                self.records.append(AttentionRecord(role, name, probs))
                return output, None
            stack.enter_context(swapped(mha, 'forward', forward))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def _set_calling(self, role, name) -> None:
        self._calling = None if role is None else (role, name)

    def _record(self, spatial_shapes, sampling_locations, attention_weights) -> None:
        if self._calling is not None:
            role, name = self._calling
            self.records.append(AttentionRecord(role, name, attention_weights,
                                                sampling_locations.detach(),
                                                spatial_shapes.detach()))


def explicit_attention(mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                       key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                       attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                       is_causal: bool = False):
    """``mha(query, key, value, ...)`` at inference, written out: ``(output, probs)`` with
    ``probs [B, heads, queries, keys]`` the softmax output that multiplies the values (no
    dropout: inference). Same arguments as ``nn.MultiheadAttention.forward``."""
    if mha.batch_first:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    length, batch, embed = query.shape
    keys, heads = key.shape[0], mha.num_heads
    head_dims = embed // heads
    if mha._qkv_same_embed_dim:
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    b_q, b_k, b_v = (mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None
                     else (None, None, None))

    def split(x, w, b, n):  # [n, B, E] -> [B, heads, n, head_dims]
        return F.linear(x, w, b).reshape(n, batch, heads, head_dims).permute(1, 2, 0, 3)

    q, k, v = split(query, w_q, b_q, length), split(key, w_k, b_k, keys), \
        split(value, w_v, b_v, keys)
    logits = q @ k.transpose(-2, -1) / math.sqrt(head_dims)
    if attn_mask is not None:
        mask = attn_mask.reshape(-1, heads, length, keys) if attn_mask.dim() == 3 else attn_mask
        logits = (logits.masked_fill(mask, float('-inf')) if mask.dtype == torch.bool
                  else logits + mask)
    if key_padding_mask is not None:
        padding = key_padding_mask.bool()[:, None, None, :]
        logits = logits.masked_fill(padding, float('-inf'))
    probs = logits.softmax(-1)
    output = (probs @ v).permute(2, 0, 1, 3).reshape(length, batch, embed)
    output = mha.out_proj(output)
    if mha.batch_first:
        output = output.transpose(0, 1)
    return output, probs
