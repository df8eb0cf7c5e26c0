"""The parameter-randomisation sanity check: the same raw candidates are explained in every
randomised copy, and maps that depend on the weights change."""
import numpy as np
import pytest

from mmdet_cam import DetCAM
from mmdet_cam.metrics import parameter_randomisation
from mmdet_cam.metrics.sanity import spearman

from conftest import DEMO_IMAGE as IMAGE


def test_randomising_the_head_changes_odam_maps_and_not_the_model(demo_model):
    cam = DetCAM(demo_model, method='odam', topk=4)
    before = cam(IMAGE).cams
    result = parameter_randomisation(cam, IMAGE)
    assert result.steps[0].startswith('bbox_head') and result.steps[-1].startswith('backbone')
    assert result.correlation.shape == (len(result.steps), 4)
    # the box-regression branch comes first: no score depends on it, so nothing changes
    assert result.steps[0] == 'bbox_head.rtm_reg'
    np.testing.assert_allclose(result.correlation[0], 1.0, atol=1e-6)
    assert result.steps[1] == 'bbox_head.rtm_cls'  # now the score comes from random weights
    assert result.correlation[1].mean() < 0.5 and result.head_randomised.mean() < 0.75
    np.testing.assert_array_equal(cam(IMAGE).cams, before)  # the check worked on a copy


def test_a_method_that_ignores_the_head_is_caught(demo_model):
    """EigenCAM at the neck uses activations only: randomising the head changes nothing."""
    result = parameter_randomisation(DetCAM(demo_model, method='eigencam', topk=2), IMAGE)
    np.testing.assert_allclose(result.head_randomised, 1.0, atol=1e-6)
    assert result.correlation[-1].mean() < 0.9  # the backbone does change it


@pytest.mark.slow
def test_two_stage_candidates_keep_their_rois(models, scene):
    """Faster R-CNN's RoIs are pinned: randomising the RPN (after the RoI head) changes no map."""
    cam = DetCAM(models('faster-rcnn_r50_fpn_1x_coco'), method='gradcam', topk=2, score_thr=0)
    result = parameter_randomisation(cam, scene)
    rpn = [s for s, name in enumerate(result.steps) if name.startswith('rpn_head')]
    assert rpn and result.steps[0].startswith('roi_head')
    before_rpn = result.correlation[rpn[0] - 1]
    np.testing.assert_allclose(result.correlation[rpn], before_rpn[None].repeat(len(rpn), 0))
    assert result.head_randomised.mean() < 0.9


def test_spearman_ignores_pixels_both_maps_leave_at_zero():
    a = np.zeros((10, 10))
    b = np.zeros((10, 10))
    a[2, :4], b[2, :4] = [1, 2, 3, 4], [4, 3, 2, 1]
    assert spearman(a, b) == pytest.approx(-1.0)
    assert spearman(a, np.zeros_like(a)) == 0.0


def test_a_black_box_method_follows_the_same_detections_into_the_randomised_head(demo_model):
    """D-RISE re-runs the detector: once the head is random it follows the original
    detections (box and class) among the random head's candidates, and its maps change;
    ``head_only`` stops the cascade there (each step costs a whole run of the method)."""
    cam = DetCAM(demo_model, method=dict(type='drise', num_masks=100, progress=False), topk=2)
    result = parameter_randomisation(cam, IMAGE, head_only=True)
    assert result.steps and all(step.startswith('bbox_head.') for step in result.steps)
    np.testing.assert_array_equal(result.detections.bboxes.numpy(),
                                  cam(IMAGE).detections.bboxes.numpy())
    assert result.head_randomised.mean() < 0.5, result.head_randomised
