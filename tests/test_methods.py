"""The detection-specific methods of this package (odam, ssgradcam, ssgradcam++, gcame) on the
shipped demo detector: valid, box-specific maps; and each detection's own level."""
import numpy as np
import pytest

from mmdet_cam import DetCAM
from mmdet_cam.methods.gcame import gaussian_masks
from mmdet_cam.methods.ssgradcam import box_masks, space_map
from mmdet_cam.metrics import object_discrimination, pointing_hit

from conftest import DEMO_IMAGE as IMAGE


def two_apart(result):
    """Indices of the best detection and of the best one that does not overlap it."""
    boxes = result.detections.bboxes
    first = boxes[0]
    for k in range(1, len(result)):
        b = boxes[k]
        if b[0] > first[2] or b[2] < first[0] or b[1] > first[3] or b[3] < first[1]:
            return 0, k
    raise AssertionError('no two separate detections')


@pytest.mark.parametrize('method', ['odam', 'ssgradcam', 'ssgradcam++', 'gcame'])
def test_each_box_map_peaks_in_its_own_box(demo_model, method):
    result = DetCAM(demo_model, method=method, score_thr=0.3)(IMAGE)
    assert len(result) >= 2
    assert np.isfinite(result.cams).all()
    assert result.cams.min() >= 0 and result.cams.max() <= 1
    a, b = two_apart(result)
    boxes = result.detections.bboxes.tolist()
    assert pointing_hit(result.cams[a], boxes[a]) and pointing_hit(result.cams[b], boxes[b])
    assert not pointing_hit(result.cams[a], boxes[b])


def test_box_specific_methods_put_less_on_other_objects_than_gradcam(demo_model):
    def mean_odi(method):
        result = DetCAM(demo_model, method=method, score_thr=0.3)(IMAGE)
        boxes = result.detections.bboxes.tolist()
        return np.mean([object_discrimination(result.cams[k], boxes[k],
                                              boxes[:k] + boxes[k + 1:])
                        for k in range(len(result))])

    gradcam = mean_odi('gradcam')
    for method in ('odam', 'ssgradcam', 'ssgradcam++'):
        assert mean_odi(method) < gradcam / 2, method
    # gcame's Gaussians are as wide as its reference formula makes them: sigma grows with
    # |log |w_c||, about 10 cells for this model's small channel weights (see the benchmark)


def test_odam_is_hirescams_formula_at_the_boxs_own_level(demo_model):
    odam = DetCAM(demo_model, method='odam', score_thr=0.3)(IMAGE).cams
    hirescam = DetCAM(demo_model, method='hirescam', score_thr=0.3)(IMAGE).cams
    np.testing.assert_allclose(odam, hirescam, atol=1e-6)


def test_space_map_and_box_masks():
    grads = np.zeros((1, 2, 4, 4), np.float32)
    grads[0, 0, 1, 2] = -4
    grads[0, 0, 3, 3] = 2
    space = space_map(grads)
    assert space[0, 0, 1, 2] == 1 and space[0, 0, 3, 3] == 0.5 and not space[0, 1].any()

    class Box:
        bbox = (0, 0, 16, 16)  # input pixels; cells are 8 x 8 pixels of the 32 x 32 input

    masks = box_masks([Box()], (1, 3, 32, 32), (4, 4))
    assert masks.shape == (1, 1, 4, 4)
    assert masks[0, 0, :2, :2].all() and not masks[0, 0, 2:].any() and not masks[0, 0, :, 2:].any()
    assert box_masks(None, (1, 3, 32, 32), (4, 4)).all()


def test_gaussian_masks_peak_at_the_centre_and_widen_with_sigma():
    masks = gaussian_masks(np.array([[1, 2]]), np.array([[0.5, 3.0]]), (5, 6))
    assert masks.shape == (1, 2, 5, 6) and masks.min() == 0 and masks.max() == 1
    assert masks[0, 0, 1, 2] == 1 and masks[0, 1, 1, 2] == 1
    assert masks[0, 1, 1, 4] > masks[0, 0, 1, 4]  # the wider one keeps more two cells away


