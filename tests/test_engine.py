"""DetCAM on real mmdet detectors (shipped configs, ``init_weights()``, 320 px, CPU)."""
import contextlib
import warnings

import numpy as np
import pytest
import torch

from mmdet_cam import DetCAM, ZeroGradientWarning
from mmdet_cam.engine.capture import batched_grads_for
from mmdet_cam.errors import (
    DetectorFailedError,
    NonFiniteGradientWarning,
    UnknownNameError,
    UnsupportedModelError,
)
from mmdet_cam.model.layers import default_target_layers

COVERAGE = [
    # one-stage dense heads
    'retinanet/retinanet_r18_fpn_1x_coco.py',
    'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'atss/atss_r50_fpn_1x_coco.py',
    'gfl/gfl_r50_fpn_1x_coco.py',
    'yolox/yolox_tiny_8xb8-300e_coco.py',
    'rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
    'yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py',
    'tood/tood_r50_fpn_1x_coco.py',
    # two-stage
    'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py',
    # DETR family
    'detr/detr_r50_8xb2-150e_coco.py',
    'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    'dino/dino-4scale_r50_8xb2-12e_coco.py',
    'conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
]
RETINANET = COVERAGE[0]


def assert_valid_maps(result, image, count):
    assert len(result.detections) == count
    assert result.cams.shape == (count,) + image.shape[:2]
    assert result.cams.dtype == np.float32
    assert np.isfinite(result.cams).all()
    assert result.cams.min() >= 0 and result.cams.max() <= 1


@pytest.mark.parametrize('config', COVERAGE)
def test_every_detection_gets_its_own_nonzero_map(models, scene, config):
    model = models(config)
    with warnings.catch_warnings():
        warnings.simplefilter('error', ZeroGradientWarning)  # default layers cover all boxes
        gradcam = DetCAM(model, method='gradcam', score_thr=0, topk=5)(scene)
        hirescam = DetCAM(model, method='hirescam', score_thr=0, topk=5)(scene)
    for result in (gradcam, hirescam):
        assert_valid_maps(result, scene, 5)
        assert (result.cams.max(axis=(1, 2)) > 0.99).all()
    for result in (gradcam, hirescam):
        assert not np.array_equal(result.cams[0], result.cams[1])


def test_boxes_far_apart_have_clearly_different_maps(models, scene):
    # HiResCAM keeps where each box's gradient is (GradCAM pools it over the whole map, so on
    # an untrained model its maps are dominated by the activations all boxes share).
    result = DetCAM(models(RETINANET), method='hirescam', score_thr=0, topk=20)(scene)
    centres = (result.detections.bboxes[:, :2] + result.detections.bboxes[:, 2:]) / 2
    other = int((centres - centres[0]).norm(dim=1).argmax())
    assert (centres[other] - centres[0]).norm() > 50
    assert np.abs(result.cams[0] - result.cams[other]).max() > 0.5


@pytest.mark.parametrize('method', [
    'gradcam', 'GradCAM++', 'gradcamplusplus', 'xgradcam', 'hirescam', 'layercam',
    'eigengradcam', 'gradcamelementwise', 'eigencam', 'randomcam'])
def test_every_method_gives_valid_maps(models, scene, method):
    result = DetCAM(models(RETINANET), method=method, score_thr=0, topk=2)(scene)
    assert_valid_maps(result, scene, 2)
    box_specific = method != 'eigencam'
    assert np.allclose(result.cams[0], result.cams[1]) != box_specific


def test_unknown_method_lists_the_valid_ones(models):
    with pytest.raises(UnknownNameError, match='gradcam\\+\\+.*hirescam'):
        DetCAM(models(RETINANET), method='gradcan')


