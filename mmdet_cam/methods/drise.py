"""D-RISE (Petsiuk et al., CVPR 2021, arXiv 2006.03204): black-box saliency of each detection
from the detector's outputs on randomly masked copies of the image; no gradients needed.

Each mask is a coarse random grid (``grid`` x ``grid`` cells, each kept with probability ``p``),
upsampled bilinearly (``upsample='nearest'``: hard-edged cells) to one cell more than the image
and cropped at a random sub-cell shift, as in RISE. It multiplies the image as the test pipeline
resized it, before the data preprocessor (``MaskedCandidates``): a mask of whole cells is as
coarse at that size as at the original one, and nothing per mask is made at the original size
(a photo of 12 megapixels would cost more per mask than the network). The maps are made at that
size and mapped onto the original image as every other method's maps.

A mask's weight for a detection is the best *similarity* among the masked image's raw
candidates (no score threshold, no NMS): IoU x cosine of class-probability vectors; for the
mask target, the IoU of the detection's mask with each candidate's (``boxes.mask_ious``: the
candidates' unpasted masks; only candidates whose box overlaps a detection's) instead of the
boxes'. mmdet
reports one probability per candidate and class, so both vectors are completed as the
reference implementation (``vision-explanation-methods``' ``expand_class_scores``) completes
them: the score at the label and ``(1 - score) / C`` at the other ``C`` entries; objectness is
folded into mmdet's scores. Saliency = sum of masks x weights minus the mean weight x sum of
masks (the reference's baseline), min-max scaled. Every detection of the image is explained
from the same masks, the detector runs on batches of masked images, and memory is bounded by
``batch_size``.
"""
import sys
from typing import Callable, Iterator, Optional, Tuple

import cv2
import numpy as np
import torch
from mmengine.utils import ProgressBar

from ..boxes import mask_ious
from ..engine.candidates import CandidateScorer, MaskedCandidates
from ..engine.fixed_candidates import FixedCandidates
from ..engine.request import Request
from ..engine.session import BoxCAMs, Session
from ..model.detector import num_classes_of
from ..registry import CAM_METHODS
from .kinds import MethodKind
from .pipeline import ReRunningPipeline


class BlackBoxPipeline(ReRunningPipeline):
    """The detector on perturbed copies of the image, no layers and no gradients (D-RISE):
    the reported detections, followed by box (or mask) among each copy's raw candidates."""

    kind = MethodKind.BLACK_BOX
    uses_layers = False

    def refusal(self, request: Request) -> str:
        return super().refusal(request) or (
            '' if request.reported_detections else
            'it explains the reported detections only (not named boxes or another class)')

    def explain(self, session: Session, request: Request) -> BoxCAMs:
        detections = _detections(session, request.boxes)
        masks = request.reads_masks
        scorer = CandidateScorer(session.model, session.pipeline,
                                 getattr(self.method, 'batch_size', 8),
                                 getattr(self.method, 'dtype', None), masks=masks)
        masked = MaskedCandidates(scorer, session.image)
        maps = self.method(masked.size, detections.bboxes.numpy(), detections.scores.numpy(),
                           detections.labels.numpy(), masked, num_classes_of(session.model),
                           detections.masks.numpy() if masks else None)
        return BoxCAMs(detections, maps, masked.sample,
                       [[] for _ in range(len(detections))])


def _detections(session: Session, boxes):
    """The detections to explain: the selection's, or, for ``FixedCandidates`` (the sanity
    check), those of the first call, followed in a changed model by box and class."""
    if not isinstance(boxes, FixedCandidates):
        return session.detect(boxes.select)
    if boxes.detections is None:
        boxes.detections = session.detect(boxes.boxes.select)
    return boxes.detections


