"""A detector's raw candidates for batches of images: the callable behind faithfulness metrics.

:class:`CandidateScorer` runs the detector with its final head's score threshold removed, NMS
made a no-op (IoU threshold 1) and the per-image cap lifted, so every (candidate, class) pair
it scores comes back; ``mmdet_cam.metrics.faithfulness.tracker`` turns that into the
tracked score of one detection in perturbed images.
"""
import contextlib
import copy
from typing import Iterator, List, Sequence

import numpy as np
import torch
from mmengine.structures import InstanceData
from torch import nn

from ..model.detector import preprocess
from ..model.layers import predicting_detector


@contextlib.contextmanager
def every_candidate(model: nn.Module, cap: int = 100000) -> Iterator[None]:
    """While active, the final head of ``model`` reports all of its candidates."""
    detector = predicting_detector(model)
    head = getattr(detector, 'roi_head', None) or getattr(detector, 'bbox_head', None)
    original = getattr(head, 'test_cfg', None)
    if not isinstance(original, dict):
        yield
        return
    opened = copy.deepcopy(original)
    _open(opened, cap)
    head.test_cfg = opened
    try:
        yield
    finally:
        head.test_cfg = original


def _open(cfg: dict, cap: int) -> None:
    for key, value in cfg.items():
        if key == 'score_thr':
            cfg[key] = 0.0
        elif key in ('iou_threshold', 'iou_thr') and isinstance(value, float):
            cfg[key] = 1.0
        elif key == 'max_per_img':
            cfg[key] = cap
        elif isinstance(value, dict):
            _open(value, cap)


class CandidateScorer:
    """Raw candidates of ``model`` for lists of BGR images (``pipeline``: the model's test
    pipeline, e.g. ``DetCAM.pipeline``), in original-image pixels."""

    def __init__(self, model: nn.Module, pipeline, batch_size: int = 8):
        self.model, self.pipeline, self.batch_size = model, pipeline, batch_size

    def __call__(self, images: Sequence[np.ndarray]) -> List[InstanceData]:
        results = []
        for first in range(0, len(images), self.batch_size):
            chunk = images[first:first + self.batch_size]
            inputs, samples = preprocess(self.model, self.pipeline, chunk)
            with torch.no_grad(), every_candidate(self.model):
                results += [s.pred_instances.cpu() for s in self.model.predict(inputs, samples)]
        return results
