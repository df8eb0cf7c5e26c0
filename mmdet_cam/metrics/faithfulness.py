"""Faithfulness of a detection's map: does removing the pixels it ranks highest take the
detection away (deletion), does restoring them bring it back (insertion), and how much of the
map lands on other objects (object discrimination)?

Deletion and insertion are RISE's (Petsiuk et al., arXiv 1806.07421), adapted to detection as
D-RISE and ODAM do: each perturbed image is scored by a *tracked score* of the explained
detection (``mmdet_cam.boxes.tracked_score``), a smooth function of the detector's raw
candidates that follows the object even when its box moves, instead of re-identifying it after NMS.

ROAD (Rong et al., arXiv 2202.00449) replaces the removed pixels by pytorch_grad_cam's noisy
linear imputation from their neighbours instead, so that the removal itself leaks less of the
map's shape into the perturbed image (:func:`road_curve`, :func:`road_combined`).

Arrays and a callable in, numbers out: nothing here builds a model or knows how a map was made.
``score_fn`` maps a list of ``H x W x 3`` uint8 images to one score per image; :func:`tracker`
makes one from any callable that returns a detector's candidates per image (such as
``mmdet_cam.engine.candidates.CandidateScorer``).
"""
from typing import Callable, List, Optional, Sequence

import cv2
import numpy as np
import torch
from pytorch_grad_cam.metrics.perturbation_confidence import (
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer

from ..boxes import box_iou, box_mask, tracked_mask_score, tracked_score  # noqa: F401 (re-exported)

ScoreFn = Callable[[List[np.ndarray]], Sequence[float]]


def tracker(candidates_fn: Callable[[List[np.ndarray]], Sequence], box: Sequence[float],
            label: int, gated: bool = False, initial: Optional[float] = None) -> ScoreFn:
    """``score_fn`` of the detection ``(box, label)``: ``candidates_fn(images)`` gives per image
    an object with ``bboxes``, ``scores`` and ``labels`` (arrays or CPU tensors, e.g. mmdet's
    ``pred_instances`` of a run without thresholds or NMS)."""
    def score(images):
        return [tracked_score(np.asarray(c.bboxes), np.asarray(c.scores), np.asarray(c.labels),
                              box, label, gated, initial) for c in candidates_fn(images)]
    return score


def mask_tracker(candidates_fn: Callable[[List[np.ndarray]], Sequence], mask: np.ndarray,
                 label: int) -> ScoreFn:
    """``score_fn`` of a detection's *mask* (boolean, original-image pixels): per image the
    maximum over the candidates of ``label`` of mask IoU x probability (the mask analogue of
    :func:`tracker`). ``candidates_fn`` gives candidates with unpasted masks
    (``CandidateScorer(..., masks=True)``)."""
    def score(images):
        return [tracked_mask_score(c, mask, label) for c in candidates_fn(images)]
    return score


def substrate(image: np.ndarray, kind: str) -> np.ndarray:
    """What removed pixels become: ``'mean'`` (the image's mean colour) or ``'blur'`` (a
    strong Gaussian blur of the image, RISE's insertion start)."""
    if kind == 'mean':
        return np.broadcast_to(image.reshape(-1, 3).mean(axis=0).round(),
                               image.shape).astype(image.dtype)
    if kind == 'blur':
        sigma = max(image.shape[:2]) / 16
        return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)
    raise ValueError(f"substrate must be 'mean' or 'blur', got {kind!r}")


