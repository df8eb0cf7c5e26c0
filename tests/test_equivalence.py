"""The engine's map of a detection equals pytorch_grad_cam's own ``GradCAM.__call__`` with a
target returning that detection's score (same model, input and layer), after the same
mapping onto the original image."""
import numpy as np
import pytest
from pytorch_grad_cam import GradCAM

from mmdet_cam import DetCAM, get_layer
from mmdet_cam.engine.geometry import to_original_image
from mmdet_cam.model.detector import preprocess

from library_path import DetectorAsCAMModel, MatchedDetectionTarget

# layer4 feeds every FPN level of these models, so every detection has a gradient there
LAYER = 'backbone.layer4'


@pytest.mark.parametrize('config', [
    'retinanet/retinanet_r18_fpn_1x_coco.py',
    'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
])
def test_engine_map_equals_the_library_map(models, scene, config):
    model = models(config)
    cam = DetCAM(model, target_layers=LAYER, method='gradcam', score_thr=0, topk=3)
    result = cam(scene)
    inputs, data_samples = preprocess(model, cam.pipeline, scene)
    wrapped = DetectorAsCAMModel(model, data_samples)
    for i in (0, 2):
        target = MatchedDetectionTarget(result.detections.bboxes[i],
                                        result.detections.labels[i])
        with GradCAM(wrapped, [get_layer(model, LAYER)]) as library:
            expected = library(inputs, targets=[target])
        expected = to_original_image(expected, data_samples[0].metainfo)[0]
        assert expected.max() > 0
        np.testing.assert_allclose(result.cams[i], expected, atol=1e-5)


def test_detr_map_at_its_default_layer_equals_the_library_map(models, scene):
    """DETR-style detectors are explained at the encoder memory by default (tokens mapped back
    onto the feature grid): the same map as the library's with that layer and reshape."""
    model = models('detr/detr_r50_8xb2-150e_coco.py')
    cam = DetCAM(model, method='gradcam', score_thr=0, topk=3)
    result = cam(scene)
    inputs, data_samples = preprocess(model, cam.pipeline, scene)
    height, width = model.extract_feat(inputs)[-1].shape[-2:]

    def tokens_to_map(tokens):  # [B, h x w, C] -> [B, C, h, w]
        return tokens.transpose(1, 2).reshape(len(tokens), -1, height, width)

    wrapped = DetectorAsCAMModel(model, data_samples)
    layer = get_layer(model, cam.layer_names[0])
    for i in (0, 2):
        target = MatchedDetectionTarget(result.detections.bboxes[i],
                                        result.detections.labels[i])
        with GradCAM(wrapped, [layer], reshape_transform=tokens_to_map) as library:
            expected = library(inputs, targets=[target])
        expected = to_original_image(expected, data_samples[0].metainfo)[0]
        assert expected.max() > 0
        np.testing.assert_allclose(result.cams[i], expected, atol=1e-5)
