"""What a test image's detections got right and wrong: each detection tagged true or false
positive, and the ground-truth boxes no detection found, by mmdet's own matching
(``tpfp_default``, the matching of its ``eval_map``: per class, detections in descending
score order each take the unclaimed ground-truth box they overlap most, at ``iou_thr``)."""
from typing import List, Optional, Tuple

import numpy as np
from mmdet.evaluation.functional import bbox_overlaps
from mmdet.evaluation.functional.mean_ap import tpfp_default


def triage(det_bboxes, det_scores, det_labels, gt_bboxes, gt_labels,
           gt_ignored: Optional[np.ndarray] = None,
           iou_thr: float = 0.5) -> Tuple[List[str], np.ndarray]:
    """Per detection ``'TP'``, ``'FP'`` or ``'ignored'`` (it matched a ground-truth box marked
    ignore), and the indices of the ground-truth boxes that no true positive took (missed).

    Boxes are ``(x1, y1, x2, y2)`` in one coordinate frame; labels are class ids.
    """
    det_bboxes = np.asarray(det_bboxes, np.float32).reshape(-1, 4)
    det_scores = np.asarray(det_scores, np.float32).reshape(-1)
    det_labels = np.asarray(det_labels).reshape(-1)
    gt_bboxes = np.asarray(gt_bboxes, np.float32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    ignored = (np.zeros(len(gt_bboxes), bool) if gt_ignored is None
               else np.asarray(gt_ignored, bool).reshape(-1))
    tags, missed = ['FP'] * len(det_bboxes), []
    for label in np.union1d(det_labels, gt_labels):
        dets = np.flatnonzero(det_labels == label)
        gts = np.flatnonzero((gt_labels == label) & ~ignored)
        ignore = np.flatnonzero((gt_labels == label) & ignored)
        scored = np.hstack([det_bboxes[dets], det_scores[dets, None]])
        tp, fp = tpfp_default(scored, gt_bboxes[gts], gt_bboxes[ignore], iou_thr)
        for j, i in enumerate(dets):
            tags[i] = 'TP' if tp[0, j] else 'FP' if fp[0, j] else 'ignored'
        taken = set()
        if len(dets) and len(gts):  # a true positive took the box it overlaps most
            ious = bbox_overlaps(scored[:, :4], np.vstack([gt_bboxes[gts], gt_bboxes[ignore]]))
            taken = {int(ious[j].argmax()) for j in range(len(dets)) if tp[0, j]}
        missed += [int(gts[g]) for g in range(len(gts)) if g not in taken]
    return tags, np.array(sorted(missed), dtype=int)
