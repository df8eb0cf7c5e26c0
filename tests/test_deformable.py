"""Maps at a deformable DETR's encoder memory from the decoder's samples
(``engine/deformable.py``): the same maps as the full backward, used only where they apply,
and given up where a decoder reads the memory some other way."""
import warnings

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.engine import deformable
from mmdet_cam.methods.odam import ODAM
from mmdet_cam.patching import swapped

from conftest import small_config

DEFORMABLE_DETR = 'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'
DINO = 'dino/dino-4scale_r50_8xb2-12e_coco.py'


ORIGINAL = deformable.DecoderSamples.activation_grads


class SumsSpy:
    """Counts the boxes whose maps came from the decoder's samples."""

    def __init__(self):
        self.boxes = 0

    def activation_grads(self):
        def counted(sums, values, boxes, activations):
            self.boxes += len(boxes)
            return ORIGINAL(sums, values, boxes, activations)
        return counted


def explain(model, scene, spy=None, **options):
    cam = DetCAM(model, topk=8, score_thr=0, **options)
    if spy is None:
        return cam(scene)
    with swapped(deformable.DecoderSamples, 'activation_grads', spy.activation_grads()):
        return cam(scene)


@pytest.mark.parametrize('config', [DEFORMABLE_DETR, DINO])
@pytest.mark.parametrize('method', ['odam', 'hirescam', 'gradcam'])
def test_maps_from_the_decoders_samples_equal_the_full_backwards(models, scene, config,
                                                                 method):
    """ODAM, HiResCAM and GradCAM at the encoder memory (the default layer) from the decoder's
    samples: every box's map and level equal those of the full backward (local_replay=False)
    to 1e-5, and two boxes' maps differ."""
    model = models(config)
    spy = SumsSpy()
    fast = explain(model, scene, spy, method=method)
    full = explain(model, scene, method=method, local_replay=False)
    assert spy.boxes == len(fast) == 8
    np.testing.assert_allclose(fast.cams, full.cams, atol=1e-5)
    assert fast.detections.levels.tolist() == full.detections.levels.tolist()
    assert not np.allclose(fast.cams[0], fast.cams[1], atol=1e-3)


def test_the_formulas_the_samples_give_are_recognised():
    model = torch.nn.Linear(1, 1)
    assert deformable.formula_of(ODAM(model, [])) == 'channel_sum'
    assert deformable.formula_of(HiResCAM(model, [])) == 'channel_sum'
    assert deformable.formula_of(GradCAM(model, [])) == 'mean_weights'
    assert deformable.formula_of(GradCAMPlusPlus(model, [])) is None


def test_gradcam_plus_plus_at_the_memory_takes_the_full_backward(models, scene):
    """GradCAM++'s channel weights need every channel's gradient: no decoder samples."""
    spy = SumsSpy()
    explain(models(DEFORMABLE_DETR), scene, spy, method='gradcam++')
    assert spy.boxes == 0


def test_a_decoder_that_reads_the_memory_elsewhere_falls_back_to_the_full_backward(scene):
    """A decoder whose queries also read the memory's mean: the decoder's samples miss that
    path, the first box's check finds it, and the maps are the full backward's."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = build_detector(small_config(DEFORMABLE_DETR))
    decoder = model.decoder
    forward = decoder.forward

    def reading_the_memory(**kwargs):
        kwargs['query'] = kwargs['query'] + kwargs['value'].mean(1, keepdim=True)
        return forward(**kwargs)

    with swapped(decoder, 'forward', reading_the_memory):
        fast = explain(model, scene, method='odam')
        full = explain(model, scene, method='odam', local_replay=False)
        assert False in deformable._CHECKED[model].values()
        spy = SumsSpy()
        explain(model, scene, spy, method='odam')
    np.testing.assert_allclose(fast.cams, full.cams, atol=1e-5)
    assert spy.boxes == 0  # not tried again on this detector
