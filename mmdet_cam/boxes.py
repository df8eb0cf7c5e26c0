"""Boxes as every layer sees them: which pixels a box covers, how boxes overlap, and how
strongly a detection (its box, or its mask) is still present among a detector's candidates.

Boxes are ``(x1, y1, x2, y2)`` in pixels; a pixel (or feature cell) is inside a box when its
centre is. Arrays in, arrays out; the overlaps are mmdet's ``bbox_overlaps``.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch


def box_mask(shape: Tuple[int, int], box: Sequence[float],
             cell: Tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Boolean ``shape`` mask of the pixels whose centre lies in ``box``; ``cell``: the
    ``(height, width)`` of one mask entry in the box's pixels (a feature grid over a larger
    input)."""
    h, w = shape
    x1, y1, x2, y2 = (float(v) for v in box)
    xs, ys = (np.arange(w) + 0.5) * cell[1], (np.arange(h) + 0.5) * cell[0]
    return ((ys >= y1) & (ys <= y2))[:, None] & ((xs >= x1) & (xs <= x2))[None, :]


def box_gaussian(shape: Tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """``[h, w]`` float32 in (0, 1]: a Gaussian on the centre of ``box`` with a quarter of its
    width and height as standard deviations (the benchmarks' ``centre`` baseline)."""
    x1, y1, x2, y2 = box
    ys, xs = np.mgrid[:shape[0], :shape[1]] + 0.5
    sx, sy = max((x2 - x1) / 4, 1), max((y2 - y1) / 4, 1)
    return np.exp(-((xs - (x1 + x2) / 2) ** 2 / (2 * sx ** 2)
                    + (ys - (y1 + y2) / 2) ** 2 / (2 * sy ** 2))).astype(np.float32)


def box_iou(boxes, box: Sequence[float]) -> np.ndarray:
    """IoU of each ``(x1, y1, x2, y2)`` row of ``boxes`` with ``box`` (float64)."""
    from mmdet.structures.bbox import bbox_overlaps  # importing mmdet.structures costs seconds
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    box = torch.as_tensor(np.asarray(box, dtype=np.float64).reshape(1, 4))
    return bbox_overlaps(boxes, box)[:, 0].numpy()


def tracked_score(bboxes, scores, labels, box: Sequence[float], label: int,
                  gated: bool = False, initial: Optional[float] = None) -> float:
    """Score of the explained detection ``(box, label)`` among a detector's candidates.

    Smooth form (default): the maximum over candidates of ``IoU(candidate, box) x`` the
    candidate's probability of ``label``. ``bboxes, scores, labels`` (arrays or CPU tensors)
    list every (candidate, class) pair, as a detector run without score threshold or NMS
    reports them.

    Gated form (``gated=True``, ODAM's evaluation code): the highest score among candidates of
    ``label`` whose IoU with ``box`` exceeds 0.5, divided by ``initial`` (the detection's own
    score) when given; 0 when there is none.
    """
    labels = np.asarray(labels).reshape(-1)
    same = labels == int(label)
    if not same.any():
        return 0.0
    ious = box_iou(np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)[same], box)
    probs = np.asarray(scores, dtype=np.float64).reshape(-1)[same]
    if not gated:
        return float((ious * probs).max())
    kept = probs[ious > 0.5]
    best = float(kept.max()) if len(kept) else 0.0
    return best / initial if initial else best


