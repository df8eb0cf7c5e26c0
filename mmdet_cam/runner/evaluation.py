"""``CAMLocalizationMetric``: pointing game and energy pointing game of per-detection maps
against the ground-truth boxes, next to ``CocoMetric`` in ``test_evaluator``.

    test_evaluator = [dict(type='CocoMetric', ...), dict(type='CAMLocalizationMetric')]

It scores the maps that ``DetCAMHook`` attached to the data samples (images the hook did not
explain are skipped). A detection counts when a ground-truth box of its class overlaps it with
IoU >= ``iou_thr``; ground-truth boxes are read from the data samples, which are in
original-image pixels when the test pipeline loads annotations after ``Resize``, as mmdet's
configs do. Results are gathered across processes by mmengine's evaluator.
"""
from typing import Optional, Sequence

import numpy as np
import torch
from mmdet.registry import METRICS
from mmdet.structures.bbox import bbox_overlaps
from mmengine.evaluator import BaseMetric

from ..metrics import box_area_share, energy_in_box, pointing_hit


@METRICS.register_module()
class CAMLocalizationMetric(BaseMetric):
    """Means over matched detections of: ``pointing`` (map peak inside the GT box),
    ``energy`` (share of the map inside it) and ``chance`` (the box's share of the image, what a
    uniform map scores), plus the number of ``matched`` and ``unmatched`` detections."""

    default_prefix = 'cam'

    def __init__(self, iou_thr: float = 0.5, collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.iou_thr = iou_thr

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'cams' not in sample:
                continue
            detections, gt = sample['cam_detections'], sample['gt_instances']
            rows = []
            for k, g in enumerate(self._match(detections, gt)):
                if g < 0:
                    rows.append(None)
                    continue
                box = gt['bboxes'][g].tolist()
                cam = sample['cams'][k]
                rows.append((pointing_hit(cam, box), energy_in_box(cam, box),
                             box_area_share(cam.shape, box)))
            self.results.append(rows)  # one entry per image, as collect_results expects

    def _match(self, detections: dict, gt: dict) -> list:
        boxes = torch.as_tensor(detections['bboxes']).float().cpu().reshape(-1, 4)
        gt_boxes = torch.as_tensor(gt['bboxes']).float().cpu().reshape(-1, 4)
        if len(boxes) == 0 or len(gt_boxes) == 0:
            return [-1] * len(boxes)
        ious = bbox_overlaps(boxes, gt_boxes)
        labels = torch.as_tensor(detections['labels']).cpu()
        same = labels[:, None] == torch.as_tensor(gt['labels']).cpu()[None]
        ious[~same] = 0
        best, index = ious.max(dim=1)
        return [int(i) if b >= self.iou_thr else -1 for b, i in zip(best, index)]

    def compute_metrics(self, results: list) -> dict:
        rows = [row for image in results for row in image]
        matched = np.array([row for row in rows if row is not None], dtype=np.float64)
        if len(matched) == 0:
            return dict(pointing=0.0, energy=0.0, chance=0.0, matched=0,
                        unmatched=len(rows))
        pointing, energy, chance = matched.mean(axis=0)
        return dict(pointing=float(pointing), energy=float(energy), chance=float(chance),
                    matched=len(matched), unmatched=len(rows) - len(matched))
