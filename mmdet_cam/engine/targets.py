"""What a detection's map explains: a differentiable scalar per detection.

A target maps the detector's differentiable ``pred_instances`` (all detections of one image)
to a 1-D tensor with one value per detection; the engine back-propagates each value on its
own. Built-ins, by registry name:

* ``score``: the detection's reported score (default); a saturated score (within 1e-4 of 1,
  whose gradient is 0 or nearly) is explained by its log-odds instead, with a
  ``SaturatedScoreWarning`` (``saturation.py``).
* ``logit``: the log-odds of that score, ``log(s / (1 - s))``. For sigmoid classifiers whose
  score is the class probability this is exactly the class logit; its gradient is the
  logit's even where the score is exactly 1 (``saturation.py``).
* ``bbox``: one coordinate of the reported box (``coord`` = ``x1``, ``y1``, ``x2`` or ``y2``,
  original-image pixels), to explain where the box edge was put.
* ``mask``: for instance segmentors, the sum of the detection's own mask logits over the
  pixels of its predicted mask, at the mask head's resolution (Seg-Grad-CAM's "all pixels of
  the object", per instance); ``region='box'``: over its box instead (see ``mask_logits.py``).
"""
import torch
from mmengine.structures import InstanceData
from torch import Tensor

from ..errors import UnknownNameError, UnsupportedModelError
from ..registry import CAM_TARGETS
from .saturation import log_odds, saturated


@CAM_TARGETS.register_module(name='score')
class ScoreTarget:
    """The reported detection score."""

    name = 'score'

    def __call__(self, pred_instances: InstanceData) -> Tensor:
        scores = pred_instances.scores
        full = saturated(scores)
        return torch.where(full, log_odds(scores), scores) if full.any() else scores


@CAM_TARGETS.register_module(name='logit')
class LogitTarget:
    """Log-odds of the reported score (the class logit for plain sigmoid classifiers)."""

    name = 'logit'

    def __call__(self, pred_instances: InstanceData) -> Tensor:
        return log_odds(pred_instances.scores)


@CAM_TARGETS.register_module(name='bbox')
class BoxCoordinateTarget:
    """One coordinate of the reported box: ``x1``, ``y1``, ``x2`` or ``y2``."""

    COORDS = ('x1', 'y1', 'x2', 'y2')
    name = 'bbox'

    def __init__(self, coord: str = 'x1'):
        if coord not in self.COORDS:
            raise UnknownNameError(
                f'unknown box coordinate {coord!r}; valid: {", ".join(self.COORDS)}')
        self.coord, self.index = coord, self.COORDS.index(coord)

    def describe(self) -> dict:
        """What a run's record says of this target beside its name."""
        return dict(bbox_coord=self.coord)

    def __call__(self, pred_instances: InstanceData) -> Tensor:
        return pred_instances.bboxes[:, self.index]


@CAM_TARGETS.register_module(name='mask')
class MaskTarget:
    """The detection's own mask logits summed over its predicted mask (``region='mask'``) or
    its box (``region='box'``), at the mask head's resolution. A detection whose mask is empty
    there is explained by its highest logit."""

    REGIONS = ('mask', 'box')
    name = 'mask'
    reads_masks = True  # the engine records the mask heads' logits (mask_logits.py)

    def __init__(self, region: str = 'mask'):
        if region not in self.REGIONS:
            raise UnknownNameError(
                f'unknown mask region {region!r}; valid: {", ".join(self.REGIONS)}')
        self.region = region

    def describe(self) -> dict:
        """What a run's record says of this target beside its name."""
        return dict(mask_region=self.region)

    def __call__(self, pred_instances: InstanceData) -> Tensor:
        if not len(pred_instances):
            return pred_instances.scores.new_zeros((0,))
        if 'mask_logits' not in pred_instances:
            raise UnsupportedModelError('the detector reported no per-instance mask maps')
        logits = pred_instances.mask_logits
        if self.region == 'box':
            pixels = _in_boxes(pred_instances.mask_boxes, logits.shape[-2:])
        else:
            pixels = logits.detach() > pred_instances.mask_thresholds[:, None, None]
        empty = ~pixels.flatten(1).any(1)
        if empty.any():  # its highest logit
            top = logits.detach().flatten(1).argmax(1)
            flat = pixels.flatten(1).clone()
            flat[empty, top[empty]] = True
            pixels = flat.view_as(pixels)
        return (logits * pixels).flatten(1).sum(1)


def _in_boxes(boxes: Tensor, size) -> Tensor:
    """``[N, h, w]`` boolean: the pixels whose centres lie in each box."""
    height, width = size
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)[None, :, None] + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)[None, None, :] + 0.5
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
    return (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
