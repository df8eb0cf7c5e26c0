"""``relevancy``: what a DETR-style detector's query looked at, from its attention.

Dense attention (DETR) follows Chefer, Gur and Wolf, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021; rules as in their code,
hila-chefer/Transformer-MM-Explainability, ``DETR/modules/ExplanationGenerator.py``,
``generate_ours`` without LRP): each attention map becomes ``mean over heads of (A * dS/dA)+``
(their rule 5); encoder layers update the image-token relevancy ``R_ii += A R_ii``, decoder
self-attention ``R_qq += A R_qq`` and ``R_qi += A R_qi``, decoder cross-attention
``R_qi += norm(R_qq)^T A norm(R_ii)`` (rule 10, with their residual normalisation, eqs. 8-9);
the box's map is its query's row of ``R_qi`` over the image tokens.

Deformable attention (Deformable DETR, DINO, DDQ, Grounding DINO) has no attention matrix: a
query attends to a few sampled points per level and head. *Our construction* (no published
method): each point's ``(A * dS/dA)+``, averaged over heads, is splatted bilinearly onto the
level's grid at the point's location, giving a sparse queries x image-tokens matrix; the
encoder's deformable self-attention gives an image-tokens x image-tokens one the same way, and
both enter Chefer's rules unchanged.

Only the box's own row is computed, by products of vectors with these matrices (never the
tokens x tokens relevancy itself, 17 000^2 at 800 px): ``R_ii`` is the product of ``I + A`` over
the encoder layers, so a row times ``R_ii`` and ``R_ii``'s row sums (for its normalisation) are
a few sparse products. The box's query is where its score's gradient enters the last
cross-attention (the queries' weights there, normalised: one query for DETR-style heads).
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine.attention import AttentionRecord
from ..engine.capture import token_attributions
from ..engine.request import Request
from ..engine.session import BoxCAMs, Session
from ..errors import UnsupportedModelError
from ..registry import CAM_METHODS
from .kinds import MethodKind
from .pipeline import Pipeline


class AttentionPipeline(Pipeline):
    """Each box's gradients at a transformer's attention probabilities, captured in the same
    forward (the graph kept from the neck on), turned into a map by the method's
    ``token_map`` and ``image_map`` (:class:`Relevancy`); no target layers."""

    kind = MethodKind.ATTENTION
    uses_layers = False

    def explain(self, session: Session, request: Request) -> BoxCAMs:
        with session.forward(request, attention=True) as forward:
            if not len(forward.detections):
                return forward.nothing()
            embeddings = forward.tokens.embeddings
            maps, attributions = _relevancy_maps(
                self.method, forward.attention.records, forward.values, forward.shapes.shapes,
                forward.inputs, embeddings)
            return BoxCAMs(forward.detections, maps, forward.data_sample,
                           [[] for _ in range(len(forward.detections))],
                           forward.tokens.tokens if embeddings else None, attributions)


def _relevancy_maps(method, records, values: Tensor, feature_shapes, inputs: Tensor,
                    embeddings: Sequence[Tensor] = ()) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Per box, ``method``'s relevancy map on the network input from the box's gradients at
    the captured attention probabilities (``attention.AttentionCapture``), and, for a
    text-prompted detector (``embeddings``: its prompt's token embeddings, gradient leaves),
    ``[N, T]`` token attributions.

    The prompt's words reach the boxes through the fusion layers and the queries' dot products
    with the text, not through attention over image positions, so Chefer's rules give them no
    relevancy; each token gets the gradient methods' attribution instead (gradient x
    embedding, ``capture.TokenEmbeddings``), from the same backward as the box's attention
    gradients: the same numbers a gradient method reports for the box."""
    if not records:
        raise UnsupportedModelError('no attention over image tokens was recorded in the forward')
    if not values.requires_grad:
        raise UnsupportedModelError('the detections carry no gradient to the attention')
    shapes = torch.as_tensor(feature_shapes)
    tokens = int((shapes[:, 0] * shapes[:, 1]).sum())
    in_graph = [i for i, record in enumerate(records) if record.probs.requires_grad]
    maps, attributions = [], []
    for value in values:
        found = torch.autograd.grad(value, [records[i].probs for i in in_graph] + list(embeddings),
                                    retain_graph=True, allow_unused=True)
        grads = [None] * len(records)
        for i, grad in zip(in_graph, found):
            grads[i] = grad
        relevancy = method.token_map(records, grads, tokens)
        maps.append(method.image_map(relevancy, shapes, tuple(inputs.shape[-2:])))
        if embeddings:
            attributions.append(token_attributions(found[len(in_graph):], embeddings))
    return np.stack(maps), (np.stack(attributions) if attributions else None)


