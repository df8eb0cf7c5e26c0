"""Long runs lose nothing: a folder run killed with SIGKILL and resumed with ``--resume`` ends
with the same files as a run that was never interrupted; a folder made with other settings is
refused before anything in it is overwritten."""
import copy
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmdet_cam.shapes import write_split

pytestmark = pytest.mark.slow  # subprocesses

REPO = Path(__file__).parents[1]
COMMAND = [sys.executable, str(REPO / 'tools' / 'demo_gradcam.py'),
           str(REPO / 'demo' / 'rtmdet_evidence.py'), str(REPO / 'demo' / 'rtmdet_evidence.pth')]
OPTIONS = ['--atlas', '--html', '--per-box']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('scenes')
    write_split(root, 'val', 24, seed=31, kind='evidence')
    return root / 'val'


def per_image_json(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.glob('0*.json'))}


def test_a_killed_run_resumed_gives_the_files_of_an_uninterrupted_one(folder, tmp_path):
    whole, resumed = tmp_path / 'whole', tmp_path / 'resumed'
    run = subprocess.run(COMMAND + [str(folder), '--out-dir', str(whole)] + OPTIONS,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr

    process = subprocess.Popen(COMMAND + [str(folder), '--out-dir', str(resumed)] + OPTIONS,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list(resumed.glob('0*.json'))) < 3 and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(list(resumed.glob('0*.json')))
    assert 3 <= written < 24, 'the run was not killed mid-way'

    run = subprocess.run(COMMAND + [str(folder), '--out-dir', str(resumed), '--resume']
                         + OPTIONS, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert f'({written} kept from the earlier run)' in run.stdout
    assert per_image_json(resumed) == per_image_json(whole)  # byte for byte
    assert (resumed / 'atlas.json').read_bytes() == (whole / 'atlas.json').read_bytes()
    files = sorted(p.name for p in whole.iterdir())
    assert sorted(p.name for p in resumed.iterdir()) == files  # no temporary file left
    assert not [name for name in files if '.part' in name]


def test_resuming_into_a_folder_made_otherwise_is_refused_and_changes_nothing(folder, tmp_path):
    out = tmp_path / 'cam'
    run = subprocess.run(COMMAND + [str(folder), '--out-dir', str(out)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    run = subprocess.run(COMMAND + [str(folder), '--out-dir', str(out), '--resume',
                                    '--score-thr', '0.5', '--method', 'hirescam'],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'Traceback' not in run.stderr
    assert 'score_thr: 0.3 then, 0.5 now' in errors[0] and "method: 'odam' then" in errors[0]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


def test_a_hooks_recorded_settings_name_objects_without_memory_addresses():
    """A target (or method) given as an object or a function is recorded by its import path
    and attributes: two runs with equal settings record the same, so a resumed run keeps
    their images (a repr with an address refused every resume)."""
    import json

    from mmdet_cam import DetCAMHook
    from mmdet_cam.engine.targets import BoxCoordinateTarget

    def own_target(pred_instances):
        return pred_instances.scores

    for target in (BoxCoordinateTarget('y2'), own_target):
        first = DetCAMHook(target=target).run_settings()
        again = DetCAMHook(target=copy.copy(target)).run_settings()
        assert first == again and '0x' not in json.dumps(first)
    assert DetCAMHook(target=BoxCoordinateTarget('y2')).run_settings() != \
        DetCAMHook(target=BoxCoordinateTarget('x1')).run_settings()


def test_a_resumed_run_keeps_a_finished_video_and_its_atlas_part(tmp_path):
    """A video explained with --atlas keeps its frames' atlas part (``<stem>.atlas.npz``,
    written before its JSON), so a resumed run restores it instead of explaining it again,
    and the atlas is the same."""
    import cv2
    import numpy as np

    from mmdet_cam.shapes import make_image
    folder, out = tmp_path / 'in', tmp_path / 'out'
    folder.mkdir()
    rng = np.random.default_rng(5)
    writer = cv2.VideoWriter(str(folder / 'clip.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 5,
                             (320, 240))
    for _ in range(3):
        writer.write(make_image(rng, 240, 320, kind='evidence')[0])
    writer.release()
    cv2.imwrite(str(folder / 'still.jpg'), make_image(rng, 240, 320, kind='evidence')[0])
    command = COMMAND + [str(folder), '--out-dir', str(out), '--atlas']
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    atlas = json.loads((out / 'atlas.json').read_text())
    assert atlas['images'] == 4 and (out / 'clip.atlas.npz').is_file()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()
              if p.name != 'atlas.json' and not p.name.startswith('atlas_')}
    again = subprocess.run(command + ['--resume'], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert '(2 kept from the earlier run)' in again.stdout
    assert json.loads((out / 'atlas.json').read_text()) == atlas
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()
            if p.name in before} == before  # the video was not explained again
