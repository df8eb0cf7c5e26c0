"""The same raw candidates explained in models of changed weights (the sanity check's
randomised copies): :class:`FixedCandidates`, a box choice of a
:class:`~mmdet_cam.engine.request.Request`."""
from typing import List, Optional

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from ..errors import UnsupportedModelError


class FixedCandidates:
    """The raw candidates behind some detections, as fixed functions of the box heads' raw
    outputs; a box choice of a :class:`~mmdet_cam.engine.request.Request`.

    The first call (with the original model) explains the candidates that ``boxes`` (another
    box choice, e.g. ``request.Detections``) picks, with the request's target values, and
    records for each the gradient ``w`` of its value with respect to the raw head outputs
    ``T``. Later calls (with models of changed weights, same image) explain ``sum(w * T')``:
    the same candidates (same raw positions, same weights), whatever the new model scores
    them. Its gradient w.r.t. the features equals the original
    value's at the original weights (chain rule), so the maps of both calls compare like
    with like.
    """

    every_candidate = False
    proposals = None

    def __init__(self, boxes):
        self.boxes = boxes
        self.weights: Optional[List[List[Tensor]]] = None
        self.detections: Optional[InstanceData] = None

    def explained_labels(self, predict=None) -> None:
        """Any label: the graphs of all prompt chunks are kept."""
        return None

    def pick(self, pred: InstanceData, head_outputs: List[Tensor], target):
        if not head_outputs:
            raise UnsupportedModelError(
                'no raw box-head outputs were recorded (no module named bbox_head ran): the '
                'candidates of this detector cannot be held fixed')
        if self.weights is None:
            values, self.detections = self.boxes.pick(pred, head_outputs, target)
            self.weights = [self._gradient(value, head_outputs) for value in values]
            return values, self.detections
        shapes = [tuple(t.shape) for t in head_outputs]
        expected = [tuple(w.shape) for w in self.weights[0]] if self.weights else shapes
        if shapes != expected:
            raise UnsupportedModelError(
                'the raw candidates changed in number with the new weights (the head now '
                f'returns tensors of shapes {shapes}), so they cannot be held fixed')
        values = [sum((w * t).sum() for w, t in zip(weights, head_outputs))
                  for weights in self.weights]
        return (torch.stack(values) if values else head_outputs[0].new_zeros(0)), self.detections

    @staticmethod
    def _gradient(value: Tensor, head_outputs: List[Tensor]) -> List[Tensor]:
        grads = torch.autograd.grad(value, head_outputs, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(t) if g is None else g.detach()
                for g, t in zip(grads, head_outputs)]
