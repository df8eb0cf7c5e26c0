"""Channel-sum maps (ODAM, HiResCAM) at a deformable DETR's encoder memory without the memory's
gradient.

A deformable decoder (Deformable DETR, DINO, DDQ, Grounding DINO) reads the encoder memory ``m``
only through each layer's cross-attention: ``v = m W^T + b`` (the value projection), then each
query samples ``v`` bilinearly at a few points per head and level and sums the samples with its
attention weights (mmcv's ``multi_scale_deformable_attn_pytorch``). A full backward per box
materialises the gradient at ``m`` in every layer (17821 tokens x 256 channels at 800 px: a
256 x 256 matrix product, a dense grid-sample backward, copies) — most of a box's cost.

A formula that reads the gradient only as ``sum_c g_c a_c`` per position needs none of that:
with ``G`` the box's gradient at a layer's sampled sum (its attention's output before the
output projection, ``[Q, heads, D]``), the layer adds to token ``j``

    sum over the samples (q, h, point, corner) that land on j of
        attention weight x bilinear weight x <G[q, h], v[j, h] - b[h]>

(``<g', v - b> = <W^T g', m>``: the projection folded into the activation). So each box needs
the backward through the decoder's queries only (what its score reads of the samples'
positions and weights), then one batched product of its ``G`` with the values at the sample
corners: work in proportion to the samples, not to the memory.

Exactness is checked, not assumed: the first box of a detector's first call at a target layer
is compared with the full backward's ``sum_c g_c a_c``; one that differs (e.g. a decoder that
also reads the memory elsewhere) uses the full backward from then on.
"""
import contextlib
import importlib
import logging
import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from ..patching import swapped
from .capture import grads_for

TOLERANCE = 1e-4  # max |fast - full| relative to max |full|, when first checked
# per detector, per target layer: whether its channel sums matched the full backward's
_CHECKED: 'weakref.WeakKeyDictionary[nn.Module, Dict[nn.Module, bool]]' = \
    weakref.WeakKeyDictionary()
# per method object: whether its formula is sum_c g_c a_c
_CHANNEL_SUM: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


@dataclass
class DeformableRead:
    """One call of a decoder's deformable cross-attention: its inputs as mmcv's function got
    them and its output (in the graph)."""
    module: nn.Module
    padding: Optional[Tensor]  # [bs, T] True where the memory is padding (value zeroed)
    value: Tensor  # [bs, T, heads, D], after the projection and the padding's zeros
    shapes: Tensor  # [levels, 2] (h, w)
    locations: Tensor  # [bs, Q, heads, levels, points, 2] in [0, 1]
    weights: Tensor  # [bs, Q, heads, levels, points]
    output: Tensor  # [bs, Q, heads * D]


class DeformableReads:
    """Records every call of the deformable cross-attentions of ``detector.decoder`` while
    active (:class:`DeformableRead` in ``reads``)."""

    def __init__(self, detector: nn.Module):
        from mmcv.ops import MultiScaleDeformableAttention
        decoder = getattr(detector, 'decoder', None)
        self.modules = [] if decoder is None else [
            m for m in decoder.modules() if isinstance(m, MultiScaleDeformableAttention)]
        self.reads: List[DeformableRead] = []
        self._current = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> 'DeformableReads':
        if not self.modules:
            return self
        stack = self._stack
        for module in self.modules:
            stack.callback(module.register_forward_pre_hook(self._enter, with_kwargs=True).remove)
            stack.callback(module.register_forward_hook(self._leave).remove)
        functions = importlib.import_module('mmcv.ops.multi_scale_deform_attn')
        stack.enter_context(swapped(functions, 'multi_scale_deformable_attn_pytorch',
                                    self._recording(functions.multi_scale_deformable_attn_pytorch)))
        stack.enter_context(swapped(functions, 'MultiScaleDeformableAttnFunction',
                                    _RecordingFunction(functions.MultiScaleDeformableAttnFunction,
                                                       self)))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._current = None

    def _enter(self, module, args, kwargs):
        self._current = (module, kwargs.get('key_padding_mask'))

    def _leave(self, module, inputs, output):
        self._current = None

    def record(self, value, shapes, locations, weights, output) -> None:
        if self._current is not None:
            module, padding = self._current
            self.reads.append(DeformableRead(module, padding, value, shapes, locations,
                                             weights, output))

    def _recording(self, function):
        def recorded(value, shapes, locations, weights):
            output = function(value, shapes, locations, weights)
            self.record(value, shapes, locations, weights, output)
            return output
        return recorded