@CAM_METHODS.register_module(name='relevancy')
class Relevancy:
    """Per-box relevancy of the image tokens, from attention probabilities and their gradients
    (see the module docstring). :class:`AttentionPipeline` captures the attention in the
    detector's forward (``engine/attention.py``) and calls :meth:`token_map` once per box."""

    kind = MethodKind.ATTENTION

    def token_map(self, records: Sequence[AttentionRecord], grads: Sequence[Tensor],
                  tokens: int) -> Tensor:
        """The relevancy ``[tokens]`` of the image tokens (encoder memory order) for one box,
        given every record and the box's gradient at its ``probs`` (None: no gradient)."""
        weighted = [(record, _head_mean(record, grad, tokens))
                    for record, grad in zip(records, grads)]
        encoder = [matrix for record, matrix in weighted if record.role == 'encoder']
        decoder = [(record.role, matrix) for record, matrix in weighted
                   if record.role != 'encoder']
        crosses = [matrix for role, matrix in decoder if role == 'decoder_cross']
        device = records[0].probs.device
        if not crosses:
            return torch.zeros(tokens, device=device)
        queries = crosses[-1].shape[0]

        # R_qq before each cross-attention, in forward order
        r_qq = torch.eye(queries, device=device)
        before_cross = []
        for role, matrix in decoder:
            if role == 'decoder_self':
                r_qq = r_qq + matrix @ r_qq
            else:
                before_cross.append(_residual_normalised(r_qq))

        # the box's query weights, then R_qi's row built backwards through the decoder
        u = _times(crosses[-1], torch.ones(tokens, device=device))  # per query: its mass
        if float(u.sum()) <= 0:
            return torch.zeros(tokens, device=device)
        u = u / u.sum()
        row = torch.zeros(tokens, device=device)
        cross_index = len(crosses)
        for role, matrix in reversed(decoder):
            if role == 'decoder_cross':
                cross_index -= 1
                weights = before_cross[cross_index] @ u  # (norm(R_qq)^T)'s row: u^T norm(R_qq)^T
                row = row + _row_times(weights, matrix)
            else:
                u = u + _row_times(u, matrix)  # u^T (I + A_self)
        return _times_normalised_image_relevancy(row, encoder)

    def level_maps(self, relevancy: Tensor, shapes: Tensor) -> List[Tensor]:
        """``relevancy [tokens]`` as one ``[H, W]`` grid per level."""
        sizes = [int(h) * int(w) for h, w in shapes.tolist()]
        return [piece.reshape(int(h), int(w)) for piece, (h, w)
                in zip(relevancy.split(sizes), shapes.tolist())]

    def image_map(self, relevancy: Tensor, shapes: Tensor, size: Tuple[int, int]) -> np.ndarray:
        """The map on the network input of ``size`` (height, width): each level's grid resized
        to it, summed over levels, scaled to [0, 1]."""
        total = torch.zeros(size, device=relevancy.device)
        for grid in self.level_maps(relevancy, shapes):
            total += F.interpolate(grid[None, None].float(), size=size, mode='bilinear',
                                   align_corners=False)[0, 0]
        total = total - total.min()
        peak = float(total.max())
        return (total / peak if peak > 0 else total).cpu().numpy().astype(np.float32)


