"""Explaining boxes the user names (e.g. objects the detector missed): the best matching raw
candidate of each is explained, whatever it scored."""
import numpy as np
import pytest

from mmdet_cam import DetCAM
from mmdet_cam.boxes import box_iou
from mmdet_cam.engine.candidates import CandidateScorer
from mmdet_cam.errors import BadInputError, UnknownNameError
from mmdet_cam.metrics import pointing_hit
from mmdet_cam.model.detector import read_image
from mmdet_cam.shapes import CLASSES, make_image

from conftest import DEMO_IMAGE


def test_missed_objects_are_found_and_explained_inside_their_boxes(demo_model):
    """With a threshold so high that nothing is reported, each ground-truth object given as a
    box is matched by a candidate of its class with IoU >= 0.7, and the default method's map of
    that candidate peaks inside the object for at least 90% of the objects."""
    cam = DetCAM(demo_model, score_thr=0.999)
    hits, count = 0, 0
    for seed in range(4):
        image, objects = make_image(np.random.default_rng(100 + seed))
        assert len(cam(image)) == 0
        boxes = [o['bbox'] for o in objects]
        result = cam(image, boxes=boxes, labels=[CLASSES[o['label']] for o in objects])
        assert result.detections.labels.tolist() == [o['label'] for o in objects]
        np.testing.assert_allclose(result.detections.named_bboxes.numpy(), boxes, atol=1e-4)
        assert (result.detections.ious >= 0.7).all(), result.detections.ious
        hits += sum(pointing_hit(m, box) for m, box in zip(result.cams, boxes))
        count += len(boxes)
    assert hits >= 0.9 * count, (hits, count)


def test_a_named_class_is_explained_for_that_class(demo_model):
    image, objects = make_image(np.random.default_rng(100))
    box, label = objects[0]['bbox'], objects[0]['label']
    other = (label + 1) % len(CLASSES)
    cam = DetCAM(demo_model, method='odam')
    own = cam(image, boxes=[box], labels=[label])
    elsewhere = cam(image, boxes=[box], labels=[CLASSES[other]])
    assert elsewhere.detections.labels.tolist() == [other]
    assert float(elsewhere.detections.scores[0]) < float(own.detections.scores[0])
    anyclass = cam(image, boxes=[box])  # no class: the candidate's best class
    assert anyclass.detections.labels.tolist() == [label]


@pytest.mark.parametrize('boxes, labels, error, message', [
    ([[50, 50, 10, 10]], None, BadInputError, 'empty or reversed'),
    ([[0, 0, 400, 100]], None, BadInputError, 'outside the 320x240 image'),
    ([[0, 0, 10]], None, BadInputError, 'N x 4'),
    ([[0, 0, 10, 10]], ['trinagle'], UnknownNameError, 'Did you mean triangle'),
    ([[0, 0, 10, 10]], ['circle', 'square'], BadInputError, 'one label per box'),
])
def test_bad_boxes_get_clear_errors(demo_model, boxes, labels, error, message):
    image, _ = make_image(np.random.default_rng(0))
    with pytest.raises(error, match=message):
        DetCAM(demo_model)(image, boxes=boxes, labels=labels)


def test_another_class_is_the_same_candidates_probability_of_it(demo_model):
    cam = DetCAM(demo_model, method='odam', topk=3)
    reported = cam(DEMO_IMAGE)
    circle = CLASSES.index('circle')
    result = cam(DEMO_IMAGE, explain_class='circle')
    assert result.detections.labels.tolist() == [circle] * len(reported)
    assert result.detections.reported_labels.tolist() == reported.detections.labels.tolist()
    np.testing.assert_allclose(result.detections.bboxes, reported.detections.bboxes, atol=1e-3)
    # independently, from a no-gradient run: the candidate with that box, for that class
    candidates = CandidateScorer(cam.model, cam.pipeline)([read_image(DEMO_IMAGE)])[0]
    for k, box in enumerate(reported.detections.bboxes.tolist()):
        same = (box_iou(candidates.bboxes.numpy(), box) > 0.999) & (
            candidates.labels.numpy() == circle)
        assert same.sum() == 1
        assert float(result.detections.scores[k]) == pytest.approx(
            float(candidates.scores[same.argmax()]), rel=1e-4)
        if reported.detections.labels[k] != circle:
            assert not np.allclose(result.cams[k], reported.cams[k], atol=0.05)


def test_contrast_explains_one_class_over_another_for_the_same_candidate(demo_model):
    cam = DetCAM(demo_model, method='odam', topk=3)
    reported = cam(DEMO_IMAGE)
    circle = CLASSES.index('circle')
    as_circle = cam(DEMO_IMAGE, explain_class='circle')
    contrast = cam(DEMO_IMAGE, explain_class='circle', contrast=True)
    assert contrast.detections.labels.tolist() == reported.detections.labels.tolist()
    np.testing.assert_allclose(contrast.detections.scores, reported.detections.scores,
                               rtol=1e-4)
    assert contrast.detections.versus_labels.tolist() == [circle] * len(reported)
    np.testing.assert_allclose(contrast.detections.versus_scores, as_circle.detections.scores,
                               rtol=1e-4)
    others = reported.detections.labels.numpy() != circle
    assert others.any() and not others.all()
    for k in np.flatnonzero(others):  # not circle's evidence
        assert contrast.cams[k].max() == pytest.approx(1)
        assert not np.allclose(contrast.cams[k], as_circle.cams[k], atol=0.05)
    for k in np.flatnonzero(~others):  # a circle has no evidence for circle over circle
        assert contrast.cams[k].max() == 0
    with pytest.raises(BadInputError, match='contrast needs explain_class'):
        cam(DEMO_IMAGE, contrast=True)


def test_a_two_stage_detector_scores_each_named_box_as_a_roi(models, scene):
    model = models('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    boxes = [[40, 30, 140, 110], [180, 120, 290, 220]]  # two objects of the scene
    result = DetCAM(model, method='hirescam')(scene, boxes=boxes, labels=[3, 7])
    assert result.detections.labels.tolist() == [3, 7]
    # the untrained RoI head barely moves its RoI: the candidate is the named box's own RoI
    assert (result.detections.ious > 0.9).all(), result.detections.ious
    assert np.isfinite(result.cams).all() and (result.cams.max(axis=(1, 2)) > 0).all()
    assert not np.allclose(result.cams[0], result.cams[1])
    # the RPN of a later plain run is itself again
    assert len(DetCAM(model, score_thr=0, topk=3)(scene)) == 3


def test_a_detr_style_detector_explains_its_best_query_for_each_named_box(models, scene):
    # sigmoid classifier: every (query, class) pair is a candidate
    model = models('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py')
    boxes, labels = [[40, 30, 140, 110], [180, 120, 290, 220]], [3, 7]
    cam = DetCAM(model, method='hirescam')
    result = cam(scene, boxes=boxes, labels=labels)
    assert result.detections.labels.tolist() == labels
    # independently, from a no-gradient run over every query: the best IoU x probability
    candidates = CandidateScorer(model, cam.pipeline)([scene])[0]
    for k, (box, label) in enumerate(zip(boxes, labels)):
        same = candidates.labels.numpy() == label
        match = box_iou(candidates.bboxes.numpy()[same], box) * candidates.scores.numpy()[same]
        assert float(result.detections.scores[k]) == pytest.approx(
            float(candidates.scores.numpy()[same][match.argmax()]), rel=1e-4)
    assert np.isfinite(result.cams).all() and (result.cams.max(axis=(1, 2)) > 0).all()
