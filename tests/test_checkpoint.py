"""Checkpoints as users have them: written by mmengine's Runner, loaded in a fresh process
without ``--trust-checkpoint``; and pickles that would run code, refused before they can."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.logging import HistoryBuffer

from mmdet_cam import build_detector
from mmdet_cam.errors import CheckpointError
from mmdet_cam.shapes import write_split

REPO = Path(__file__).parents[1]
DEMO_CONFIG = REPO / 'demo' / 'rtmdet_shapes.py'
IMAGE = REPO / 'demo' / 'images' / 'shapes_1.jpg'


def run(*command, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS='2')
    return subprocess.run([sys.executable, *map(str, command)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """``epoch_1.pth`` exactly as ``tools/train.py`` (mmengine's Runner) writes it."""
    root = tmp_path_factory.mktemp('train')
    data = root / 'data'
    write_split(data, 'train', 8, seed=1)
    write_split(data, 'val', 2, seed=2)  # the Runner builds the val loader even when idle
    loaders = [f'{split}_dataloader.{key}' for split in ('train', 'val') for key in
               ('num_workers=0', 'persistent_workers=False', f'dataset.data_root={data}/')]
    out = run(REPO / 'tools' / 'train.py', DEMO_CONFIG, '--work-dir', root / 'work',
              '--cfg-options', 'train_cfg.max_epochs=1', 'train_dataloader.batch_size=4',
              f'val_evaluator.ann_file={data}/val.json', *loaders)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root / 'work' / 'epoch_1.pth'


def test_runner_checkpoint_is_what_the_allowlist_is_about(runner_checkpoint):
    # the file really holds the message hub's HistoryBuffers and numpy state
    raw = torch.load(runner_checkpoint, map_location='cpu', weights_only=False)
    scalars = raw['message_hub']['log_scalars']
    assert scalars and all(isinstance(v, HistoryBuffer) for v in scalars.values())
    assert 'optimizer' in raw and 'param_schedulers' in raw


def test_cli_explains_with_a_runner_checkpoint_in_a_fresh_process(runner_checkpoint, tmp_path):
    out = run(REPO / 'tools' / 'demo_gradcam.py', DEMO_CONFIG, runner_checkpoint, IMAGE,
              '--score-thr', '0', '--topk', '2', '--out-dir', tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'trust' not in out.stderr
    assert (tmp_path / 'shapes_1_cam.jpg').is_file() and (tmp_path / 'shapes_1.json').is_file()


def test_runner_checkpoint_weights_are_loaded_exactly(runner_checkpoint):
    raw = torch.load(runner_checkpoint, map_location='cpu', weights_only=False)['state_dict']
    model = build_detector(DEMO_CONFIG, str(runner_checkpoint))
    loaded = model.state_dict()
    assert raw.keys() == loaded.keys()
    for name, value in raw.items():
        assert torch.equal(value, loaded[name]), name


class _RunsCode:
    """Unpickling it runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class _GetattrEscape:
    """Unpickling it calls ``getattr(HistoryBuffer, 'register_statistics')``: a getattr on the
    allow-listed class that is not one of its statistics methods."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, 'register_statistics')


def _checkpoint_with(path, payload):
    state = torch.load(REPO / 'demo' / 'rtmdet_shapes.pth', map_location='cpu')
    torch.save(dict(state, meta=dict(state['meta'], payload=payload)), path)
    return path


def test_checkpoint_that_runs_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / 'pwned'
    ckpt = _checkpoint_with(tmp_path / 'evil.pth', _RunsCode(marker))
    with pytest.raises(CheckpointError, match='trust_checkpoint=True'):
        build_detector(DEMO_CONFIG, str(ckpt))
    out = run(REPO / 'tools' / 'demo_gradcam.py', DEMO_CONFIG, ckpt, IMAGE,
              '--out-dir', tmp_path / 'out')
    assert out.returncode == 2
    assert out.stderr.strip().startswith('error:') and '--trust-checkpoint' in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_getattr_on_the_allowlisted_class_is_limited_to_its_statistics(tmp_path):
    ckpt = _checkpoint_with(tmp_path / 'getattr.pth', _GetattrEscape())
    with pytest.raises(CheckpointError, match='register_statistics'):
        build_detector(DEMO_CONFIG, str(ckpt))