class _RecordingFunction:
    """mmcv's ``MultiScaleDeformableAttnFunction`` (the compiled op, on CUDA) with its calls
    recorded."""

    def __init__(self, function, reads: DeformableReads):
        self.function, self.reads = function, reads

    def apply(self, value, shapes, level_start, locations, weights, im2col_step):
        output = self.function.apply(value, shapes, level_start, locations, weights,
                                     im2col_step)
        self.reads.record(value, shapes, locations, weights, output)
        return output


def is_channel_sum(method) -> bool:
    """Whether ``method.get_cam_image`` is ``sum_c grads * activations`` (ODAM, HiResCAM),
    checked once per method object on random arrays."""
    try:
        return _CHANNEL_SUM[method]
    except (KeyError, TypeError):
        pass
    rng = np.random.default_rng(0)
    grads, acts = (rng.normal(size=(2, 3, 4, 5)).astype(np.float32) for _ in range(2))
    try:
        cam = np.asarray(method.get_cam_image(None, None, None, acts, grads, False))
        found = cam.shape == (2, 4, 5) and np.allclose(cam, (grads * acts).sum(1), atol=1e-5)
    except Exception:  # a formula that needs its real inputs
        found = False
    try:
        _CHANNEL_SUM[method] = found
    except TypeError:
        pass
    return found