def test_logit_target_gives_the_gradcam_map_of_the_score(models, scene):
    # d logit(s) = d s / (s (1 - s)): a positive per-box factor, which GradCAM's
    # normalisation removes, so the maps agree; the box coordinate map does not.
    model = models(RETINANET)
    by_score = DetCAM(model, score_thr=0, topk=2)(scene).cams
    by_logit = DetCAM(model, score_thr=0, topk=2, target='logit')(scene).cams
    by_box = DetCAM(model, score_thr=0, topk=2, target=dict(type='bbox', coord='x2'))(scene).cams
    np.testing.assert_allclose(by_logit, by_score, atol=1e-4)
    assert not np.allclose(by_box, by_score, atol=1e-3)


def test_topk_classes_and_threshold_select_detections(models, scene):
    model = models(RETINANET)
    everything = DetCAM(model, score_thr=0, topk=5)(scene)
    labels = everything.detections.labels.tolist()
    name = model.dataset_meta['classes'][labels[0]]
    only = DetCAM(model, score_thr=0, topk=5, classes=[name])(scene)
    assert set(only.detections.labels.tolist()) == {labels[0]}
    with pytest.raises(UnknownNameError, match='unknown class'):
        DetCAM(model, classes=['no-such-class'])


def test_no_detection_above_threshold_gives_an_empty_result(models, scene):
    result = DetCAM(models(RETINANET), score_thr=1.01)(scene)
    assert len(result) == 0
    assert result.cams.shape == (0,) + scene.shape[:2]


