"""ScoreCAM and AblationCAM per detection: the library's own maps, from forwards shared by
all detections of an image."""
import numpy as np
import pytest
from pytorch_grad_cam import AblationCAM, ScoreCAM

from mmdet_cam import DetCAM, get_layer
from mmdet_cam.engine.candidates import RawCandidatesModel, TrackedDetection
from mmdet_cam.engine.geometry import to_original_image
from mmdet_cam.errors import UnknownNameError
from mmdet_cam.methods import build_cam_method
from mmdet_cam.model.detector import preprocess

from conftest import DEMO_IMAGE as IMAGE

LAYER = 'neck.out_convs.0'  # one [B, C, H, W] tensor, which the library's AblationLayer needs


@pytest.mark.parametrize('method, library_class', [
    (dict(type='scorecam'), ScoreCAM),
    (dict(type='ablationcam', ablation='library'), AblationCAM),
])
def test_each_map_equals_the_library_call_for_that_detection(demo_model, method, library_class):
    cam = DetCAM(demo_model, method=method, target_layers=LAYER, topk=3)
    result = cam(IMAGE)
    assert len(result) == 3
    inputs, data_samples = preprocess(demo_model, cam.pipeline, result.image)
    wrapped = RawCandidatesModel(demo_model, data_samples[0])
    for i in _explained_at_the_layer(demo_model, method['type']):
        target = TrackedDetection(result.detections.bboxes[i], result.detections.labels[i])
        with library_class(wrapped, [get_layer(demo_model, LAYER)]) as library:
            expected = library(inputs, targets=[target])
        expected = to_original_image(expected, data_samples[0].metainfo)[0]
        assert expected.max() > 0
        np.testing.assert_allclose(result.cams[i], expected, atol=1e-5)


def _explained_at_the_layer(model, method: str):
    """Of the top 3 detections, those whose score the method's perturbation of ``LAYER`` (one
    pyramid level) can change. ScoreCAM masks the input: every detection. AblationCAM ablates
    the level's channels: only the detections that level produced (their own level, where
    their gradient goes). For a box of another level every ablation leaves its score as it
    was, so every channel weight is the same float rounding noise, whose sign (and so whether
    the map is all zero) depends on the CPU's kernels: it is no test of the formula."""
    if method == 'scorecam':
        return [0, 2]
    levels = DetCAM(model, method='odam', topk=3)(IMAGE).detections.levels.tolist()
    own = [i for i, level in enumerate(levels) if level == int(LAYER[-1])]
    assert own, f'none of the top 3 detections comes from {LAYER} (levels {levels})'
    return own


class _Calls:
    """Counts the forward calls of a module and the batch sizes it saw."""

    def __init__(self, module):
        self.batches = []
        self.handle = module.register_forward_pre_hook(self.record)

    def record(self, module, args):
        first = args[0][0] if isinstance(args[0], (tuple, list)) else args[0]  # levels
        self.batches.append(len(first))


@pytest.mark.parametrize('name', ['scorecam', 'ablationcam'])
def test_forwards_are_shared_by_all_detections(demo_model, name):
    def run(topk):
        calls = _Calls(demo_model.bbox_head)
        try:
            result = DetCAM(demo_model, method=name, topk=topk)(IMAGE)
        finally:
            calls.handle.remove()
        return result, calls.batches

    one, one_calls = run(1)
    four, four_calls = run(4)
    assert len(one) == 1 and len(four) == 4
    assert one_calls == four_calls  # the same forwards, whatever the number of boxes
    channels = demo_model.neck.out_channels
    assert sum(four_calls) >= 3 * channels  # one perturbed image per channel and level
    np.testing.assert_allclose(one.cams[0], four.cams[0], atol=1e-5)
    assert four.cams.shape == (4,) + four.image.shape[:2]
    assert np.isfinite(four.cams).all() and four.cams.min() >= 0 and four.cams.max() <= 1


def test_ablation_runs_only_what_follows_the_neck_per_copy(demo_model):
    calls = _Calls(demo_model.backbone)
    try:
        result = DetCAM(demo_model, method='ablationcam', topk=2)(IMAGE)
    finally:
        calls.handle.remove()
    assert set(calls.batches) == {1}  # the backbone never runs on the ablated copies
    assert not np.allclose(result.cams[0], result.cams[1])  # each box weighs channels itself


def test_bad_options_and_unsupported_layers_get_clear_errors(demo_model):
    with pytest.raises(UnknownNameError, match='ablation must be one of zero, library'):
        build_cam_method(dict(type='ablationcam', ablation='mean'), demo_model)
    with pytest.raises(UnknownNameError, match='bad options for method BoxScoreCAM'):
        build_cam_method(dict(type='scorecam', masks=3), demo_model)



def test_own_level_fusion_keeps_each_box_on_its_own_level(demo_model):
    result = DetCAM(demo_model, method='ablationcam', fuse='own', topk=2)(IMAGE)
    assert result.cams.shape == (2,) + result.image.shape[:2] and np.isfinite(result.cams).all()
    assert 'levels' in result.detections and result.cams.max() == pytest.approx(1, abs=1e-6)
