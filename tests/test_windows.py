"""Per-box gradients held as windows (``engine/windows.py``): RoIAlign's windowed backward, the
CAM formulas on windows, and the fusion's one-map-at-a-time steps give what the full-size
computation gives; 100 boxes in one call equal 100 boxes explained one at a time."""
import warnings

import numpy as np
import pytest
import torch
from mmcv.ops import RoIAlign
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.engine import layer_maps
from mmdet_cam.engine.fusion import FusedMaps, Fusion, fuse
from mmdet_cam.engine.geometry import to_original_image
from mmdet_cam.engine.replay import RoIReplay
from mmdet_cam.engine.windows import Window

from conftest import make_scene, small_config
from test_engine import COVERAGE

RETINANET, FASTER_RCNN = COVERAGE[0], COVERAGE[8]


@pytest.mark.parametrize('aligned', [True, False])
def test_roi_align_windows_equal_the_full_backward(aligned):
    """RoIs inside the level, across its edges and over all of it: each RoI's gradient from
    the batched backward on crops is the full RoIAlign backward's, zero outside its window."""
    torch.manual_seed(0)
    layer = RoIAlign((7, 7), spatial_scale=1 / 8, sampling_ratio=0, aligned=aligned)
    feature = torch.randn(1, 4, 30, 40)
    rois = torch.tensor([[0, 50., 60, 120, 140], [0, 0, 0, 30, 25], [0, 290, 200, 320, 240],
                         [0, -5, -3, 330, 250], [0, 100.3, 17.9, 101.1, 18.2]])
    grads = torch.randn(len(rois), 4, 7, 7)
    windows = RoIReplay._roi_align_windows(layer, feature, rois, grads)
    for roi, grad, window in zip(rois, grads, windows):
        leaf = feature.clone().requires_grad_()
        expected, = torch.autograd.grad(layer(leaf, roi[None]), leaf, grad[None])
        assert window.size[0] <= 30 and window.size[1] <= 40
        torch.testing.assert_close(window.dense(), expected, rtol=1e-5, atol=1e-6)


def test_windows_add_on_the_window_holding_both():
    a = Window(torch.ones(1, 2, 2, 3), 1, 4, torch.Size([1, 2, 10, 10]))
    b = Window(torch.full((1, 2, 3, 1), 2.0), 2, 2, torch.Size([1, 2, 10, 10]))
    both = a + b
    assert (both.top, both.left, both.size) == (1, 2, (4, 5))
    torch.testing.assert_close(both.dense(), a.dense() + b.dense())


def test_fusion_equals_pytorch_grad_cams_aggregation_and_scaling():
    """``fuse`` of per-output maps equals pytorch_grad_cam's multi-layer aggregation (ReLU,
    mean or max, ``scale_cam_image``), and the geometry equals ``scale_cam_image`` of the
    cropped maps."""
    rng = np.random.default_rng(0)
    per_output = [rng.normal(size=(3, 24, 32)).astype(np.float32) for _ in range(3)]
    stacked = np.maximum(np.stack(per_output, axis=1), 0)
    for how, reduce in (('mean', np.mean), ('max', np.max)):
        expected = scale_cam_image(reduce(stacked, axis=1))
        np.testing.assert_allclose(fuse(per_output, how), expected, rtol=1e-6, atol=1e-7)
    metainfo = {'ori_shape': (30, 37), 'img_shape': (20, 25), 'scale_factor': (25 / 37, 20 / 30)}
    np.testing.assert_allclose(to_original_image(list(per_output[0]), metainfo),
                               scale_cam_image(per_output[0][:, :20, :25], (37, 30)),
                               rtol=1e-6, atol=1e-7)



@pytest.mark.parametrize('how', ['mean', 'max'])
@pytest.mark.parametrize('crop, original', [((24, 32), (24, 32)), ((20, 25), (30, 37)),
                                            ((20, 30), (10, 15))])