def test_one_pyramid_level_warns_for_boxes_of_other_levels(models, scene):
    model = models(RETINANET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = DetCAM(model, target_layers='neck.fpn_convs.0', score_thr=0, topk=100)(scene)
    zero_maps = result.cams.max(axis=(1, 2)) == 0
    named = np.array([layers == ['neck.fpn_convs.0'] for layers in result.zero_gradient_layers])
    assert (zero_maps == named).all(), 'a map is all zero exactly when the layer got no gradient'
    assert zero_maps.any() and not zero_maps.all()
    messages = [str(w.message) for w in caught if w.category is ZeroGradientWarning]
    assert len(messages) == zero_maps.sum()
    assert all('neck.fpn_convs.0' in m for m in messages)


def test_several_layers_fuse_by_mean_or_max(models, scene):
    model = models(RETINANET)
    layers = ['backbone.layer3', 'backbone.layer4']  # every box has gradients at both
    mean = DetCAM(model, target_layers=layers, score_thr=0, topk=2)(scene)
    maxed = DetCAM(model, target_layers=layers, score_thr=0, topk=2, fuse='max')(scene)
    assert_valid_maps(mean, scene, 2)
    assert_valid_maps(maxed, scene, 2)
    assert not np.allclose(mean.cams, maxed.cams, atol=1e-3)


def test_layer_name_forms_give_the_same_maps(models, scene):
    model = models(RETINANET)
    a = DetCAM(model, target_layers=['neck.fpn_convs[0]'], score_thr=0, topk=2)(scene)
    b = DetCAM(model, target_layers=['neck.fpn_convs[-5]'], score_thr=0, topk=2)(scene)
    np.testing.assert_array_equal(a.cams, b.cams)


def test_transformer_tokens_are_mapped_back_to_the_feature_grid(models, scene):
    for config in ('detr/detr_r50_8xb2-150e_coco.py',
                   'dino/dino-4scale_r50_8xb2-12e_coco.py'):
        result = DetCAM(models(config), target_layers='encoder.layers[-1]', score_thr=0,
                        topk=2)(scene)
        assert_valid_maps(result, scene, 2)
        assert not np.allclose(result.cams[0], result.cams[1], atol=1e-3)


def test_detr_style_detectors_default_to_the_encoder_memory(models, scene):
    """The default layer of a DETR-style detector is its last encoder layer, whose output is
    the encoder's memory: the maps are those at ``target_layers='encoder'``. Others keep the
    neck."""
    model = models('dino/dino-4scale_r50_8xb2-12e_coco.py')
    assert default_target_layers(model) == [f'encoder.layers.{len(model.encoder.layers) - 1}']
    default = DetCAM(model, score_thr=0, topk=2)(scene)
    encoder = DetCAM(model, target_layers='encoder', score_thr=0, topk=2)(scene)
    assert_valid_maps(default, scene, 2)
    np.testing.assert_array_equal(default.cams, encoder.cams)
    assert default_target_layers(models(RETINANET)) == ['neck']


def test_decoder_queries_are_rejected_with_a_clear_error(models, scene):
    cam = DetCAM(models('detr/detr_r50_8xb2-150e_coco.py'), target_layers='decoder.layers.5',
                 score_thr=0, topk=1)
    with pytest.raises(UnsupportedModelError, match='no spatial layout'):
        cam(scene)


def test_custom_reshape_transform_in_library_style(models, scene):
    calls = []

    def identity(tensor):
        calls.append(tuple(tensor.shape))
        return tensor

    result = DetCAM(models(RETINANET), target_layers='neck.fpn_convs.0', score_thr=0, topk=1,
                    reshape_transform=identity)(scene)
    assert calls and all(len(shape) == 4 for shape in calls)
    assert result.cams.shape[0] == 1


def test_a_head_that_detaches_its_outputs_in_post_processing_is_explained(models, scene):
    # SABL's predict_by_feat detaches the head outputs itself before decoding them
    result = DetCAM(models('sabl/sabl-retinanet_r50_fpn_1x_coco.py'), method='hirescam',
                    score_thr=0, topk=3)(scene)
    assert_valid_maps(result, scene, 3)
    assert not np.array_equal(result.cams[0], result.cams[1])


def test_predictions_detached_outside_post_processing_are_refused(models, scene):
    # an exact per-box gradient is then impossible, and mmdet-cam must say so, not guess
    model = models(RETINANET)
    handle = model.bbox_head.register_forward_hook(
        lambda module, inputs, outputs: tuple([t.detach() for t in out] for out in outputs))
    try:
        with pytest.raises(UnsupportedModelError, match='carry no gradient'):
            DetCAM(model, score_thr=0, topk=1)(scene)
    finally:
        handle.remove()


def test_the_model_is_left_as_it_was(models, scene):
    from mmdet.models.dense_heads import base_dense_head
    from mmdet.models.utils import misc
    model = models(RETINANET)
    before = [p.requires_grad for p in model.parameters()]
    with torch.no_grad():  # works inside no_grad too: the engine enables what it needs
        result = DetCAM(model, score_thr=0, topk=1)(scene)
    assert result.cams.max() > 0
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(not m._forward_hooks for m in model.modules())
    assert base_dense_head.select_single_mlvl is misc.select_single_mlvl
    assert torch.sqrt(torch.tensor(4.0)) == 2 and torch.sqrt.__name__ == 'sqrt'
    assert torch.Tensor.__deepcopy__.__module__ == 'torch._tensor'
    assert torch.Tensor.detach.__name__ == 'detach'
    assert 'predict_by_feat' not in vars(model.bbox_head)


def test_activation_checkpointing_is_off_while_explaining_and_changes_no_map(models, scene):
    """ResNet's ``with_cp`` (as Swin's, and GLIP's ``use_checkpoint``) runs its blocks through
    torch.utils.checkpoint, which refuses torch.autograd.grad: the flag is off for the call."""
    from mmdet_cam.patching import swapped
    model = models(RETINANET)
    cam = DetCAM(model, target_layers=['backbone.layer3'], score_thr=0, topk=2)
    plain = cam(scene)
    blocks = [m for m in model.backbone.modules() if hasattr(m, 'with_cp')]
    assert blocks
    with contextlib.ExitStack() as stack:
        for block in blocks:
            stack.enter_context(swapped(block, 'with_cp', True))
        checkpointed = cam(scene)
        assert all(block.with_cp for block in blocks)  # put back after the call
    np.testing.assert_allclose(checkpointed.cams, plain.cams, atol=1e-6)


@pytest.mark.parametrize('config', [RETINANET, 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
                                    'yolox/yolox_tiny_8xb8-300e_coco.py'])
def test_backward_through_dense_head_outputs_gives_the_plain_gradients(models, scene, config):
    from mmdet_cam.engine.capture import (
        DenseHeadOutputs,
        LayerCapture,
        differentiable_inference,
        frozen_parameters,
        grads_for,
    )
    from mmdet_cam.model.detector import build_test_pipeline, preprocess
    model = models(config)
    inputs, samples = preprocess(model, build_test_pipeline(model.cfg), scene)
    with frozen_parameters(model), differentiable_inference(model), torch.enable_grad(), \
            LayerCapture([model.neck], ['neck']) as capture, DenseHeadOutputs(model) as head:
        scores = model.predict(inputs, samples)[0].pred_instances.scores
        assert head.tensors, 'a one-stage dense head records its outputs'
        for value in (scores[0], scores[-1], scores[:3].sum()):
            plain = grads_for(value, capture.activations)
            pruned = grads_for(value, capture.activations, head.tensors)
            assert any(bool(g.any()) for g in plain)
            for a, b in zip(plain, pruned):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_two_stage_detectors_keep_the_plain_backward(models):
    from mmdet_cam.engine.capture import DenseHeadOutputs
    assert DenseHeadOutputs(models('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')).module is None


# Mechanisms the config zoo sweep (benchmarks/zoo.py) found, one model each.
@pytest.mark.parametrize('config', [
    'paa/paa_r50_fpn_1x_coco.py',  # sqrt of all-zero scores in post-processing: 0 x inf
    'point_rend/point-rend_r50-caffe_fpn_ms-1x_coco.py',  # in-place ops in the mask head
    'yolact/yolact_r50_1xb8-55e_coco.py',  # deepcopy of boxes in the mask head
    'centernet/centernet_r18_8xb16-crop512-140e_coco.py',  # loader's to_float32 needed later
])
def test_zoo_findings_give_finite_distinct_maps(models, scene, config):
    # HiResCAM: GradCAM's channel-pooled maps are all zero where an untrained head's scores
    # saturate (YOLACT), which says nothing about the mechanisms tested here
    with warnings.catch_warnings():
        warnings.simplefilter('error', NonFiniteGradientWarning)
        result = DetCAM(models(config), method='hirescam', score_thr=0, topk=3)(scene)
    assert_valid_maps(result, scene, 3)
    assert (result.cams.max(axis=(1, 2)) > 0.99).all()
    assert not np.array_equal(result.cams[0], result.cams[1])


def test_a_semi_supervised_wrapper_is_explained_through_its_predicting_detector(models, scene):
    # SoftTeacher predicts with its teacher (semi_test_cfg.predict_on): default layers follow
    config = 'soft_teacher/soft-teacher_faster-rcnn_r50-caffe_fpn_180k_semi-0.1-coco.py'
    cam = DetCAM(models(config), method='hirescam', score_thr=0, topk=3)
    assert cam.layer_names == ['teacher.neck']
    result = cam(scene)
    assert_valid_maps(result, scene, 3)
    assert not np.array_equal(result.cams[0], result.cams[1])


@pytest.mark.parametrize('stage', ['backbone.stages.3', 'backbone.stages.1'])
def test_a_swin_stage_returning_tokens_and_grid_sizes_is_explained(models, scene, stage):
    # a Swin stage returns (x_down, down_hw, out, out_hw): token tensors next to their sizes
    model = models('swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py')
    result = DetCAM(model, target_layers=stage, score_thr=0, topk=3)(scene)
    assert_valid_maps(result, scene, 3)
    assert (result.cams.max(axis=(1, 2)) > 0.99).all()
    assert not np.array_equal(result.cams[0], result.cams[1])


def test_a_layer_returning_no_tensor_is_refused_with_the_reason(models, scene):
    model = models(RETINANET)
    cam = DetCAM(model, target_layers='neck.fpn_convs.0', score_thr=0, topk=1)
    handle = model.neck.fpn_convs[0].register_forward_hook(lambda m, i, o: {'map': o})
    try:
        with pytest.raises(UnsupportedModelError, match='returns dict'):
            cam(scene)
    finally:
        handle.remove()


def test_when_mmdet_itself_fails_the_error_names_the_config_and_the_cause(models, scene):
    # mmdet 3.3's SSDHead.predict_by_feat reads self.loss_cls, which SSDHead never sets
    cam = DetCAM(models('ssd/ssd300_coco.py'), score_thr=0, topk=1)
    with pytest.raises(DetectorFailedError, match='ssd300_coco.py.*loss_cls'):
        cam(scene)


@pytest.mark.parametrize('method', ['linear', 'gaussian', 'naive'])
def test_soft_nms_scores_are_mmcvs_and_carry_gradients(method):
    import importlib

    from mmdet_cam.engine.capture import _differentiable_soft_nms
    mmcv_nms = importlib.import_module('mmcv.ops.nms')
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(200, 2, generator=generator) * 100
    sizes = torch.rand(200, 2, generator=generator) * 40 + 1
    boxes = torch.cat([corners, corners + sizes], 1).requires_grad_()
    scores = torch.rand(200, generator=generator).requires_grad_()
    expected, kept = mmcv_nms.soft_nms(boxes.detach(), scores.detach(), 0.3, 0.5, 1e-3, method)
    dets, inds = _differentiable_soft_nms(mmcv_nms.soft_nms)(boxes, scores, 0.3, 0.5, 1e-3,
                                                              method)
    assert torch.equal(inds, kept)
    torch.testing.assert_close(dets.detach(), expected, rtol=1e-5, atol=1e-6)
    total = torch.autograd.grad(dets[:, 4].sum(), [boxes, scores])
    assert total[1].abs().sum() > 0 and (method == 'naive' or total[0].abs().sum() > 0)


def test_a_soft_nms_detector_is_explained(models, scene):
    result = DetCAM(models('faster_rcnn/faster-rcnn_r50_fpn_soft-nms_1x_coco.py'),
                    method='hirescam', score_thr=0, topk=3)(scene)
    assert_valid_maps(result, scene, 3)
    assert not np.array_equal(result.cams[0], result.cams[1])


@pytest.mark.parametrize('config, options', [
    ('detr/detr_r50_8xb2-150e_coco.py', {}),
    # deformable decoders: HiResCAM at their memory otherwise uses the decoder's samples
    ('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', dict(local_replay=False)),
    ('conditional_detr/conditional-detr_r50_8xb2-50e_coco.py', {}),
    ('dino/dino-4scale_r50_8xb2-12e_coco.py', dict(local_replay=False)),
    ('retinanet/retinanet_r18_fpn_1x_coco.py', dict(local_replay=False)),  # via head outputs
    ('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', dict(target='mask')),
])
def test_one_batched_backward_gives_each_box_its_own_gradient(models, scene, config, options,
                                                              monkeypatch):
    """With ``batched_backward``, boxes share backward passes (``is_grads_batched``) where no
    local replay applies (DETR-style heads, masks): the maps are those of one backward per box."""
    from mmdet_cam.engine import gradients as engine
    batches = []
    monkeypatch.setattr(engine, 'batched_grads_for', lambda values, *args: batches.append(
        len(values)) or batched_grads_for(values, *args))
    settings = dict(method='hirescam', score_thr=0, topk=4, **options)
    batched = DetCAM(models(config), batched_backward=True, **settings)(scene)
    assert batches == [4]
    one_by_one = DetCAM(models(config), **settings)(scene)
    assert batches == [4]  # not batched by default
    np.testing.assert_allclose(batched.cams, one_by_one.cams, atol=1e-5)
    assert not np.allclose(batched.cams[0], batched.cams[1])