def perturbation_curve(image: np.ndarray, saliency: np.ndarray, score_fn: ScoreFn,
                       mode: str = 'deletion', steps: int = 20,
                       fill: Optional[str] = None, batch_size: int = 8) -> np.ndarray:
    """Scores of ``steps + 1`` images between the original and the fully perturbed one.

    Pixels are taken in the order of ``saliency`` (same height and width as ``image``, most
    salient first, ties in raster order). ``deletion`` replaces the top ``k / steps`` of them
    with ``fill`` (default ``'mean'``); ``insertion`` starts from ``fill`` (default ``'blur'``)
    and restores them from ``image``. ``score_fn`` gets the images in lists of ``batch_size``.
    """
    if saliency.shape != image.shape[:2]:
        raise ValueError(f'saliency {saliency.shape} and image {image.shape[:2]} differ in size')
    if mode not in ('deletion', 'insertion'):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    other = substrate(image, fill or ('mean' if mode == 'deletion' else 'blur'))
    start, end = (image, other) if mode == 'deletion' else (other, image)
    order = np.argsort(-saliency.reshape(-1), kind='stable')
    counts = np.linspace(0, order.size, steps + 1).round().astype(int)
    scores: List[float] = []
    for first in range(0, len(counts), batch_size):
        batch = []
        for count in counts[first:first + batch_size]:
            taken = np.zeros(order.size, bool)
            taken[order[:count]] = True
            taken = taken.reshape(saliency.shape)[..., None]
            batch.append(np.where(taken, end, start).astype(image.dtype))
        scores.extend(float(s) for s in score_fn(batch))
    return np.asarray(scores)


def detection_faithfulness(image: np.ndarray, saliency: np.ndarray, score_fn: ScoreFn,
                           steps: int = 20) -> dict:
    """``deletion`` and ``insertion`` AUCs of one detection's map (default substrates), and
    ``oa`` = insertion - deletion."""
    deletion = auc(perturbation_curve(image, saliency, score_fn, 'deletion', steps))
    insertion = auc(perturbation_curve(image, saliency, score_fn, 'insertion', steps))
    return dict(deletion=deletion, insertion=insertion, oa=insertion - deletion)


ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def road_curve(image: np.ndarray, saliency: np.ndarray, score_fn: ScoreFn,
               most_relevant_first: bool = True,
               percentiles: Sequence[float] = ROAD_PERCENTILES) -> np.ndarray:
    """Scores after pixels are removed by ROAD's noisy linear imputation, one per percentile,
    with pytorch_grad_cam's own removal: at ``p``, most-relevant-first removes the pixels at or
    above the map's ``p``-th percentile; least-relevant-first ranks by ``1 - map`` instead.
    ``saliency`` in [0, 1], the size of ``image``."""
    remove = RemoveMostRelevantFirst if most_relevant_first else RemoveLeastRelevantFirst
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32))
    mask = torch.from_numpy(np.asarray(saliency, np.float32))
    images = [remove(p, NoisyLinearImputer())(pixels, mask).numpy().transpose(1, 2, 0)
              for p in percentiles]
    return np.asarray(score_fn([np.clip(i, 0, 255).round().astype(np.uint8) for i in images]),
                      np.float64)


def road_combined(image: np.ndarray, saliency: np.ndarray, score_fn: ScoreFn,
                  percentiles: Sequence[float] = ROAD_PERCENTILES) -> float:
    """The library's ``ROADCombined``: the mean over percentiles of (least-relevant-first
    score - most-relevant-first score) / 2; higher is better."""
    most = road_curve(image, saliency, score_fn, True, percentiles)
    least = road_curve(image, saliency, score_fn, False, percentiles)
    return float(((least - most) / 2).mean())


def auc(curve: Sequence[float]) -> float:
    """Area under a curve sampled at equal steps over [0, 1] (trapezoids)."""
    curve = np.asarray(curve, dtype=np.float64)
    return float(((curve[1:] + curve[:-1]) / 2).mean()) if len(curve) > 1 else float('nan')


def object_discrimination(cam: np.ndarray, box: Sequence[float],
                          other_boxes: Sequence[Sequence[float]]) -> float:
    """Share of the map's mass on *other* objects: inside any of ``other_boxes`` and outside
    the explained ``box`` (ODAM's object discrimination; lower is more box-specific). 0 for an
    empty map or no other object."""
    total = float(cam.sum())
    if total <= 0 or len(other_boxes) == 0:
        return 0.0
    others = np.zeros(cam.shape, bool)
    for other in other_boxes:
        others |= box_mask(cam.shape, other)
    others &= ~box_mask(cam.shape, box)
    return float(cam[others].sum()) / total
