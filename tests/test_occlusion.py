"""Occlusion (captum's ``Occlusion``): which pixels, hidden, take each detection's tracked
score away; every detection of an image from the same occluded forwards."""
import cv2
import numpy as np
import pytest
import torch

from mmdet_cam import DetCAM
from mmdet_cam.boxes import box_iou, box_mask
from mmdet_cam.engine.candidates import CandidateScorer, MaskedCandidates
from mmdet_cam.errors import UnknownNameError
from mmdet_cam.methods import build_cam_method
from mmdet_cam.methods.occlusion import Occlusion
from mmdet_cam.metrics import evidence_pointing
from mmdet_cam.shapes import EVIDENCE_CLASSES, make_evidence_image

from conftest import DEMO_IMAGE


def occlusion(model, **options):
    return DetCAM(model, method=dict(type='occlusion', progress=False, **options), topk=2)


def test_maps_are_valid_box_specific_and_higher_on_their_own_box(demo_model):
    result = occlusion(demo_model, window=32)(DEMO_IMAGE)
    assert len(result) == 2 and result.cams.shape == (2,) + result.image.shape[:2]
    assert np.isfinite(result.cams).all() and result.cams.min() >= 0
    assert result.cams.max(axis=(1, 2)) == pytest.approx([1, 1])
    assert not np.allclose(result.cams[0], result.cams[1])
    for cam, box in zip(result.cams, result.detections.bboxes.tolist()):
        inside = box_mask(cam.shape, box)
        assert cam[inside].mean() > 2 * cam[~inside].mean()


def test_several_window_sizes_add_their_maps(demo_model):
    both = occlusion(demo_model, window=[32, 64], baseline='mean')(DEMO_IMAGE)
    coarse = occlusion(demo_model, window=64, baseline='mean')(DEMO_IMAGE)
    assert both.cams.shape == coarse.cams.shape and both.cams.max() == pytest.approx(1)
    assert not np.allclose(both.cams, coarse.cams)  # the 32-pixel windows add detail
    for cam, box in zip(both.cams, both.detections.bboxes.tolist()):
        inside = box_mask(cam.shape, box)
        assert cam[inside].mean() > 2 * cam[~inside].mean()


def test_every_detection_from_the_same_forwards_equals_each_alone(demo_model):
    """captum attributes the ``[copies, detections]`` output whole: box 1's map explained
    together with box 0 is its map explained alone."""
    cam, image = occlusion(demo_model), cv2.imread(DEMO_IMAGE)
    detections = cam.detect(image)[:2]
    masked = MaskedCandidates(CandidateScorer(demo_model, cam.pipeline), image)
    method = Occlusion(window=48, progress=False)
    args = detections.bboxes.numpy(), detections.scores.numpy(), detections.labels.numpy()
    both = method(masked.size, *args, masked, 3)
    alone = method(masked.size, *(a[1:] for a in args), masked, 3)
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)


def test_the_blurred_baseline_erases_a_small_part_and_keeps_the_colours():
    image = np.full((3, 64, 64), 100, np.float32)
    image[:, 30:36, 30:36] = 250  # a 6-pixel cue
    image[:, :, 40:] = 20  # a region 3 blur sigmas away keeps its colour
    blurred = Occlusion().baseline_of(torch.from_numpy(image), window=16).numpy()
    assert blurred[:, 30:36, 30:36].max() < 100 + 0.3 * 150  # the cue fades into its object
    assert abs(blurred[0, 10, 10] - 100) < 1 and abs(blurred[0, 10, 63] - 20) < 1
    mean = Occlusion(baseline='mean').baseline_of(torch.from_numpy(image), 16)
    assert mean.std() == 0 and float(mean[0, 0, 0]) == pytest.approx(image.mean(), rel=1e-5)


def test_options_are_checked():
    with pytest.raises(UnknownNameError, match='window, stride and batch_size'):
        build_cam_method(dict(type='occlusion', window=0), None)
    with pytest.raises(UnknownNameError, match="baseline must be 'blur'"):
        build_cam_method(dict(type='occlusion', baseline='noise'), None)
    method = build_cam_method(dict(type='occlusion', window=24), None)
    assert (method.windows, method.strides) == ([24], [12])
    method = build_cam_method(dict(type='occlusion', window=[16, 48]), None)
    assert (method.windows, method.strides) == ([16, 48], [8, 24])
    with pytest.raises(UnknownNameError, match='one stride per window'):
        build_cam_method(dict(type='occlusion', window=[16, 48], stride=8), None)


@pytest.mark.slow
def test_occlusion_peaks_on_the_cue_that_decided_the_box_inside_it_or_not(evidence_demo):
    """On evidence scenes (a cue alone sets the class), the map peaks on the detection's own
    cue, for the cue inside the box (cross, ring) and the one beside it (tagged)."""
    cam = DetCAM(evidence_demo, method=dict(type='occlusion', progress=False))
    hits = {'in': [], 'out': []}
    for seed in (100001, 100006, 100009):  # fresh scenes: 6 inner cues of both kinds, 3 tags
        image, objects = make_evidence_image(np.random.default_rng(seed))
        result = cam(image)
        for obj in objects:
            k = _detection_of(result.detections, obj)
            if k is not None:
                where = 'out' if EVIDENCE_CLASSES[obj['label']] == 'tagged' else 'in'
                hits[where].append(evidence_pointing(result.cams[k], obj['evidence']))
    assert len(hits['in']) >= 5 and len(hits['out']) >= 2, hits
    assert np.mean(hits['in']) >= 0.8 and np.mean(hits['out']) >= 0.6, hits


def _detection_of(detections, obj):
    ious = box_iou(detections.bboxes.numpy(), obj['bbox'])
    ious[detections.labels.numpy() != obj['label']] = 0
    return int(np.argmax(ious)) if len(ious) and ious.max() >= 0.5 else None


def test_no_detections_no_maps_and_a_window_larger_than_the_image_is_one_window(demo_model):
    none = DetCAM(demo_model, method=dict(type='occlusion', progress=False),
                  score_thr=0.99999)(DEMO_IMAGE)
    assert len(none) == 0 and none.cams.shape == (0,) + none.image.shape[:2]
    whole = occlusion(demo_model, window=1000)(DEMO_IMAGE)
    assert whole.cams.shape == (2,) + whole.image.shape[:2] and np.isfinite(whole.cams).all()
