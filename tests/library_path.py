"""Run pytorch_grad_cam's own ``BaseCAM.__call__`` on an mmdet detector (test and benchmark helper).

This is the library's path: a fresh forward and a full backward per call, with detections
re-identified in every re-run by :class:`MatchedDetectionTarget`. ``DetCAM`` does not use it:
it is the reference the engine is checked against (the equivalence tests, the naive baseline
of ``benchmarks/speed.py``), so it lives beside the tests, not in the package.
"""
from typing import Callable, Optional

import torch
from mmdet.structures.bbox import bbox_overlaps
from mmengine.structures import InstanceData
from torch import Tensor, nn

from mmdet_cam.engine.capture import differentiable_inference
from mmdet_cam.engine.targets import ScoreTarget


class DetectorAsCAMModel(nn.Module):
    """``model(inputs)`` returns each image's differentiable ``pred_instances``.

    Args:
        detector: an mmdet detector.
        data_samples: the data samples of ``inputs`` (from the data preprocessor).
    """

    def __init__(self, detector: nn.Module, data_samples: list):
        super().__init__()
        self.detector = detector
        self.data_samples = data_samples

    def forward(self, inputs: Tensor):
        with differentiable_inference(self.detector):
            results = self.detector.predict(inputs, self.data_samples)
        return [result.pred_instances for result in results]


class MatchedDetectionTarget:
    """The target value of the detection that best matches a reference box of the same label
    (highest IoU), for pytorch_grad_cam targets that must survive a re-run of the model.

    Returns 0 (no gradient) when no detection of that label overlaps the reference box.
    """

    def __init__(self, bbox: Tensor, label: int, target: Optional[Callable] = None):
        self.bbox = torch.as_tensor(bbox, dtype=torch.float32).reshape(1, 4)
        self.label = int(label)
        self.target = target or ScoreTarget()

    def __call__(self, pred_instances: InstanceData) -> Tensor:
        values = self.target(pred_instances)
        same = pred_instances.labels == self.label
        if not bool(same.any()):
            return values.sum() * 0
        ious = bbox_overlaps(pred_instances.bboxes.detach(), self.bbox.to(values.device))[:, 0]
        ious = torch.where(same, ious, torch.full_like(ious, -1))
        best = int(ious.argmax())
        return values[best] if ious[best] > 0 else values.sum() * 0