def test_fused_maps_onto_the_image_equal_the_librarys_steps_one_after_another(how, crop,
                                                                              original):
    """Boxes' maps fused from raw level maps and carried onto the original image in folded
    steps (``FusedMaps.onto``) equal pytorch_grad_cam's steps one after another: per level
    ReLU and ``scale_cam_image`` to the input, ReLU, mean or max, ``scale_cam_image``, the
    crop to the resized image, ``scale_cam_image`` to the original size; also for a map far
    from zero with a tiny range, a map zero outside the crop and a map of zeros."""
    rng = np.random.default_rng(1)
    size = (32, 24)  # (w, h) of the network input
    levels = [rng.normal(size=(4, 12, 16)).astype(np.float32),
              rng.normal(size=(4, 6, 8)).astype(np.float32)]
    levels[0][1] = 50 + 1e-3 * rng.random((12, 16))  # far from zero, tiny range
    levels[1][1] = -1  # so that the first level alone decides box 1
    levels[0][2, :6, :8], levels[0][2, 6:] = 1, -1  # positive in one corner only
    levels[0][3] = levels[1][3] = -1  # nothing left after the ReLU
    per_box = [[(i, level[k].copy()) for i, level in enumerate(levels)] for k in range(4)]
    metainfo = {'ori_shape': original, 'img_shape': (24, 32),
                'scale_factor': (crop[1] / original[1], crop[0] / original[0])}
    fused = to_original_image(FusedMaps(Fusion(how, size, 2), per_box), metainfo)

    reduce = np.mean if how == 'mean' else np.max
    inputs = np.maximum(np.stack([scale_cam_image(np.maximum(level, 0), size)
                                  for level in levels], axis=1), 0)
    expected = scale_cam_image(
        scale_cam_image(reduce(inputs, axis=1))[:, :crop[0], :crop[1]], original[::-1])
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(fused[1]) > 0.5 and fused[3].max() == 0  # the tiny range is spread over [0, 1]


class FormulaSpy:
    """Records which window formula each call of ``LayerMaps._window_cam`` used."""

    def __init__(self, monkeypatch):
        self.used = []
        original = layer_maps.LayerMaps._window_cam

        def spy(maps, index, windows, targets, formula):
            self.used += [formula] * len(windows)
            return original(maps, index, windows, targets, formula)
        monkeypatch.setattr(layer_maps.LayerMaps, '_window_cam', spy)


@pytest.fixture(scope='module')
def faster_rcnn():
    """Faster R-CNN with 200 proposals (one full backward per box, the reference, runs the
    RoI head on every proposal: 1000 would make the test minutes long)."""
    cfg = small_config(FASTER_RCNN)
    cfg.model.test_cfg.rpn.max_per_img = 200
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return build_detector(cfg)


@pytest.mark.parametrize('config,method,formula', [
    (RETINANET, 'gradcam', 'weights'), (RETINANET, 'odam', 'local'),
    (RETINANET, 'gradcam++', None), (FASTER_RCNN, 'gradcam', 'weights'),
    (FASTER_RCNN, 'odam', 'local')])
def test_a_hundred_boxes_at_once_equal_one_at_a_time(models, faster_rcnn, config, method,
                                                     formula, monkeypatch):
    """100 boxes in one call (replayed heads, windowed gradients, the formula on windows where
    it allows) against each box's own full backward and the formula at full size (no
    replay, one box per batch); GradCAM++ pools its gradients over the whole level, so its
    windows are found not to do and it runs at full size."""
    model = faster_rcnn if config == FASTER_RCNN else models(config)
    scene = make_scene(240, 320)
    spy = FormulaSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        at_once = DetCAM(model, method=method, score_thr=0, topk=100)(scene)
        one_by_one = DetCAM(model, method=method, score_thr=0, topk=100, local_replay=False,
                            batch_size=1)(scene)
    assert len(at_once.cams) == 100
    torch.testing.assert_close(at_once.detections.bboxes, one_by_one.detections.bboxes)
    assert one_by_one.cams.max() > 0
    # rtol as well: RoIAlign on a crop computes its sample positions relative to the crop,
    # which rounds differently from the full level's larger coordinates (float32: up to
    # ~1.5e-5 relative at 800 px)
    np.testing.assert_allclose(at_once.cams, one_by_one.cams, rtol=1e-5, atol=1e-5)
    if formula is None:  # checked once per level, then the full-size formula
        assert all(used == 'local' or used == 'weights' for used in spy.used)
        assert len(spy.used) <= 2 * 5
    else:  # every box on its window, after the check
        assert spy.used.count(formula) >= 100


def test_a_user_formula_is_checked_before_it_runs_on_windows(models, monkeypatch):
    """A GradCAM subclass whose weights are not spatial means (their maximum) is not given
    windows: the check sees the difference and the full-size formula runs."""
    class MaxGradCAM(GradCAM):
        def get_cam_weights(self, input_tensor, target_layer, target, activations, grads):
            return np.max(grads, axis=(2, 3))

    model = models(RETINANET)
    scene = make_scene(240, 320)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        layers = [f'neck.fpn_convs.{i}' for i in range(5)]
        at_once = DetCAM(model, method=MaxGradCAM, target_layers=layers,
                         score_thr=0, topk=20)(scene)
        full = DetCAM(model, method=MaxGradCAM, target_layers=layers,
                      score_thr=0, topk=20, local_replay=False)(scene)
    np.testing.assert_allclose(at_once.cams, full.cams, atol=1e-5)
