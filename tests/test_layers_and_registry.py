"""Layer names resolve safely; registry names are forgiving; wrong names list close ones."""
import pytest
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

from mmdet_cam import CAM_METHODS, get_layer, list_layers
from mmdet_cam.errors import BadInputError, UnknownNameError
from mmdet_cam.methods import build_cam_method, method_names
from mmdet_cam.registry import lookup

YOLOX = 'yolox/yolox_tiny_8xb8-300e_coco.py'


def test_dotted_and_indexed_names_reach_the_same_layer(models):
    model = models(YOLOX)
    last = model.neck.out_convs[2]
    for name in ('neck.out_convs.2', 'neck.out_convs[2]', 'neck.out_convs[-1]'):
        assert get_layer(model, name) is last
    assert get_layer(model, 'backbone.stage4') is model.backbone.stage4
    assert 'neck.out_convs.2' in list_layers(model)


@pytest.mark.parametrize('name', ['neck.out_conv.2', 'neck.out_convs.3', 'neck.out_convs[-4]'])
def test_wrong_layer_names_list_close_matches(models, name):
    with pytest.raises(UnknownNameError, match=r'Close matches: .*neck\.out_convs\.'):
        get_layer(models(YOLOX), name)


@pytest.mark.parametrize('name', ['neck; import os', '__import__("os")', '', 'neck..x'])
def test_layer_names_are_never_evaluated(models, name):
    with pytest.raises(UnknownNameError):
        get_layer(models(YOLOX), name)


@pytest.mark.parametrize('name', ['gradcam++', 'GradCAMPlusPlus', 'grad-cam-plusplus',
                                  'GRADCAM++', 'gradcam_plusplus'])
def test_method_names_are_case_and_punctuation_insensitive(name):
    assert lookup(CAM_METHODS, name) is GradCAMPlusPlus


def test_required_methods_are_registered():
    assert {'gradcam', 'gradcam++', 'xgradcam', 'hirescam', 'layercam', 'eigengradcam',
            'gradcamelementwise', 'eigencam'} <= set(method_names())


def test_built_methods_register_no_hooks(models):
    model = models(YOLOX)
    method = build_cam_method('gradcam', model)
    assert isinstance(method, GradCAM)
    assert all(not m._forward_hooks for m in model.modules())


def test_settings_hold_each_default_once_and_refuse_unknown_names():
    import dataclasses

    from mmdet_cam.methods import DEFAULT_METHOD
    from mmdet_cam.settings import CAMSettings, OutputSettings

    defaults = CAMSettings()
    assert defaults.method == DEFAULT_METHOD and defaults.score_thr == 0.3
    changed = CAMSettings.of(defaults, score_thr=0.5, topk=2)
    assert (changed.score_thr, changed.topk, changed.fuse) == (0.5, 2, defaults.fuse)
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.score_thr = 0.1
    with pytest.raises(UnknownNameError, match='score_thresh.*the options are'):
        CAMSettings.of(score_thresh=0.5)
    with pytest.raises(UnknownNameError, match='fuse must be one of'):
        CAMSettings.of(fuse='sum')
    with pytest.raises(BadInputError, match='alpha'):
        OutputSettings.of(alpha=2)
    with pytest.raises(BadInputError, match='by name'):
        CAMSettings.of('neck')  # DetCAM(model, checkpoint, 'neck'): options are keyword-only
    cam_options, rest = CAMSettings.split(dict(topk=1, alpha=0.2, interval=3))
    assert cam_options == dict(topk=1) and rest == dict(alpha=0.2, interval=3)


def test_the_hook_takes_the_settings_fields_by_name_and_refuses_others():
    from mmdet_cam import DetCAMHook

    hook = DetCAMHook(method='hirescam', topk=2, alpha=0.7, interval=2)
    assert (hook.settings.method, hook.settings.topk, hook.output.alpha) == ('hirescam', 2, 0.7)
    assert hook.settings.score_thr == 0.3 and hook.interval == 2  # the defaults, from one place
    with pytest.raises(UnknownNameError, match='score_thresh.*score_thr'):
        DetCAMHook(score_thresh=0.5)
