"""What a detection's map explains: a differentiable scalar per detection.

A target maps the detector's differentiable ``pred_instances`` (all detections of one image)
to a 1-D tensor with one value per detection; the engine back-propagates each value on its
own. Built-ins, by registry name:

* ``score``: the detection's reported score (default).
* ``logit``: the log-odds of that score, ``log(s / (1 - s))``. For sigmoid classifiers whose
  score is the class probability this is exactly the class logit; it does not saturate near 1.
* ``bbox``: one coordinate of the reported box (``coord`` = ``x1``, ``y1``, ``x2`` or ``y2``,
  original-image pixels), to explain where the box edge was put.
"""
import torch
from mmengine.structures import InstanceData
from torch import Tensor

from ..errors import UnknownNameError
from ..registry import CAM_TARGETS


@CAM_TARGETS.register_module(name='score')
class ScoreTarget:
    """The reported detection score."""

    def __call__(self, pred_instances: InstanceData) -> Tensor:
        return pred_instances.scores


@CAM_TARGETS.register_module(name='logit')
class LogitTarget:
    """Log-odds of the reported score (the class logit for plain sigmoid classifiers)."""

    def __init__(self, eps: float = 1e-6):
        self.eps = eps

    def __call__(self, pred_instances: InstanceData) -> Tensor:
        return torch.logit(pred_instances.scores, eps=self.eps)


@CAM_TARGETS.register_module(name='bbox')
class BoxCoordinateTarget:
    """One coordinate of the reported box: ``x1``, ``y1``, ``x2`` or ``y2``."""

    COORDS = ('x1', 'y1', 'x2', 'y2')

    def __init__(self, coord: str = 'x1'):
        if coord not in self.COORDS:
            raise UnknownNameError(
                f'unknown box coordinate {coord!r}; valid: {", ".join(self.COORDS)}')
        self.index = self.COORDS.index(coord)

    def __call__(self, pred_instances: InstanceData) -> Tensor:
        return pred_instances.bboxes[:, self.index]
