"""The memory budget of the paths that read every raw candidate: sizes, copies per forward
within it, the same maps whatever the budget, and a one-line refusal where one image's
candidates do not fit."""
import subprocess
import sys

import numpy as np
import pytest

from mmdet_cam import DetCAM
from mmdet_cam.engine.candidates import CandidateScorer
from mmdet_cam.engine.memory import MemoryBudgetError, copies_within, memory_budget, parse_size
from mmdet_cam.errors import BadInputError
from mmdet_cam.settings import CAMSettings

from conftest import DEMO_IMAGE, REPO


def test_sizes_are_read_in_binary_units_and_bad_ones_refused():
    assert parse_size('4GB') == 4 * 2 ** 30
    assert parse_size('512 mb') == 512 * 2 ** 20
    assert parse_size('1.5K') == 1536
    assert parse_size(1000) == 1000
    for bad in ('four', '-1GB', 0, '1 GiBs'):
        with pytest.raises(BadInputError, match='memory budget'):
            parse_size(bad)
    with pytest.raises(BadInputError, match='memory budget'):
        CAMSettings.of(memory_budget='lots')


def test_copies_within_the_budget():
    with memory_budget('1KB'):
        assert copies_within(100, 16, 'x') == 10
        assert copies_within(1000, 16, 'x') == 1
        with pytest.raises(MemoryBudgetError, match='x takes 2.0 KB, over the memory budget '
                           'of 1.0 KB: raise memory_budget'):
            copies_within(2048, 16, 'x')
        with memory_budget('1MB'):
            assert copies_within(1000, 16, 'x') == 16
        assert copies_within(100, 16, 'x') == 10  # the outer budget is back


def test_drise_runs_as_many_copies_per_forward_as_fit_with_the_same_maps(demo_model,
                                                                          monkeypatch):
    drise = dict(type='drise', num_masks=24, batch_size=8, progress=False)
    batches = []
    candidates = CandidateScorer.candidates

    def counting(self, inputs, samples):
        batches.append(len(inputs))
        return candidates(self, inputs, samples)
    monkeypatch.setattr(CandidateScorer, 'candidates', counting)
    wide = DetCAM(demo_model, method=drise)(DEMO_IMAGE)
    assert batches == [1, 7] * 3  # per batch of masks: a first copy measured, then the rest
    one_copy = CandidateScorer(demo_model, DetCAM(demo_model).pipeline)
    one_copy([wide.image])
    budget = int(one_copy.copy_bytes * 2.5)  # two copies fit, not three
    batches.clear()
    narrow = DetCAM(demo_model, method=drise, memory_budget=budget)(DEMO_IMAGE)
    assert batches == [1, 2, 2, 2, 1] * 3  # two copies at once after the first
    np.testing.assert_allclose(narrow.cams, wide.cams, atol=1e-6)
    with pytest.raises(MemoryBudgetError, match="one image's raw candidates takes"):
        DetCAM(demo_model, method=drise, memory_budget=one_copy.copy_bytes // 2)(DEMO_IMAGE)


def test_the_cli_refuses_a_budget_one_image_exceeds_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'demo_gradcam.py'),
         str(REPO / 'demo' / 'rtmdet_shapes.py'), str(REPO / 'demo' / 'rtmdet_shapes.pth'),
         DEMO_IMAGE, '--method', 'drise', '--memory-budget', '10KB',
         '--out-dir', str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'over the memory budget of 10.0 KB' in lines[0], done.stderr


def test_scorecam_reruns_as_many_copies_as_fit_with_the_same_maps(demo_model, monkeypatch):
    from mmdet_cam.engine.candidates import RawCandidatesModel
    options = dict(method=dict(type='scorecam', batch_size=16),
                   target_layers=['neck.out_convs.2'], topk=2)
    copies, models = [], []
    forward = RawCandidatesModel.forward

    def counting(self, inputs, count=None):
        copies.append(count or len(inputs))
        models.append(self)
        return forward(self, inputs, count)
    monkeypatch.setattr(RawCandidatesModel, 'forward', counting)
    wide = DetCAM(demo_model, **options)(DEMO_IMAGE)
    assert max(copies) == 16
    copies.clear()
    narrow = DetCAM(demo_model, memory_budget=int(models[-1].copy_bytes * 3.5), **options)(
        DEMO_IMAGE)
    assert copies[0] == 1 and max(copies) == 3
    np.testing.assert_allclose(narrow.cams, wide.cams, atol=1e-6)
