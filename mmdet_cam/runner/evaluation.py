"""Metrics of the maps ``DetCAMHook`` computes in mmdet's test loop, next to ``CocoMetric``:

    test_evaluator = [dict(type='CocoMetric', ...), dict(type='CAMLocalizationMetric'),
                      dict(type='CAMFaithfulnessMetric')]  # needs faithfulness_steps > 0

``CAMLocalizationMetric``: pointing game and energy pointing game of per-detection maps
against the ground-truth boxes, and against the ground-truth masks when the test pipeline
loads them (``LoadAnnotations(with_mask=True)``). ``CAMFaithfulnessMetric``: deletion /
insertion AUCs.

It scores the maps that ``DetCAMHook`` attached to the data samples (images the hook did not
explain are skipped). A detection counts when a ground-truth box of its class overlaps it with
IoU >= ``iou_thr``; ground-truth boxes are read from the data samples, which are in
original-image pixels when the test pipeline loads annotations after ``Resize``, as mmdet's
configs do. Results are gathered across processes by mmengine's evaluator.
"""
import logging
from typing import Optional, Sequence

import numpy as np
import torch
from mmdet.registry import METRICS
from mmdet.structures.bbox import bbox_overlaps
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from ..metrics import (
    box_area_share,
    energy_in_box,
    energy_in_mask,
    pointing_hit,
    pointing_hit_mask,
)


@METRICS.register_module()
class CAMLocalizationMetric(BaseMetric):
    """Means over matched detections of: ``pointing`` (map peak inside the GT box),
    ``energy`` (share of the map inside it) and ``chance`` (the box's share of the image, what a
    uniform map scores), plus the number of ``matched`` and ``unmatched`` detections; with GT
    masks also ``pointing_mask``, ``energy_mask`` and ``chance_mask``, the same against the
    matched object's mask."""

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
                row = (pointing_hit(cam, box), energy_in_box(cam, box),
                       box_area_share(cam.shape, box))
                if gt.get('masks') is not None:
                    mask = gt['masks'][[g]].to_ndarray()[0].astype(bool)
                    row += (pointing_hit_mask(cam, mask), energy_in_mask(cam, mask), mask.mean())
                rows.append(row)
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
        names = ['pointing', 'energy', 'chance']
        if matched.shape[1] > 3:
            names += ['pointing_mask', 'energy_mask', 'chance_mask']
        return dict(zip(names, map(float, matched.mean(axis=0))), matched=len(matched),
                    unmatched=len(rows) - len(matched))


@METRICS.register_module()
class CAMFaithfulnessMetric(BaseMetric):
    """Means over explained detections of ``deletion`` and ``insertion`` AUC and ``oa``
    (insertion - deletion), as measured by ``DetCAMHook(faithfulness_steps=N)``, and the number
    of ``explained`` detections. Every detection the hook explained counts, matched to a
    ground-truth box or not: faithfulness is about the model, not the labels."""

    default_prefix = 'cam'

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'cam_faithfulness' in sample:
                self.results.append([(row['deletion'], row['insertion'])
                                     for row in sample['cam_faithfulness']])

    def compute_metrics(self, results: list) -> dict:
        rows = np.array([row for image in results for row in image], np.float64).reshape(-1, 2)
        if len(rows) == 0:
            print_log('CAMFaithfulnessMetric: no faithfulness figures; set faithfulness_steps '
                      'of DetCAMHook above 0', logger='current', level=logging.WARNING)
            return dict(deletion=0.0, insertion=0.0, oa=0.0, explained=0)
        deletion, insertion = rows.mean(axis=0)
        return dict(deletion=float(deletion), insertion=float(insertion),
                    oa=float(insertion - deletion), explained=len(rows))
