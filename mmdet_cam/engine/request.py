"""What is explained: one :class:`Request` per call, built once from the user's options.

A request pairs *which boxes* are explained with *the value* explained for each of them:

* the boxes (a box choice): the reported detections that a selection keeps
  (:class:`Detections`), boxes a user names or the same candidates for another class
  (:class:`NamedBoxes`), or candidates held fixed across changed weights
  (``fixed_candidates.FixedCandidates``);
* the value (a target, ``targets.py``): the score, its logit, a box coordinate, the mask.

Every box choice reads the request's target from the same differentiable candidates, so a
named box or another class explains the value that was asked, not always the score. What the
forward has to do is declared here too, not read from flags: every raw candidate
(``every_candidate``), named boxes as RoIs of a two-stage detector (``proposals``), the mask
heads' logits (``reads_masks``).
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from ..errors import BadInputError, UnsupportedModelError

Target = Callable[[InstanceData], Tensor]


def target_name(target: Target) -> str:
    """The name a target is recorded and refused by (``score``, ``logit``, ``bbox``, ``mask``,
    or a callable's own ``name`` / class name)."""
    return getattr(target, 'name', None) or type(target).__name__


class Detections:
    """The reported detections that ``select`` (detections -> indices, highest score first)
    keeps: mmdet's own post-processing (score threshold, NMS) runs as usual."""

    every_candidate = False
    proposals = None
    one_label = None

    def __init__(self, select: Callable[[InstanceData], Tensor]):
        self.select = select

    def explained_labels(self, predict: Callable[[], InstanceData]) -> Optional[List[int]]:
        """The labels whose values are explained (``predict``: a plain forward's detections)."""
        pred = predict()
        return pred.labels[self.select(pred)].tolist()

    def pick(self, pred: InstanceData, head_outputs: List[Tensor], target: Target):
        """``(values, detections)``: one differentiable value per explained detection."""
        keep = self.select(pred)
        return target(pred)[keep], pred[keep]


class NamedBoxes:
    """The raw candidates that best match boxes a user names (a ground-truth box, a box drawn
    by hand), read under ``every_candidate`` so that no score threshold or NMS hides a weak
    candidate (and, for two-stage detectors, with each named box as a RoI: ``proposals``).

    For each named box (original-image pixels) the candidate with the highest IoU x
    probability of the named class (of any class where the label is None) is explained, for
    that class. The explained detections carry ``named_bboxes`` and ``ious`` (the candidate's
    IoU with its named box): "what the model thought here". With ``by_iou`` the candidate
    with the highest IoU is taken whatever its score: given a detection's own box, that is the
    same candidate's score for another class (exactly so where box regression does not depend
    on the class: the same box comes back for every class). With ``versus`` (one class per
    box) the value explained is the candidate's value for its class *minus* its value for
    that class, matched the same way: the evidence for one class over the other
    (``versus_labels`` and ``versus_scores`` are recorded).

    Args:
        bboxes: ``[N, 4]`` boxes in original-image pixels.
        labels: one class id (or None: any) per box.
        by_iou: match by IoU alone (another class of the same candidate).
        versus: one class per box to contrast with.
        as_proposals: also make each box a RoI of a two-stage detector (named boxes; not
            for another class of a detection, whose RoI is already there).
    """

    every_candidate = True

    def __init__(self, bboxes, labels: Sequence[Optional[int]], by_iou: bool = False,
                 versus: Optional[Sequence[int]] = None, as_proposals: bool = False):
        self.bboxes = torch.as_tensor(bboxes, dtype=torch.float32).reshape(-1, 4)
        self.labels, self.by_iou = list(labels), by_iou
        self.versus = None if versus is None else list(versus)
        self.proposals = self.bboxes if as_proposals else None
        # one class asked of every box (another class of each detection, named boxes of one
        # class): heads that keep only each candidate's top class report that one instead
        self.one_label = (self.labels[0] if self.versus is None and len(set(self.labels)) == 1
                          and self.labels[0] is not None else None)

    def explained_labels(self, predict=None) -> Optional[List[int]]:
        """The labels whose values are explained (None: any label)."""
        labels = self.labels + (self.versus or [])
        return None if None in labels else labels

    def pick(self, pred: InstanceData, head_outputs: List[Tensor], target: Target):
        from mmdet.structures.bbox import bbox_overlaps
        if not len(pred):
            raise UnsupportedModelError('the detector returned no candidates for this image')
        ious = bbox_overlaps(self.bboxes.to(pred.bboxes.device), pred.bboxes.detach())
        index = self._best(pred, ious, self.labels)
        detections = pred[index]
        detections.named_bboxes = self.bboxes.to(pred.bboxes.device)
        detections.ious = ious[torch.arange(len(index)), index]
        values = target(pred)
        if self.versus is None:
            return values[index], detections
        other = self._best(pred, ious, self.versus)
        detections.versus_labels = pred.labels[other]
        detections.versus_scores = pred.scores[other].detach()
        return values[index] - values[other], detections

    def _best(self, pred: InstanceData, ious: Tensor, labels) -> Tensor:
        """Per named box, the index of its best candidate of the given label."""
        scores = pred.scores.detach()
        best = []
        for k, label in enumerate(labels):
            match = ious[k] + 1e-6 * scores if self.by_iou else ious[k] * scores
            if label is not None:
                if not bool((pred.labels == label).any()):
                    raise UnsupportedModelError(
                        f'the detector has no candidate of class {label} in this image (where '
                        "its post-processing keeps only each candidate's top class, ask one "
                        'class at a time)')
                match = torch.where(pred.labels == label, match, torch.full_like(match, -1))
            best.append(int(match.argmax()))
        return torch.as_tensor(best, device=pred.scores.device)


# targets whose value is a difference of two classes' values of one candidate when contrasted
_CONTRASTABLE = ('score', 'logit')


@dataclass(frozen=True)
class Request:
    """Which boxes are explained, and the value explained for each.

    Attributes:
        boxes: a box choice (:class:`Detections`, :class:`NamedBoxes`, ``FixedCandidates``):
            ``pick(pred, head_outputs, target) -> (values, detections)``.
        target: detections -> one differentiable value per detection (``targets.py``).
    """
    boxes: object
    target: Target

    def __post_init__(self):
        name = self.target_name
        if self.reads_masks and self.boxes.every_candidate:
            raise BadInputError("the mask target explains the reported detections' masks: not "
                                'with named boxes or another class')
        if getattr(self.boxes, 'versus', None) is not None and name not in _CONTRASTABLE:
            raise BadInputError(f'contrast explains one class\'s value minus another\'s: it needs '
                                f'the score or logit target, not {name}')

    @property
    def target_name(self) -> str:
        return target_name(self.target)

    @property
    def reads_masks(self) -> bool:
        """Whether the mask heads' logits are recorded in the forward (the mask target), and
        re-runs follow each detection by its mask."""
        return getattr(self.target, 'reads_masks', False)

    @property
    def every_candidate(self) -> bool:
        """Whether the forward reports every raw candidate (no threshold, no NMS)."""
        return self.boxes.every_candidate

    @property
    def one_label(self) -> Optional[int]:
        """The one class every box is explained for, where the forward must report each
        candidate's score for it (``every_candidate.scores_of_class``); None otherwise."""
        return getattr(self.boxes, 'one_label', None)

    @property
    def proposals(self) -> Optional[Tensor]:
        """Boxes (original-image pixels) that a two-stage detector must take as RoIs."""
        return self.boxes.proposals

    @property
    def reported_detections(self) -> bool:
        """Whether the boxes are reported detections, chosen by a selection (held fixed or
        not: ``FixedCandidates`` of them, in the sanity check)."""
        return isinstance(getattr(self.boxes, 'boxes', self.boxes), Detections)

    @property
    def contrast(self) -> bool:
        return getattr(self.boxes, 'versus', None) is not None

    def explained_labels(self, predict: Callable[[], InstanceData]) -> Optional[List[int]]:
        """The labels whose values are read (None: any); ``predict`` gives a plain forward's
        detections where the boxes are chosen among them."""
        return self.boxes.explained_labels(predict)

    def values(self, pred: InstanceData, head_outputs: List[Tensor]):
        """``(values, detections)`` of one forward's differentiable ``pred_instances``
        (``head_outputs``: the box heads' raw outputs, see ``capture.FinalHeadOutputs``)."""
        return self.boxes.pick(pred, head_outputs, self.target)


def default_fuse(target: Target) -> str:
    """``CAMSettings.fuse``'s default for a target: ``'own'`` for masks (a mask's gradient
    reaches every pyramid level through the mask feature branch, and the coarse levels blur
    its map), ``'mean'`` otherwise."""
    return 'own' if getattr(target, 'reads_masks', False) else 'mean'
