"""Metrics of the maps ``DetCAMHook`` computes in mmdet's test loop, next to ``CocoMetric``:

    test_evaluator = [dict(type='CocoMetric', ...), dict(type='CAMLocalizationMetric'),
                      dict(type='CAMFaithfulnessMetric')]  # needs faithfulness_steps > 0

``CAMLocalizationMetric``: pointing game and energy pointing game of per-detection maps
against the ground-truth boxes, and against the ground-truth masks when the test pipeline
loads them (``LoadAnnotations(with_mask=True)``), and against the pixels that decided each
object when an annotation file records them (``evidence_file``: COCO annotations with an
``evidence`` RLE mask each, as ``tools/make_shapes_dataset.py --kind evidence`` writes them).
``CAMFaithfulnessMetric``: deletion / insertion AUCs.

It scores the maps that ``DetCAMHook`` attached to the data samples (images the hook did not
explain are skipped). A detection counts when a ground-truth box of its class overlaps it with
IoU >= ``iou_thr``; ground-truth boxes are read from the data samples, which are in
original-image pixels when the test pipeline loads annotations after ``Resize``, as mmdet's
configs do. Results are gathered across processes by mmengine's evaluator.
"""
import logging
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np
import torch
from mmdet.registry import METRICS
from mmdet.structures.bbox import bbox_overlaps
from mmengine.evaluator import BaseMetric
from mmengine.fileio import load
from mmengine.logging import print_log
from pycocotools import mask as mask_utils

from ..errors import BadInputError
from ..metrics import (
    box_area_share,
    energy_in_box,
    energy_in_mask,
    evidence_mass,
    evidence_pointing,
    pointing_hit,
    pointing_hit_mask,
    rank_accuracy,
)


@METRICS.register_module()
class CAMLocalizationMetric(BaseMetric):
    """Means over matched detections of: ``pointing`` (map peak inside the GT box),
    ``energy`` (share of the map inside it) and ``chance`` (the box's share of the image, what a
    uniform map scores), plus the number of ``matched`` and ``unmatched`` detections; with GT
    masks also ``pointing_mask``, ``energy_mask`` and ``chance_mask``, the same against the
    matched object's mask.

    With ``evidence_file`` (a COCO annotation file whose annotations carry ``evidence``, the RLE
    mask of the pixels that decide the object's class), detections matched to its objects are
    also scored on that evidence: ``evidence_pointing`` (the map's peak on it, dilated by 3
    pixels), ``evidence_mass`` and ``evidence_rank`` (CLEVR-XAI's relevance mass and rank
    accuracy), apart for evidence inside the object's box (``..._in``) and outside it
    (``..._out``), with their counts ``evidence_in`` and ``evidence_out``.
    """

    default_prefix = 'cam'

    def __init__(self, iou_thr: float = 0.5, evidence_file: Optional[str] = None,
                 collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.iou_thr = iou_thr
        self.evidence_file = evidence_file
        self._evidence = None  # per image id: the annotations, read at the first image

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
            evidence = self._evidence_rows(sample) if self.evidence_file else []
            # one entry per image, as collect_results expects
            self.results.append(dict(boxes=rows, evidence=evidence))

    def _evidence_rows(self, sample: dict) -> list:
        """``(where, pointing, mass, rank)`` per detection matched to an object of
        ``evidence_file`` that records its evidence."""
        objects = self._evidence_of(sample['img_id'])
        if not objects:
            return []
        gt = dict(bboxes=[box for _, box, _ in objects], labels=[lab for lab, _, _ in objects])
        rows = []
        for k, g in enumerate(self._match(sample['cam_detections'], gt)):
            if g < 0:
                continue
            cam, (_, box, rle) = sample['cams'][k], objects[g]
            cue = mask_utils.decode(rle).astype(bool)
            if cue.shape != cam.shape:
                raise BadInputError(
                    f'{self.evidence_file}: the evidence of image {sample["img_id"]} is '
                    f'{cue.shape[1]}x{cue.shape[0]}, its map {cam.shape[1]}x{cam.shape[0]}: '
                    'is it the annotation file of the test set?')
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            where = 'in' if cue[y1:y2, x1:x2].sum() * 2 >= cue.sum() else 'out'
            rows.append((where, evidence_pointing(cam, cue), evidence_mass(cam, cue),
                         rank_accuracy(cam, cue)))
        return rows

    def _evidence_of(self, image_id) -> list:
        """``(label, (x1, y1, x2, y2), rle)`` of the objects of an image with evidence."""
        if self._evidence is None:
            classes = list((self.dataset_meta or {}).get('classes', ()))
            coco = load(self.evidence_file)
            names = {c['id']: c['name'] for c in coco['categories']}
            self._evidence = defaultdict(list)
            for ann in coco['annotations']:
                if 'evidence' in ann and names.get(ann['category_id']) in classes:
                    x, y, w, h = ann['bbox']
                    rle = dict(ann['evidence'], counts=ann['evidence']['counts'].encode())
                    self._evidence[ann['image_id']].append(
                        (classes.index(names[ann['category_id']]), (x, y, x + w, y + h), rle))
            if not self._evidence:
                raise BadInputError(f'{self.evidence_file} has no annotation with evidence of '
                                    f'the classes {classes}')
        return self._evidence.get(image_id, [])

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
        rows = [row for image in results for row in image['boxes']]
        matched = np.array([row for row in rows if row is not None], dtype=np.float64)
        metrics = self._evidence_metrics([row for image in results for row in image['evidence']])
        if len(matched) == 0:
            return dict(pointing=0.0, energy=0.0, chance=0.0, matched=0,
                        unmatched=len(rows), **metrics)
        names = ['pointing', 'energy', 'chance']
        if matched.shape[1] > 3:
            names += ['pointing_mask', 'energy_mask', 'chance_mask']
        return dict(zip(names, map(float, matched.mean(axis=0))), matched=len(matched),
                    unmatched=len(rows) - len(matched), **metrics)

    def _evidence_metrics(self, rows: list) -> dict:
        if not self.evidence_file:
            return {}
        metrics = {}
        for suffix, kept in (('', rows), ('_in', [r for r in rows if r[0] == 'in']),
                             ('_out', [r for r in rows if r[0] == 'out'])):
            values = np.array([r[1:] for r in kept], np.float64).reshape(-1, 3)
            if suffix:
                metrics[f'evidence{suffix}'] = len(values)
            if len(values):
                for name, column in zip(('pointing', 'mass', 'rank'), values.T):
                    metrics[f'evidence_{name}{suffix}'] = float(column.mean())
        return metrics


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