class ChannelSums:
    """Per box, ``sum_c dS/dm_c * m_c`` at every memory token (``[1, T, 1]``), as the
    gradient of :class:`~.gradients.Backward` at the memory (one activation) for a formula
    that is that channel sum (:func:`is_channel_sum`)."""

    def __init__(self, detector: nn.Module, reads: Sequence[DeformableRead], memory: Tensor,
                 checked: Dict[nn.Module, bool], layer: nn.Module):
        self.detector, self.reads, self.memory = detector, list(reads), memory
        self.checked, self.layer = checked, layer
        self._tables: Dict[int, tuple] = {}

    @classmethod
    def of(cls, detector, reads: DeformableReads, capture, method) -> Optional['ChannelSums']:
        """The channel sums where they apply: one target layer and output (``capture``), the
        memory (``[1, T, C]``) that every recorded read has as many tokens as, and a
        channel-sum formula; not for a detector and layer whose first check failed."""
        activations = capture.activations
        if len(activations) != 1 or not reads.reads or not is_channel_sum(method):
            return None
        layer = capture.layers[capture.owners[0]]
        checked = _CHECKED.setdefault(detector, {})
        if checked.get(layer) is False:
            return None
        memory = activations[0]
        if memory.dim() != 3 or memory.shape[0] != 1 or any(
                r.value.shape[:2] != memory.shape[:2] for r in reads.reads):
            return None
        return cls(detector, reads.reads, memory, checked, layer)

    def activation_grads(self, values: Tensor, boxes: Sequence[int],
                         activations: Sequence[Tensor]) -> List[List[Tensor]]:
        """Per box, ``[channel sums [1, T, 1]]``; the first box of a detector's first call at
        a target layer is checked against the full backward (see the module's docstring)."""
        if self.checked.get(self.layer) is False:
            return [[self._full(values[b])] for b in boxes]
        outputs = [r.output for r in self.reads]
        sums = self._sums([torch.autograd.grad(values[b], outputs, retain_graph=True,
                                               allow_unused=True) for b in boxes])
        if self.layer not in self.checked and len(boxes):
            reference = self._full(values[boxes[0]])[0, :, 0]
            error = float((sums[0] - reference).abs().max())
            scale = float(reference.abs().max())
            self.checked[self.layer] = error <= TOLERANCE * scale
            if not self.checked[self.layer]:
                print_log(f'{type(self.detector).__name__}: the decoder\'s channel sums differ '
                          f'from the full backward by {error:.3g} (max {scale:.3g}); the full '
                          'backward is used', logger='current', level=logging.DEBUG)
                return self.activation_grads(values, boxes, activations)
        return [[s[None, :, None]] for s in sums]

    def _full(self, value: Tensor) -> Tensor:
        """``[1, T, 1]``: the channel sums of the full backward's gradient at the memory."""
        grad = grads_for(value, [self.memory])[0]
        return (grad * self.memory.detach()).sum(-1, keepdim=True)

    def _sums(self, sampled: List[Sequence[Optional[Tensor]]]) -> List[Tensor]:
        """``[T]`` channel sums per box from its gradients at each read's output."""
        # summed in float64: the corners' products cancel (signed terms of ODAM's sum)
        total = self.memory.new_zeros(len(sampled), self.memory.shape[1], dtype=torch.float64)
        for k, read in enumerate(self.reads):
            rows = [g[k] for g in sampled]
            if all(g is None for g in rows):
                continue
            grads = torch.stack([torch.zeros_like(read.output) if g is None else g
                                 for g in rows])[:, 0]  # [B, Q, heads * D]
            tokens, weights, corners = self._table(k)
            queries, heads, samples, depth = corners.shape
            products = torch.einsum('bqhd,qhkd->bqhk',
                                    grads.reshape(len(rows), queries, heads, depth), corners)
            products = (products * weights).reshape(len(rows), -1)
            total.index_add_(1, tokens, products.double())
        return list(total.float())

    def _table(self, k: int):
        """Read ``k``'s samples as ``(token [Q * heads * S], weight [Q, heads, S], value -
        bias at the token [Q, heads, S, D])``, S = levels x points x 4 corners: mmcv's
        ``grid_sample`` (bilinear, zero padding, ``align_corners=False``) written out."""
        if k in self._tables:
            return self._tables[k]
        read = self.reads[k]
        with torch.no_grad():
            value = read.value[0]  # [T, heads, D]
            bias = read.module.value_proj.bias
            if bias is not None:
                value = value - bias.reshape(value.shape[1:])
            locations, attention = read.locations[0], read.weights[0]  # [Q, h, L, P, (2)]
            shapes = [(int(h), int(w)) for h, w in read.shapes.tolist()]
            starts = np.cumsum([0] + [h * w for h, w in shapes])[:-1]
            tokens, weights = [], []
            for level, ((height, width), start) in enumerate(zip(shapes, starts)):
                grid = 2 * locations[:, :, level] - 1  # as mmcv computes it
                x = ((grid[..., 0] + 1) * width - 1) / 2
                y = ((grid[..., 1] + 1) * height - 1) / 2
                x0, y0 = torch.floor(x), torch.floor(y)
                for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                    cx, cy = x0 + dx, y0 + dy
                    weight = ((x - x0) if dx else (x0 + 1 - x)) * ((y - y0) if dy else
                                                                   (y0 + 1 - y))
                    inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
                    token = start + (cy.clamp(0, height - 1) * width
                                     + cx.clamp(0, width - 1)).long()
                    tokens.append(token)
                    weights.append(weight * inside * attention[:, :, level])
            token = torch.stack(tokens, -1).flatten(2)  # [Q, heads, S]
            weight = torch.stack(weights, -1).flatten(2)
            if read.padding is not None:
                weight = weight * ~read.padding[0][token]
            heads = torch.arange(value.shape[1], device=value.device)[None, :, None]
            corners = value[token, heads.expand_as(token)]  # [Q, heads, S, D]
        self._tables[k] = (token.reshape(-1), weight, corners)
        return self._tables[k]

