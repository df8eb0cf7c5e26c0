"""Boxes as every layer sees them: which pixels a box covers, how boxes overlap, and how
strongly a detection is still present among a detector's candidates.

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