def mask_ious(candidates, masks: Sequence[np.ndarray],
              keep: Optional[torch.Tensor] = None, group: int = 16) -> torch.Tensor:
    """``[len(masks), len(candidates)]``: IoU of each candidate's mask with each of ``masks``
    (boolean, original-image pixels); only for the candidates ``keep`` selects (boolean,
    default all), 0 for the others.

    A candidate's mask is its thresholded ``mask_logits`` on its own grid (``mask_logits.py``'s
    fields, e.g. from ``CandidateScorer(..., masks=True)``), placed on the image by its box in
    both spaces (``mask_boxes`` on the grid, ``bboxes`` on the image); it is thresholded and
    placed once for all ``masks``. Each of ``masks`` is resampled onto that grid as the share
    of each cell it covers (RoIAlign), ``group`` masks at a time, so no candidate's mask is
    drawn at the image's size."""
    from torchvision.ops import roi_align

    from .engine.mask_logits import candidate_mask_logits
    grid_w = (candidates.mask_boxes[:, 2] - candidates.mask_boxes[:, 0]).float()
    grid_h = (candidates.mask_boxes[:, 3] - candidates.mask_boxes[:, 1]).float()
    boxes = candidates.bboxes.float()
    keep = (torch.ones(len(boxes), dtype=torch.bool) if keep is None else keep) & \
        (grid_w > 0.5) & (grid_h > 0.5) & (boxes[:, 2] - boxes[:, 0] >= 1) & \
        (boxes[:, 3] - boxes[:, 1] >= 1)
    ious = torch.zeros(len(masks), len(boxes))
    if not keep.any():
        return ious
    logits = candidate_mask_logits(candidates, keep).float()
    height, width = logits.shape[-2:]
    sx = (boxes[keep, 2] - boxes[keep, 0]) / grid_w[keep]  # image pixels per grid cell
    sy = (boxes[keep, 3] - boxes[keep, 1]) / grid_h[keep]
    x0 = boxes[keep, 0] - candidates.mask_boxes[keep, 0] * sx  # the grid's corner on the image
    y0 = boxes[keep, 1] - candidates.mask_boxes[keep, 1] * sy
    regions = torch.stack([torch.zeros_like(x0), x0, y0, x0 + width * sx, y0 + height * sy],
                          dim=1)
    samples = int(np.ceil(float(torch.maximum(sx, sy).max()))) + 1
    # candidates on one shared grid (a dense head's whole-image map) are resampled once; the
    # grid's corner, worked out from each candidate's box, differs by float rounding
    regions = (regions * 64).round() / 64
    if (regions == regions[0]).all():
        regions, index = regions[:1], torch.zeros(len(regions), dtype=torch.long)
    else:
        regions, index = torch.unique(regions, dim=0, return_inverse=True)
    inside = (logits > candidates.mask_thresholds[keep, None, None]).float().flatten(1)
    cell = sx * sy
    inside_area = inside.sum(1) * cell
    for first in range(0, len(masks), group):  # masks resampled together, a group at a time
        chosen = np.stack([np.asarray(m, np.float32) for m in masks[first:first + group]])
        covered = roi_align(torch.from_numpy(chosen)[None], regions, (height, width), 1.0,
                            samples, aligned=True).flatten(2)  # [regions, masks, cells]
        intersection = (inside @ covered[0].T if len(regions) == 1 else
                        torch.einsum('nk,nmk->nm', inside, covered[index])) * cell[:, None]
        union = inside_area[:, None] + torch.from_numpy(chosen.sum((1, 2))) - intersection
        ious[first:first + len(chosen), keep] = (intersection / union.clamp(min=1e-6)).T
    return ious


def best_mask_match(candidates, mask: np.ndarray, weights: torch.Tensor,
                    chunk: int = 16) -> float:
    """The maximum over candidates of :func:`mask_ious` with ``mask`` x the candidate's weight
    (``weights``: ``[len(candidates)]``, in [0, 1]; 0 leaves a candidate out).

    Exact, and cheap where candidates' masks are drawn on demand (RTMDet-Ins): candidates are
    read in chunks of ``chunk`` by falling weight, and reading stops once no remaining weight
    can beat the best product found (an IoU is at most 1)."""
    weights = torch.as_tensor(weights, dtype=torch.float32)
    order = torch.nonzero(weights > 0)[:, 0]
    order = order[weights[order].argsort(descending=True)]
    best = 0.0
    for first in range(0, len(order), chunk):
        index = order[first:first + chunk]
        if float(weights[index[0]]) <= best:
            break
        keep = torch.zeros(len(weights), dtype=torch.bool)
        keep[index] = True
        ious = mask_ious(candidates, [mask], keep)[0]
        best = max(best, float((ious * weights)[index].max()))
    return best


def tracked_mask_score(candidates, mask: np.ndarray, label: int) -> float:
    """Score of a detection's *mask* among a detector's candidates (the mask analogue of
    :func:`tracked_score`): the maximum over candidates of ``label`` of :func:`mask_ious` x
    the candidate's probability."""
    same = torch.as_tensor(candidates.labels) == int(label)
    return best_mask_match(candidates, mask, candidates.scores.float() * same)
