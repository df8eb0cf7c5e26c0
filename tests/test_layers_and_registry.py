"""Layer names resolve safely; registry names are forgiving; wrong names list close ones."""
import pytest
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

from mmdet_cam import CAM_METHODS, get_layer, list_layers
from mmdet_cam.errors import UnknownNameError
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
