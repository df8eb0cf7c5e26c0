"""ODAM, HiResCAM and GradCAM maps at a deformable DETR's encoder memory without the memory's
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
corners: work in proportion to the samples, not to the memory. GradCAM's channel weights, the
gradient's mean over a level's tokens, are per layer ``W^T`` times the sum over queries of each
query's ``G`` weighted by its samples' share in the level.

Exactness is checked, not assumed: the first box of a detector's first call at a target layer
is compared with the full backward's map and channel sums; one that differs (e.g. a decoder
that also reads the memory elsewhere) uses the full backward from then on.
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
# per detector, per target layer: whether its maps from the samples matched the full backward's
_CHECKED: 'weakref.WeakKeyDictionary[nn.Module, Dict[nn.Module, bool]]' = \
    weakref.WeakKeyDictionary()


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


# the formulas the decoder's samples give (pytorch_grad_cam's get_cam_image on [K, C, H, W]):
# a channel sum of gradient x activation (ODAM, HiResCAM), and channel weights that are the
# gradient's spatial means (GradCAM)
FORMULAS = {
    'channel_sum': lambda grads, acts: (grads * acts).sum(1),
    'mean_weights': lambda grads, acts: (grads.mean((2, 3))[:, :, None, None] * acts).sum(1),
}
_FORMULA: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()  # method -> name or None


def formula_of(method) -> Optional[str]:
    """Which of :data:`FORMULAS` ``method.get_cam_image`` is (None: neither), checked once per
    method object on random arrays."""
    try:
        return _FORMULA[method]
    except (KeyError, TypeError):
        pass
    rng = np.random.default_rng(0)
    grads, acts = (rng.normal(size=(2, 3, 4, 5)).astype(np.float32) for _ in range(2))
    found = None
    try:
        cam = np.asarray(method.get_cam_image(None, None, None, acts, grads, False))
    except Exception:  # a formula that needs its real inputs
        cam = None
    for name, formula in FORMULAS.items():
        if cam is not None and cam.shape == (2, 4, 5) and np.allclose(
                cam, formula(grads, acts), atol=1e-5):
            found = name
    try:
        _FORMULA[method] = found
    except TypeError:
        pass
    return found


class DecoderSamples:
    """Per box, its map at every memory token from the decoder's samples, as the gradient of
    :class:`~.gradients.Backward` at the memory (one activation): ``[1, T, 2]``, the
    method's map (:func:`formula_of`) and the channel sums ``sum_c dS/dm_c * m_c`` (which
    choose the box's own level)."""

    def __init__(self, detector: nn.Module, reads: Sequence[DeformableRead], memory: Tensor,
                 formula: str, checked: Dict[nn.Module, bool], layer: nn.Module):
        self.detector, self.reads, self.memory = detector, list(reads), memory
        self.formula, self.checked, self.layer = formula, checked, layer
        read = self.reads[0]
        self.levels = [(int(h), int(w)) for h, w in read.shapes.tolist()]
        self.starts = np.cumsum([0] + [h * w for h, w in self.levels])
        self._tables: Dict[int, tuple] = {}

    @classmethod
    def of(cls, detector, reads: DeformableReads, capture, method) -> Optional['DecoderSamples']:
        """The decoder's samples where they apply: one target layer and output (``capture``),
        the memory (``[1, T, C]``) that every recorded read has as many tokens as, and a
        formula of :data:`FORMULAS`; not for a detector and layer whose first check failed."""
        activations = capture.activations
        if len(activations) != 1 or not reads.reads:
            return None
        formula = formula_of(method)
        layer = capture.layers[capture.owners[0]]
        checked = _CHECKED.setdefault(detector, {})
        if formula is None or checked.get(layer) is False:
            return None
        memory = activations[0]
        shapes = reads.reads[0].shapes
        if memory.dim() != 3 or memory.shape[0] != 1 or any(
                r.value.shape[:2] != memory.shape[:2] or not torch.equal(r.shapes, shapes)
                for r in reads.reads):
            return None
        return cls(detector, reads.reads, memory, formula, checked, layer)

    def activation_grads(self, values: Tensor, boxes: Sequence[int],
                         activations: Sequence[Tensor]) -> List[List[Tensor]]:
        """Per box, ``[maps [1, T, 2]]``; the first box of a detector's first call at a target
        layer is checked against the full backward (see the module's docstring)."""
        if self.checked.get(self.layer) is False:
            return [[self._full(values[b])] for b in boxes]
        outputs = [r.output for r in self.reads]
        maps = self._maps([torch.autograd.grad(values[b], outputs, retain_graph=True,
                                               allow_unused=True) for b in boxes])
        if self.layer not in self.checked and len(boxes):
            reference = self._full(values[boxes[0]])[0]
            error = (maps[0] - reference).abs().amax(0)
            scale = reference.abs().amax(0)
            self.checked[self.layer] = bool((error <= TOLERANCE * scale).all())
            if not self.checked[self.layer]:
                print_log(f'{type(self.detector).__name__}: the maps from the decoder\'s samples '
                          f'differ from the full backward\'s by {error.tolist()} (max '
                          f'{scale.tolist()}); the full backward is used', logger='current',
                          level=logging.DEBUG)
                return self.activation_grads(values, boxes, activations)
        return [[m[None]] for m in maps]

    def _full(self, value: Tensor) -> Tensor:
        """``[1, T, 2]`` from the full backward's gradient at the memory."""
        grad = grads_for(value, [self.memory])[0][0]
        memory = self.memory.detach()[0]
        sums = (grad * memory).sum(-1)
        if self.formula == 'channel_sum':
            return torch.stack([sums, sums], -1)[None]
        weighted = torch.cat([memory[a:b] @ grad[a:b].mean(0)
                              for a, b in zip(self.starts[:-1], self.starts[1:])])
        return torch.stack([weighted, sums], -1)[None]

    def _maps(self, sampled: List[Sequence[Optional[Tensor]]]) -> List[Tensor]:
        """``[T, 2]`` per box from its gradients at each read's output."""
        count, (tokens_total, channels) = len(sampled), self.memory.shape[1:]
        # summed in float64: the corners' products cancel (signed terms of ODAM's sum)
        sums = self.memory.new_zeros(count, tokens_total, dtype=torch.float64)
        # per level, the gradient's sum over the level's tokens (for 'mean_weights')
        level_sums = self.memory.new_zeros(len(self.levels), count, channels,
                                           dtype=torch.float64)
        for k, read in enumerate(self.reads):
            rows = [g[k] for g in sampled]
            if all(g is None for g in rows):
                continue
            tokens, weights, corners, shares = self._table(k)
            queries, heads, _, depth = corners.shape
            grads = torch.stack([torch.zeros_like(read.output) if g is None else g
                                 for g in rows])[:, 0].reshape(count, queries, heads, depth)
            products = torch.einsum('bqhd,qhkd->bqhk', grads, corners)
            sums.index_add_(1, tokens, (products * weights).reshape(count, -1).double())
            if self.formula == 'mean_weights':
                projection = read.module.value_proj.weight  # [out, in]: g_in = g_out @ W
                at_values = torch.einsum('lqh,bqhd->lbhd', shares, grads).flatten(2)
                level_sums += (at_values @ projection).double()
        sums = sums.float()
        if self.formula == 'channel_sum':
            return list(torch.stack([sums, sums], -1))
        memory = self.memory.detach()[0].double()
        weighted = torch.cat([
            (memory[a:b] @ (level_sums[level] / (b - a)).T).T
            for level, (a, b) in enumerate(zip(self.starts[:-1], self.starts[1:]))], 1)
        return list(torch.stack([weighted.float(), sums], -1))

    def _table(self, k: int):
        """Read ``k``'s samples as ``(token [Q * heads * S], weight [Q, heads, S], value -
        bias at the token [Q, heads, S, D], each level's share of the weights [levels, Q,
        heads])``, S = levels x points x 4 corners: mmcv's ``grid_sample`` (bilinear, zero
        padding, ``align_corners=False``) written out."""
        if k in self._tables:
            return self._tables[k]
        read = self.reads[k]
        with torch.no_grad():
            value = read.value[0]  # [T, heads, D]
            bias = read.module.value_proj.bias
            if bias is not None:
                value = value - bias.reshape(value.shape[1:])
            locations, attention = read.locations[0], read.weights[0]  # [Q, h, L, P, (2)]
            tokens, weights = [], []
            for level, ((height, width), start) in enumerate(zip(self.levels, self.starts)):
                grid = 2 * locations[:, :, level] - 1  # as mmcv computes it
                x = ((grid[..., 0] + 1) * width - 1) / 2
                y = ((grid[..., 1] + 1) * height - 1) / 2
                x0, y0 = torch.floor(x), torch.floor(y)
                for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                    cx, cy = x0 + dx, y0 + dy
                    weight = ((x - x0) if dx else (x0 + 1 - x)) * ((y - y0) if dy else
                                                                   (y0 + 1 - y))
                    inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
                    token = int(start) + (cy.clamp(0, height - 1) * width
                                          + cx.clamp(0, width - 1)).long()
                    tokens.append(token)
                    weights.append(weight * inside * attention[:, :, level])
            token = torch.cat(tokens, -1)  # [Q, heads, S], S in (level, corner, point) order
            weight = torch.cat(weights, -1)
            if read.padding is not None:
                weight = weight * ~read.padding[0][token]
            shares = weight.unflatten(-1, (len(self.levels), -1)).sum(-1).permute(2, 0, 1)
            heads = torch.arange(value.shape[1], device=value.device)[None, :, None]
            corners = value[token, heads.expand_as(token)]  # [Q, heads, S, D]
        self._tables[k] = (token.reshape(-1), weight, corners, shares)
        return self._tables[k]
