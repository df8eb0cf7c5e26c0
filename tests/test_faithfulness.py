"""Faithfulness metrics: the tracked score, deletion/insertion curves, object discrimination;
on arrays, and on the shipped demo detector through its raw candidates."""
import copy
import importlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmdet_cam import DetCAM
from mmdet_cam.engine.candidates import CandidateScorer
from mmdet_cam.engine.every_candidate import every_candidate
from mmdet_cam.metrics import (
    auc,
    object_discrimination,
    perturbation_curve,
    road_combined,
    road_curve,
    tracked_score,
    tracker,
)
from mmdet_cam.shapes import make_image

REPO = Path(__file__).parents[1]


def test_tracked_score_follows_the_box_smoothly_and_gated_as_odam():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60]], float)
    scores, labels = np.array([0.2, 0.9, 0.8]), np.array([1, 1, 2])
    # smooth: max of IoU x probability of the class -> the half-overlapping confident box
    assert tracked_score(boxes, scores, labels, (0, 0, 10, 10), 1) == pytest.approx(0.45)
    assert tracked_score(boxes, scores, labels, (0, 0, 10, 10), 0) == 0.0  # no such class
    # gated: same class with IoU > 0.5 only, divided by the initial score
    assert tracked_score(boxes, scores, labels, (0, 0, 10, 10), 1, gated=True,
                         initial=0.4) == pytest.approx(0.5)


def test_deletion_and_insertion_follow_the_saliency_order():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4] = 200  # the "object": the top half
    saliency = np.zeros((8, 8), np.float32)
    saliency[:4] = 1

    def brightness_of_top_half(images):
        return [float(i[:4].mean()) / 200 for i in images]

    deletion = perturbation_curve(image, saliency, brightness_of_top_half, 'deletion', steps=4)
    assert len(deletion) == 5 and deletion[0] == 1 and deletion[2] < 1
    assert deletion[2] == pytest.approx(deletion[4])  # object gone after half the pixels
    inverse = perturbation_curve(image, 1 - saliency, brightness_of_top_half, 'deletion',
                                 steps=4)
    assert auc(deletion) < auc(inverse)
    insertion = perturbation_curve(image, saliency, brightness_of_top_half, 'insertion',
                                   steps=4)
    assert insertion[-1] == pytest.approx(1) and insertion[2] == pytest.approx(1)
    with pytest.raises(ValueError, match='differ in size'):
        perturbation_curve(image, saliency[:4], brightness_of_top_half)


def test_object_discrimination_is_the_share_on_other_objects():
    cam = np.zeros((10, 20), np.float32)
    cam[:, :10] = 1  # left half, own box
    cam[:, 10:] = 3  # right half, another object
    assert object_discrimination(cam, (0, 0, 10, 10), [(10, 0, 20, 10)]) == pytest.approx(0.75)
    assert object_discrimination(cam, (0, 0, 10, 10), []) == 0.0
    assert object_discrimination(np.zeros_like(cam), (0, 0, 10, 10), [(10, 0, 20, 10)]) == 0.0


@pytest.fixture(scope='module')
def demo():
    cam = DetCAM(str(REPO / 'demo' / 'rtmdet_shapes.py'), str(REPO / 'demo' / 'rtmdet_shapes.pth'),
                 method='hirescam', score_thr=0.5)
    image, _ = make_image(np.random.default_rng(11), 320, 320)
    return cam, image, cam(image)


def test_candidates_reproduce_the_detection_score(demo):
    cam, image, result = demo
    scorer = CandidateScorer(cam.model, cam.pipeline)
    box, label = result.detections.bboxes[0].tolist(), int(result.detections.labels[0])
    score = tracker(scorer, box, label)([image])[0]
    assert score == pytest.approx(float(result.detections.scores[0]), rel=1e-4)


def test_candidates_are_every_pair_the_head_scores_without_its_nms(demo):
    """Under every_candidate the NMS kernel only sorts (at IoU 1 it cannot suppress): the same
    (box, class, score) triples come back as from the head with its own test_cfg opened that
    way and mmcv's kernel, and the kernel is back after nested uses."""
    nms = importlib.import_module('mmcv.ops.nms')
    cam, image, _ = demo
    head, kernels = cam.model.bbox_head, nms.ext_module
    with every_candidate(cam.model):
        with every_candidate(cam.model):
            assert nms.ext_module is not kernels
        fast = CandidateScorer(cam.model, cam.pipeline)([image])[0]
    assert nms.ext_module is kernels
    original = head.test_cfg
    head.test_cfg = copy.deepcopy(original)
    head.test_cfg.update(score_thr=0.0, max_per_img=100000)
    head.test_cfg.nms.iou_threshold = 1.0
    try:
        slow = CandidateScorer(cam.model, cam.pipeline)([image])[0]
    finally:
        head.test_cfg = original

    def triples(candidates):
        rows = np.column_stack([candidates.bboxes.numpy(), candidates.labels.numpy(),
                                candidates.scores.numpy()])
        return rows[np.lexsort(rows.T[::-1])]
    assert len(fast) == len(slow) > 1000
    np.testing.assert_allclose(triples(fast), triples(slow), rtol=1e-5, atol=1e-4)


def test_deleting_the_salient_pixels_removes_the_detection_faster_than_random(demo):
    cam, image, result = demo
    assert len(result) >= 2
    scorer = CandidateScorer(cam.model, cam.pipeline)
    rng = np.random.default_rng(0)
    salient, random = [], []
    for k in range(len(result)):
        box, label = result.detections.bboxes[k].tolist(), int(result.detections.labels[k])
        score_fn = tracker(scorer, box, label)
        salient.append(auc(perturbation_curve(image, result.cams[k], score_fn, steps=10)))
        for _ in range(3):  # random maps smooth at the maps' scale (blobs), not pixel noise
            blobs = cv2.resize(rng.random((5, 5)).astype(np.float32), image.shape[1::-1],
                               interpolation=cv2.INTER_CUBIC)
            random.append(auc(perturbation_curve(image, blobs, score_fn, steps=10)))
    assert np.mean(salient) < np.mean(random) - 0.1, (salient, random)


@pytest.mark.slow
def test_road_removes_the_detection_when_its_salient_pixels_are_imputed(demo):
    """ROAD through pytorch_grad_cam's imputer: imputing the map's top pixels lowers the tracked
    score more than imputing its bottom ones (positive combined score), unlike a reversed map."""
    cam, image, result = demo
    scorer = CandidateScorer(cam.model, cam.pipeline)
    box, label = result.detections.bboxes[0].tolist(), int(result.detections.labels[0])
    score_fn = tracker(scorer, box, label)
    most = road_curve(image, result.cams[0], score_fn, True, percentiles=(50, 90))
    least = road_curve(image, result.cams[0], score_fn, False, percentiles=(50, 90))
    assert most.shape == (2,) and (most < least).all()
    combined = road_combined(image, result.cams[0], score_fn, percentiles=(50, 90))
    assert combined == pytest.approx(((least - most) / 2).mean(), abs=0.05)  # imputation noise
    assert combined > 0 > road_combined(image, 1 - result.cams[0], score_fn, percentiles=(50, 90))