@CAM_METHODS.register_module(name='drise')
class DRISE:
    """D-RISE maps for given detections.

    Args:
        num_masks: masks per image (more masks, less noise).
        grid: mask cells per side.
        p: probability that a cell is kept.
        batch_size: masked images per forward pass.
        seed: the masks' random seed (same seed, same maps).
        progress: show a progress bar over the masks.
        upsample: ``'bilinear'`` (the paper's smooth masks) or ``'nearest'`` (hard-edged
            cells, as ``vision-explanation-methods`` makes them).
        dtype: ``'float32'``, or the masked forwards under autocast at ``'bfloat16'`` (CPUs
            with bfloat16 instructions) or ``'float16'`` (CUDA): faster, and the maps agree
            with float32's at the same seed to the degree ``benchmarks/drise.py`` measures.
        mask_candidate_iou: with the mask target, only candidates whose box overlaps a
            detection's box by more than this IoU (default 0: at all) have their masks
            compared with its mask (a candidate's mask lies around its box; drawing the masks
            of thousands of candidates for every copy cost several times the detector);
            ``None``: every candidate's.
    """

    DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

    UPSAMPLING = {'bilinear': cv2.INTER_LINEAR, 'nearest': cv2.INTER_NEAREST}

    kind = MethodKind.BLACK_BOX  # BlackBoxPipeline runs it on the image, no gradients

    def __init__(self, num_masks: int = 2000, grid: int = 16, p: float = 0.5,
                 batch_size: int = 16, seed: int = 0, progress: bool = True,
                 upsample: str = 'bilinear', dtype: str = 'float32',
                 mask_candidate_iou: Optional[float] = 0.0):
        if num_masks < 1 or grid < 1 or batch_size < 1 or not 0 < p < 1:
            raise ValueError('drise needs num_masks, grid and batch_size >= 1 and 0 < p < 1, '
                             f'got {num_masks}, {grid}, {batch_size} and {p}')
        if upsample not in self.UPSAMPLING:
            raise ValueError(f"upsample must be one of {', '.join(self.UPSAMPLING)}, got "
                             f'{upsample!r}')
        if dtype not in self.DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(self.DTYPES)}, got {dtype!r}")
        self.interpolation = self.UPSAMPLING[upsample]
        self.dtype = self.DTYPES[dtype]
        self.num_masks, self.grid, self.p = num_masks, grid, p
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.mask_candidate_iou = mask_candidate_iou

    def masks(self, height: int, width: int) -> Iterator[np.ndarray]:
        """Batches of ``[B, height, width]`` float32 masks in [0, 1], ``num_masks`` in all."""
        rng = np.random.default_rng(self.seed)
        cell_h, cell_w = -(-height // self.grid), -(-width // self.grid)
        size = ((self.grid + 1) * cell_w, (self.grid + 1) * cell_h)  # cv2: (width, height)
        for first in range(0, self.num_masks, self.batch_size):
            count = min(self.batch_size, self.num_masks - first)
            cells = (rng.random((count, self.grid, self.grid)) < self.p).astype(np.float32)
            shifts = rng.integers(0, (cell_h, cell_w), size=(count, 2))
            yield np.stack([
                cv2.resize(c, size, interpolation=self.interpolation)[dy:dy + height,
                                                                      dx:dx + width]
                for c, (dy, dx) in zip(cells, shifts)])

    def __call__(self, size: Tuple[int, int], bboxes: np.ndarray, scores: np.ndarray,
                 labels: np.ndarray, candidates_fn: Callable, num_classes: int,
                 instance_masks: Optional[np.ndarray] = None) -> np.ndarray:
        """``[N, height, width]`` maps in [0, 1] for the ``N`` detections ``(bboxes, scores,
        labels)`` of an image, from masks of ``size = (height, width)``. ``candidates_fn(masks)``
        gives per ``[height, width]`` mask the raw candidates (``bboxes``, ``scores``,
        ``labels``; the same pixels as ``bboxes``) of the image under it, e.g. a
        ``MaskedCandidates``. With ``instance_masks`` (``[N, H, W]`` boolean, the pixels of
        ``bboxes``), the detections' masks are explained: the candidates carry unpasted
        masks."""
        height, width = size
        weighted = np.zeros((len(bboxes), height, width), np.float64)
        total = np.zeros((height, width), np.float64)
        weight_sum = np.zeros(len(bboxes), np.float64)
        bar = ProgressBar(self.num_masks, file=sys.stderr) if self.progress else None
        for masks in self.masks(height, width):
            weights = np.stack([similarity(bboxes, scores, labels, c, num_classes,
                                           instance_masks, self.mask_candidate_iou)
                                for c in candidates_fn(masks)], axis=1)  # [N, B]
            weighted += np.tensordot(weights, masks, axes=1)
            total += masks.sum(axis=0)
            weight_sum += weights.sum(axis=1)
            if bar is not None:
                bar.update(len(masks))
        if bar is not None:
            sys.stderr.write('\n')
        saliency = weighted - (weight_sum / self.num_masks)[:, None, None] * total
        low = saliency.min(axis=(1, 2), keepdims=True)
        span = saliency.max(axis=(1, 2), keepdims=True) - low
        return np.where(span > 0, (saliency - low) / np.where(span > 0, span, 1), 0).astype(
            np.float32)


def similarity(bboxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, candidates,
               num_classes: int, instance_masks: Optional[np.ndarray] = None,
               mask_candidate_iou: Optional[float] = None) -> np.ndarray:
    """Per detection, the best IoU (of boxes, or of ``instance_masks`` with the candidates'
    masks) x class-vector cosine over ``candidates`` (0 if none). With ``instance_masks``,
    only the candidates whose box overlaps a detection's by more than ``mask_candidate_iou``
    (``None``: all) are compared."""
    boxes = np.asarray(candidates.bboxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0 or len(bboxes) == 0:
        return np.zeros(len(bboxes))
    cosine = class_cosine(np.asarray(scores, np.float64), np.asarray(labels),
                          np.asarray(candidates.scores, np.float64),
                          np.asarray(candidates.labels), num_classes)
    box_ious = pairwise_iou(np.asarray(bboxes, np.float64), boxes)
    if instance_masks is None:
        return (box_ious * cosine).max(axis=1)
    near = None if mask_candidate_iou is None else torch.from_numpy(
        (box_ious > mask_candidate_iou).any(axis=0))
    return (mask_ious(candidates, instance_masks, near).numpy() * cosine).max(axis=1)


def class_cosine(scores_a, labels_a, scores_b, labels_b, num_classes: int) -> np.ndarray:
    """``[A, B]`` cosines of completed class vectors (``num_classes + 1`` entries: the score at
    the label, ``(1 - score) / num_classes`` elsewhere)."""
    rest_a = (1 - scores_a) / num_classes
    rest_b = (1 - scores_b) / num_classes
    same = labels_a[:, None] == labels_b[None]
    rests = np.outer(rest_a, rest_b)
    dot = np.where(same, np.outer(scores_a, scores_b) + num_classes * rests,
                   np.outer(scores_a, rest_b) + np.outer(rest_a, scores_b)
                   + (num_classes - 1) * rests)
    norm_a = np.sqrt(scores_a ** 2 + num_classes * rest_a ** 2)
    norm_b = np.sqrt(scores_b ** 2 + num_classes * rest_b ** 2)
    return dot / np.maximum(np.outer(norm_a, norm_b), 1e-12)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, B]`` IoUs of two sets of ``(x1, y1, x2, y2)`` boxes (mmdet's ``bbox_overlaps``)."""
    from mmdet.structures.bbox import bbox_overlaps
    return bbox_overlaps(torch.as_tensor(a, dtype=torch.float64),
                         torch.as_tensor(b, dtype=torch.float64)).numpy()