def _head_mean(record: AttentionRecord, grad, tokens: int) -> Tensor:
    """Chefer's rule 5, ``mean over heads of (A * dS/dA)+``, as a queries x keys matrix
    (sparse for deformable attention: each point splatted onto its level's grid)."""
    probs = record.probs.detach()
    if grad is None:
        grad = torch.zeros_like(probs)
    weighted = (probs * grad.detach()).clamp(min=0).float()
    if not record.deformable:  # batch of 1: heads first
        return weighted.reshape(-1, *weighted.shape[-2:]).mean(0)  # mean over heads
    source, rows, cols, share = _splat(record, tokens)
    heads = weighted.shape[2]
    values = weighted.reshape(-1)[source] * share / heads
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values,
                                   (weighted.shape[1], tokens), check_invariants=False).coalesce()


def _splat(record: AttentionRecord, tokens: int):
    """Where each sampling point of a deformable record lands: per (point, corner) pair the
    point's index into the flattened probabilities, its query, the image token of the corner
    and the bilinear share (grid_sample's align_corners=False convention, as mmcv samples:
    pixel = location x size - 0.5; corners outside the grid dropped, as its zero padding
    does). The same for every box of an image, so computed once per record."""
    if record.splat is not None:
        return record.splat
    locations = record.locations[0].float()  # [queries, heads, levels, points, 2]
    queries, heads, levels, points, _ = locations.shape
    shapes = record.shapes.long()
    heights, widths = shapes[:, 0], shapes[:, 1]
    starts = torch.cat([shapes.new_zeros(1), (heights * widths).cumsum(0)[:-1]])
    device = locations.device
    level = torch.arange(levels, device=device)[None, None, :, None].expand(
        queries, heads, levels, points)
    x = locations[..., 0] * widths[level] - 0.5
    y = locations[..., 1] * heights[level] - 0.5
    x0, y0 = x.floor(), y.floor()
    query = torch.arange(queries, device=device)[:, None, None, None].expand_as(x)
    point = torch.arange(x.numel(), device=device).reshape(x.shape)
    pieces = []
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            share = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
            keep = (xi >= 0) & (yi >= 0) & (xi < widths[level]) & (yi < heights[level]) & \
                (share > 0)
            pieces.append((point[keep], query[keep],
                           (starts[level] + yi.long() * widths[level] + xi.long())[keep],
                           share[keep]))
    record.splat = tuple(torch.cat(parts) for parts in zip(*pieces))
    return record.splat


def _times(matrix: Tensor, column: Tensor) -> Tensor:
    """``matrix column`` for a dense or sparse (COO) matrix."""
    return (matrix @ column[:, None])[:, 0]


def _row_times(row: Tensor, matrix: Tensor) -> Tensor:
    """``row^T matrix`` for a dense or sparse (COO) matrix."""
    return _times(matrix.t(), row)


def _residual_normalised(relevancy: Tensor) -> Tensor:
    """Chefer's eqs. 8-9: ``R - I`` with rows scaled to sum 1 (zero rows stay zero), plus I."""
    eye = torch.eye(relevancy.shape[0], device=relevancy.device)
    rest = relevancy - eye
    sums = rest.sum(1, keepdim=True)
    return torch.where(sums > 0, rest / sums.clamp(min=1e-12), torch.zeros_like(rest)) + eye


def _times_normalised_image_relevancy(row: Tensor, encoder: List[Tensor]) -> Tensor:
    """``row^T norm(R_ii)`` with ``R_ii = (I + A_L) ... (I + A_1)`` over the encoder layers and
    ``norm`` as :func:`_residual_normalised`, by vector products only:
    ``x^T norm(R_ii) = (x / d)^T (R_ii - I) + x^T`` with ``d`` the row sums of ``R_ii - I``."""
    ones = torch.ones_like(row)
    sums = ones
    for matrix in encoder:  # R_ii 1, innermost (first) layer first
        sums = sums + _times(matrix, sums)
    d = sums - ones
    scaled = torch.where(d > 0, row / d.clamp(min=1e-12), torch.zeros_like(row))
    product = scaled
    for matrix in reversed(encoder):  # x^T R_ii, outermost (last) layer first
        product = product + _row_times(product, matrix)
    return product - scaled + row