def test_own_level_is_where_the_gradient_is_and_fuse_own_uses_only_it(demo_model):
    """Every neck level is a target; an RTMDet box's gradient reaches its own level only, so its
    reported level is that one and (for a gradient-free method, whose maps do not depend on the
    box) its ``fuse='own'`` map is the map of that level alone."""
    per_level = [DetCAM(demo_model, method='eigencam', target_layers=[f'neck.out_convs.{k}'],
                        score_thr=0.3)(IMAGE).cams[0] for k in range(3)]
    result = DetCAM(demo_model, method='eigencam', fuse='own', score_thr=0.3)(IMAGE)
    levels = result.detections.levels.tolist()
    assert len(set(levels)) > 1  # the demo image's boxes come from different levels
    for k, level in enumerate(levels):
        np.testing.assert_allclose(result.cams[k], per_level[level], atol=1e-5)
        gradients = DetCAM(demo_model, method='hirescam', target_layers=[
            f'neck.out_convs.{level}'], score_thr=0.3)(IMAGE)
        assert not gradients.zero_gradient_layers[k]  # its own level has its gradient


def test_every_method_has_one_kind_and_a_users_basecam_gets_its_kind_from_the_library(
        demo_model):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.base_cam import BaseCAM

    from mmdet_cam import CAM_METHODS
    from mmdet_cam.methods import MethodKind, method_names

    expected = {'odam': MethodKind.GRADIENT, 'gradcam++': MethodKind.GRADIENT,
                'eigencam': MethodKind.ACTIVATION, 'fem': MethodKind.ACTIVATION,
                'scorecam': MethodKind.PERTURBATION, 'ablationcam': MethodKind.PERTURBATION,
                'drise': MethodKind.BLACK_BOX, 'occlusion': MethodKind.BLACK_BOX,
                'region_search': MethodKind.BLACK_BOX}
    for name in method_names():
        kind = DetCAM(demo_model, method=name).kind
        assert isinstance(kind, MethodKind)
        assert kind is expected.get(name, kind), name

    @CAM_METHODS.register_module(name='test-mean-activation', force=True)
    class MeanActivation(BaseCAM):  # no flags of mmdet-cam's: the library's own constructor
        def __init__(self, model, target_layers, reshape_transform=None):
            super().__init__(model, target_layers, reshape_transform, uses_gradients=False)

        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            return np.ones(activations.shape[:2], np.float32)

    @CAM_METHODS.register_module(name='test-negated-gradcam', force=True)
    class NegatedGradCAM(GradCAM):
        def get_cam_weights(self, *args):
            return -super().get_cam_weights(*args)

    try:
        shared = DetCAM(demo_model, method='test-mean-activation', score_thr=0.3)
        assert shared.kind is MethodKind.ACTIVATION
        cams = shared(IMAGE).cams
        assert len(cams) >= 2 and all(np.array_equal(cams[0], cam) for cam in cams[1:])
        negated = DetCAM(demo_model, method='test-negated-gradcam', score_thr=0.3)
        assert negated.kind is MethodKind.GRADIENT
        cams = negated(IMAGE).cams
        assert not np.allclose(cams[0], cams[1])  # each box its own gradient
    finally:  # other tests list the registry
        for name in ('test-mean-activation', 'test-negated-gradcam'):
            CAM_METHODS.module_dict.pop(name, None)


@pytest.mark.parametrize('step', ['aggregate_multi_layers', 'compute_cam_per_layer', 'forward'])
def test_a_users_basecam_that_overrides_a_step_done_per_box_is_refused_not_ignored(demo_model,
                                                                                    step):
    """mmdet-cam calls only ``get_cam_image`` and fuses layers itself: a subclass that changes
    pytorch_grad_cam's own aggregation would be silently ignored, so it is refused in one line;
    one that overrides the formula alone works."""
    from pytorch_grad_cam import GradCAM

    from mmdet_cam.errors import BadInputError

    def own_step(self, *args, **kwargs):
        raise AssertionError('never called')
    aggregating = type('MaxOverLayersGradCAM', (GradCAM,), {step: own_step})
    with pytest.raises(BadInputError, match=rf'^MaxOverLayersGradCAM overrides BaseCAM\.{step}, '
                                            r'which mmdet-cam does not call.*get_cam_weights'):
        DetCAM(demo_model, method=aggregating)
    formula_only = type('ScaledGradCAM', (GradCAM,), {
        'get_cam_weights': lambda self, *args: 2 * GradCAM.get_cam_weights(self, *args)})
    assert len(DetCAM(demo_model, method=formula_only)(IMAGE).cams)
