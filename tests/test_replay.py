"""Local replay: per-box gradients of a dense head from a window around the box's cell equal
the full backward's, and heads that are not local fall back to the full backward."""
import warnings

import numpy as np
import pytest
import torch

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.engine import replay

from conftest import make_scene, small_config
from test_engine import COVERAGE

ONE_STAGE = COVERAGE[:8]
GROUP_NORM_HEADS = ('fcos', 'atss', 'gfl', 'tood')


def maps(model, scene, local_replay, topk=6):
    cam = DetCAM(model, method='gradcam', score_thr=0, topk=topk, local_replay=local_replay)
    return cam(scene).cams


@pytest.mark.parametrize('config', ONE_STAGE)
def test_maps_with_replay_equal_maps_without(models, scene, config):
    model = models(config)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        full, local = maps(model, scene, False), maps(model, scene, True)
    assert full.max() > 0
    np.testing.assert_allclose(local, full, atol=1e-5)
    reason = replay.not_local(model.bbox_head)
    if config.split('/')[0] in GROUP_NORM_HEADS:
        assert reason is not None and 'GroupNorm' in reason
    else:  # replayed, and every level it replayed matched the full backward
        assert reason is None
        checked = replay._CHECKED[model.bbox_head]
        assert checked and all(checked.values()), checked


@pytest.mark.parametrize('config', COVERAGE[8:11])
def test_two_stage_maps_with_replay_equal_maps_without(models, scene, config):
    """Standard RoI heads replay the boxes' RoIs (checked once); a cascade, whose boxes
    depend on every stage, keeps the full backward."""
    model = models(config)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        full, local = maps(model, scene, False, topk=4), maps(model, scene, True, topk=4)
    assert full.max() > 0
    np.testing.assert_allclose(local, full, atol=1e-5)
    checked = replay._CHECKED.get(model.roi_head, {})
    assert checked == ({} if 'cascade' in config else {'rois': True})


def test_a_head_that_reads_beyond_the_window_is_caught_by_the_check():
    """A head whose outputs depend on the whole level (a global mean added) passes the module
    check, so it is replayed once per level, found to differ from the full backward, and
    uses the full backward from then on: the maps stay exact."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = build_detector(small_config(COVERAGE[0], size=640))  # levels wider than
        scene = make_scene(480, 640)  # the windows
        head = model.bbox_head
        local_forward = head.forward_single
        head.forward_single = lambda x: tuple(o + x.mean() for o in local_forward(x))
        full, local = maps(model, scene, False), maps(model, scene, True)
        again = maps(model, scene, True)
    checked = replay._CHECKED[head]
    assert checked and not any(checked.values()), checked
    np.testing.assert_allclose(local, full, atol=1e-5)
    np.testing.assert_allclose(again, full, atol=1e-5)


def test_windows_away_from_the_edges_replay_unpadded_with_the_same_maps(monkeypatch):
    """Boxes whose cells are a radius away from every edge of their level replay the head
    without its convolutions' padding (each layer only the cells the next one reads), those
    at an edge with it; both checked, and the maps equal the full backward's."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = build_detector(small_config(COVERAGE[0], size=640))
    scene = make_scene(480, 640)
    kinds = []
    replay_call = replay.DenseReplay._replay

    def recording(self, output_grads, cells_of, rows_of, unpadded=False):
        kinds.append(unpadded)
        return replay_call(self, output_grads, cells_of, rows_of, unpadded)
    monkeypatch.setattr(replay.DenseReplay, '_replay', recording)
    local = maps(model, scene, True, topk=300)
    full = maps(model, scene, False, topk=300)
    assert True in kinds and False in kinds  # inner and edge windows in one call
    checked = replay._CHECKED[model.bbox_head]
    assert any(isinstance(k, tuple) and v for k, v in checked.items()), checked
    np.testing.assert_allclose(local, full, atol=1e-5)


def test_windows_hold_every_cell_within_the_radius_and_lie_inside_the_level():
    head = torch.nn.Conv2d(4, 4, 3, padding=1)
    head.forward = lambda levels: [torch.nn.Conv2d.forward(head, levels[0])]
    local = replay.DenseReplay(head, [torch.zeros(1, 4, 20, 30)], [torch.zeros(1, 4, 20, 30)])
    assert local.usable and local.radius == 1
    cells = [(0, 0, 0, 0), (19, 19, 29, 29), (5, 7, 10, 10)]
    corners, (h, w) = local._windows(cells, 20, 30)
    assert (h, w) == (5, 3)  # the widest need: rows 4..8 around rows 5..7
    for (y, x), (y_lo, y_hi, x_lo, x_hi) in zip(corners, cells):
        assert 0 <= y and y + h <= 20 and 0 <= x and x + w <= 30
        assert y <= max(y_lo - 1, 0) and y + h >= min(y_hi + 2, 20)
        assert x <= max(x_lo - 1, 0) and x + w >= min(x_hi + 2, 30)


def test_the_radius_is_the_longest_chain_of_convolutions():
    """Two branches of 2 and 3 convolutions (half-widths 1, and 1, 2 by dilation, 0): the
    longest chain reads 3 cells away, not the 4 of all convolutions added up."""
    def conv(dilation=1, kernel=3):
        return torch.nn.Conv2d(2, 2, kernel, padding=dilation * (kernel // 2),
                               dilation=dilation)

    class TwoBranches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.short = torch.nn.Sequential(conv(), conv(kernel=1))
            self.long = torch.nn.Sequential(conv(), conv(dilation=2), conv(kernel=1))

        def forward(self, levels):
            return [self.short(levels[0]), self.long(levels[0]).sigmoid()]
    assert replay.receptive_radius(TwoBranches(), [torch.zeros(1, 2, 9, 9)]) == 3


def test_modules_not_known_to_be_local_are_named():
    strided = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, stride=2, padding=1))
    assert 'stride-1' in replay.not_local(strided)
    attention = torch.nn.Sequential(torch.nn.MultiheadAttention(4, 1))
    assert 'MultiheadAttention' in replay.not_local(attention)
    assert replay.not_local(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1),
                                                torch.nn.BatchNorm2d(4).eval(),
                                                torch.nn.ReLU())) is None


def test_pooled_output_gradients_equal_one_backward_per_value():
    """Values reading entries of their own (v0, v3), entries shared with another value (v1
    and v2 share one), entries of the same cell (v0, v1), or nothing (v5): each gets exactly
    its own gradient."""
    torch.manual_seed(0)
    out = torch.randn(1, 3, 4, 5, requires_grad=True)
    values = torch.stack([out[0, 0, 1, 1] * 2, out[0, 1, 1, 1] * out[0, 2, 1, 1],
                          out[0, 2, 1, 1] ** 2, out[0, 0, 3, 4].sigmoid(),
                          out[0, :, 2, 2].sum() * 3, out[0, 0, 0, 0] * 0])
    pooled = replay.output_gradients(values, [out])
    for value, grads in zip(values, pooled):
        expected, = torch.autograd.grad(value, out, retain_graph=True)
        got = dense(out, *grads[0]) if grads else torch.zeros_like(out)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def dense(output, index, grad):
    """A sparse gradient (flat indices and values, as ``replay.sparse`` gives) at full size."""
    full = torch.zeros_like(output)
    full.view(-1)[index] = grad
    return full
