"""Scoped patching: every runtime replacement is put back exactly, nested or not, after an
error half-way, and nothing of torch itself is ever replaced; calls from several threads give
the maps of calls one after the other."""
import importlib
import re
import sys
import threading

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mmdet_cam import DetCAM
from mmdet_cam.errors import UnknownNameError
from mmdet_cam.patching import swapped, swapped_item

from conftest import REPO

IMAGES = [str(REPO / 'demo' / 'images' / f'shapes_{k}.jpg') for k in (1, 2, 3)]


class _Owner:
    def method(self):
        return 'class'


def test_swapped_restores_instance_class_and_missing_attributes_also_nested():
    owner = _Owner()
    owner.value = 1
    with swapped(owner, 'value', 2) as before:
        assert before == 1 and owner.value == 2
        with swapped(owner, 'value', 3):
            assert owner.value == 3
        assert owner.value == 2
    assert owner.value == 1 and 'value' in vars(owner)

    with swapped(owner, 'method', lambda: 'instance') as bound:
        assert owner.method() == 'instance' and bound() == 'class'
    assert 'method' not in vars(owner) and owner.method() == 'class'

    with swapped(owner, 'absent', 5):
        assert owner.absent == 5
    assert not hasattr(owner, 'absent')


def test_swapped_restores_child_modules_and_after_an_error():
    parent = nn.Sequential(nn.Linear(2, 2))
    child = parent[0]
    with pytest.raises(RuntimeError):
        with swapped(parent, '0', None):
            assert parent[0] is None
            raise RuntimeError('half-way')
    assert parent[0] is child and list(parent.children()) == [child]


def test_swapped_item_restores_or_removes_the_key():
    mapping = {'kept': 'old'}
    with swapped_item(mapping, 'kept', 'new'), swapped_item(mapping, 'added', 'x'):
        assert mapping == {'kept': 'new', 'added': 'x'}
    assert mapping == {'kept': 'old'}


def test_no_assignment_to_torch_or_tensor_attributes_in_the_package():
    assignment = re.compile(r'^\s*(?:[\w.]+\s*,\s*)*(?:torch|Tensor|torch\.Tensor)\.\w+'
                            r'(?:\s*,\s*[\w.]+)*\s*=(?!=)', re.M)
    offenders = [f'{path.relative_to(REPO)}: {match.group(0).strip()}'
                 for path in (REPO / 'mmdet_cam').rglob('*.py')
                 for match in assignment.finditer(path.read_text())]
    assert not offenders


def _patched_objects():
    """Every object mmdet-cam swaps at run time, by where it lives."""
    mmcv_nms = importlib.import_module('mmcv.ops.nms')
    objects = {'torch.sqrt': torch.sqrt, 'Tensor.sqrt': Tensor.sqrt,
               'Tensor.detach': Tensor.detach, 'Tensor.__deepcopy__': Tensor.__deepcopy__,
               'mmcv soft_nms': mmcv_nms.soft_nms, 'mmcv ext_module': mmcv_nms.ext_module}
    for name, module in list(sys.modules.items()):
        if name.split('.')[0] == 'mmdet':
            for attribute in ('select_single_mlvl', 'filter_scores_and_topk'):
                if attribute in vars(module):
                    objects[f'{name}.{attribute}'] = vars(module)[attribute]
    return objects


def _instance_attributes(model: nn.Module):
    return {name: sorted(k for k in vars(module) if not k.startswith('_') or k in (
        '_bbox_forward',)) for name, module in model.named_modules()}


def test_a_call_that_fails_half_way_leaves_every_patched_object_as_it_was(models):
    """Faster R-CNN explaining a named box with a method that fails inside the engine, after
    every swap (proposals, open head, graph-keeping functions, heads) is in place."""
    model = models('faster-rcnn_r50_fpn_1x_coco')
    cam = DetCAM(model, method='gradcam', score_thr=0, topk=1)
    cam.method.get_cam_image = _fail  # the formula runs after the forward pass
    before, heads = _patched_objects(), _instance_attributes(model)
    test_cfg = model.roi_head.test_cfg
    image = np.full((160, 200, 3), 80, np.uint8)
    with pytest.raises(RuntimeError, match='half-way'):
        cam(image, boxes=[[20, 20, 120, 100]])
    after = _patched_objects()
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before), [k for k in before
                                                         if after[k] is not before[k]]
    assert _instance_attributes(model) == heads
    assert model.roi_head.test_cfg is test_cfg


def _fail(*args, **kwargs):
    raise RuntimeError('half-way')


def test_a_bad_method_is_refused_before_anything_is_patched(demo_model):
    with pytest.raises(UnknownNameError, match='not a CAM method'):
        DetCAM(demo_model, method=object())


def test_two_threads_get_the_maps_of_one_after_the_other(demo_model):
    cam = DetCAM(demo_model, score_thr=0.3)
    serial = [cam(path).cams for path in IMAGES]
    before = _patched_objects()
    results, errors = {}, []

    def work(name):
        try:
            results[name] = [cam(path).cams for path in IMAGES]
        except Exception as error:  # reported below, with the thread's name
            errors.append(f'{name}: {error!r}')

    threads = [threading.Thread(target=work, args=(f'thread {k}',)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for maps in results.values():
        for got, expected in zip(maps, serial):
            np.testing.assert_allclose(got, expected, atol=1e-6)
    after = _patched_objects()  # mmdet's own functions again
    assert all(after[k] is before[k] for k in before)
    assert 'predict_by_feat' not in vars(demo_model.bbox_head)
