"""The OpenMMLab workflow: mmdet's test loop with DetCAMHook, CAMLocalizationMetric and
CAMFaithfulnessMetric, on one process and on two (torchrun, gloo, CPU), and CAM methods added
from a user's own module."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmdet_cam.shapes import write_split

pytestmark = pytest.mark.slow  # subprocesses, Runners or a browser: `-m "not slow"` skips them

REPO = Path(__file__).parents[1]
CONFIG = REPO / 'configs' / 'rtmdet_shapes_cam.py'
FAITHFULNESS_CONFIG = REPO / 'configs' / 'rtmdet_shapes_cam_faithfulness.py'
CHECKPOINT = REPO / 'demo' / 'rtmdet_shapes.pth'


@pytest.fixture(scope='module')
def val_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    write_split(root, 'val', 6, seed=5)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def val_split_options(val_root: Path) -> dict:
    """Config overrides that point the demo CAM config at the generated val split."""
    return {'test_dataloader.dataset.data_root': f'{val_root}/',
            'test_evaluator.0.ann_file': f'{val_root}/val.json',
            'test_dataloader.num_workers': 0, 'test_dataloader.persistent_workers': False}


def run_test_loop(work_dir: Path, val_root: Path, processes: int) -> dict:
    options = [f'{key}={value}' for key, value in val_split_options(val_root).items()]
    options.append('custom_hooks.0.html=True')  # the report, written once all processes are done
    options.append('custom_hooks.0.atlas=True')  # gathered from every process
    options.append('test_dataloader.batch_size=2')
    tool = [str(REPO / 'tools' / 'test_cam.py'), str(FAITHFULNESS_CONFIG), str(CHECKPOINT),
            '--work-dir', str(work_dir), '--cfg-options', *options]
    if processes == 1:
        command = [sys.executable, *tool]
    else:
        command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
                   str(processes), '--master_port', str(free_port()), *tool,
                   '--launcher', 'pytorch']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((work_dir / 'test_metrics.json').read_text())


def test_test_loop_writes_one_output_per_image_and_metrics_agree_across_processes(
        val_root, tmp_path):
    single = run_test_loop(tmp_path / 'one', val_root, 1)
    double = run_test_loop(tmp_path / 'two', val_root, 2)
    stems = sorted(p.stem for p in (val_root / 'val').glob('*.jpg'))
    for work_dir in (tmp_path / 'one', tmp_path / 'two'):
        cam_dir = work_dir / 'cam'
        assert sorted(p.name for p in cam_dir.glob('*_cam.jpg')) == [f'{s}_cam.jpg' for s in stems]
        assert sorted(p.stem for p in cam_dir.glob('*.json')) == sorted(stems + ['atlas'])
        assert sorted(p.stem for p in cam_dir.glob('*.html')) == sorted(stems + ['index'])
        for path in cam_dir.glob('0*.json'):  # the hook's faithfulness figures, per detection
            for row in json.loads(path.read_text())['detections']:
                assert 0 <= row['deletion'] <= 1 and 0 <= row['insertion'] <= 1
                assert row['oa'] == pytest.approx(row['insertion'] - row['deletion'], abs=2e-4)
    atlases = [json.loads((tmp_path / run / 'cam' / 'atlas.json').read_text())['classes']
               for run in ('one', 'two')]
    assert sum(c['detections'] for c in atlases[0].values()) >= single['cam/explained'] > 0
    for name, entry in atlases[0].items():  # every process's detections, in one atlas
        assert entry['detections'] == atlases[1][name]['detections']
        assert entry['inside'] == pytest.approx(atlases[1][name]['inside'], abs=1e-4)
    assert single['cam/matched'] > 0
    for key in ('cam/pointing', 'cam/energy', 'cam/chance', 'cam/matched', 'coco/bbox_mAP',
                'cam/deletion', 'cam/insertion', 'cam/oa', 'cam/explained'):
        assert single[key] == pytest.approx(double[key], abs=1e-6), key
    assert single['cam/energy'] > single['cam/chance']
    assert single['cam/explained'] >= single['cam/matched']
    assert 0 <= single['cam/deletion'] < single['cam/insertion'] <= 1


def test_a_method_from_the_users_module_works_by_name(tmp_path):
    (tmp_path / 'my_cams.py').write_text(textwrap.dedent('''
        from pytorch_grad_cam import GradCAM
        from mmdet_cam import CAM_METHODS

        @CAM_METHODS.register_module(name='counterfactual-gradcam')
        class CounterfactualGradCAM(GradCAM):
            """Grad-CAM of the evidence against the detection (negated channel weights)."""
            def get_cam_weights(self, *args):
                return -super().get_cam_weights(*args)
    '''))
    config = tmp_path / 'demo_with_my_cams.py'
    config.write_text(f"_base_ = '{REPO / 'demo' / 'rtmdet_shapes.py'}'\n"
                      "custom_imports = dict(imports=['my_cams'], allow_failed_imports=False)\n")
    image = REPO / 'demo' / 'images' / 'shapes_1.jpg'
    env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    for method in ('counterfactual-gradcam', 'gradcam'):
        out = subprocess.run(
            [sys.executable, str(REPO / 'tools' / 'demo_gradcam.py'), str(config),
             str(CHECKPOINT), str(image), '--method', method, '--topk', '1', '--out-dir',
             str(tmp_path / method)], capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        assert 'FutureWarning' not in out.stderr, 'third-party notices reach the user'
    summaries = [json.loads((tmp_path / m / 'shapes_1.json').read_text())
                 for m in ('counterfactual-gradcam', 'gradcam')]
    assert summaries[0]['method'] == 'counterfactual-gradcam'
    # the evidence against a confident detection is not where the evidence for it is
    assert summaries[0]['detections'][0]['peak'] != summaries[1]['detections'][0]['peak']


def test_hook_keeps_only_the_named_classes_of_a_runner_built_model(val_root, tmp_path):
    # A model built by mmengine's Runner has no dataset_meta: the hook takes the class names
    # from the test dataset, so classes=['circle'] resolves to the circle label.
    from mmengine.config import Config
    from mmengine.runner import Runner

    from mmdet_cam import DetCAMHook
    from mmdet_cam.model.checkpoint import load_checkpoint

    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir = str(tmp_path)
    cfg.merge_from_dict(val_split_options(val_root))
    runner = Runner.from_cfg(cfg)
    load_checkpoint(runner.model, str(CHECKPOINT))
    hook = DetCAMHook(method='hirescam', classes=['circle'], score_thr=0.3)
    hook.before_test(runner)
    circle = ['square', 'circle', 'triangle'].index('circle')
    labels = []
    for image in sorted((val_root / 'val').glob('*.jpg')):
        labels += hook.cam(str(image)).detections.labels.tolist()
    assert labels and set(labels) == {circle}


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_triage_tags_detections_and_explains_missed_objects(val_root, tmp_path, browser):
    from mmengine.config import Config
    from mmengine.runner import Runner

    from mmdet_cam.model.checkpoint import load_checkpoint

    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir = str(tmp_path)
    cfg.merge_from_dict(val_split_options(val_root))
    # two detections per image at a low threshold: images with more objects miss some
    cfg.custom_hooks = [dict(type='DetCAMHook', score_thr=0.05, topk=2, triage=True,
                             html=True)]
    runner = Runner.from_cfg(cfg)
    load_checkpoint(runner.model, str(CHECKPOINT))
    runner.test()

    coco = json.loads((val_root / 'val.json').read_text())
    names = [c['name'] for c in sorted(coco['categories'], key=lambda c: c['id'])]
    label_of = {c['id']: names.index(c['name']) for c in coco['categories']}
    cam_dir, missed_count, errors = tmp_path / 'cam', 0, []
    for image in coco['images']:
        stem = Path(image['file_name']).stem
        report = json.loads((cam_dir / f'{stem}.json').read_text())
        gt = [(label_of[a['category_id']], [a['bbox'][0], a['bbox'][1],
                                            a['bbox'][0] + a['bbox'][2],
                                            a['bbox'][1] + a['bbox'][3]])
              for a in coco['annotations'] if a['image_id'] == image['id']]
        taken = set()
        for det in sorted(report['detections'], key=lambda d: -d['score']):
            free = [(iou(det['bbox'], box), g) for g, (label, box) in enumerate(gt)
                    if label == det['label'] and g not in taken]
            best = max(free, default=(0.0, -1))
            assert det['tag'] == ('TP' if best[0] >= 0.5 else 'FP'), (stem, det)
            if det['tag'] == 'TP':
                taken.add(best[1])
        missed = sorted(box for g, (_, box) in enumerate(gt) if g not in taken)
        named = sorted(m['named_bbox'] for m in report['missed'])
        np.testing.assert_allclose(np.reshape(named, (-1, 4)), np.reshape(missed, (-1, 4)),
                                   atol=0.01)
        for m in report['missed']:  # the model's best candidate for it, explained
            assert m['tag'] == 'FN' and 0 <= m['iou_with_named'] <= 1 and 0 < m['score'] <= 1
        if missed:
            assert (cam_dir / f'{stem}_missed_cam.jpg').is_file()
        missed_count += len(missed)
        page = browser.new_page()  # the report shows the tags and lists the missed objects
        page.goto((cam_dir / f'{stem}.html').as_uri())
        for det in report['detections']:
            drawn = page.locator(f'[data-box="{det["index"]}"]').get_attribute('class')
            assert det['tag'].lower() in drawn.split()
        assert page.locator('[data-role=missed] tbody tr').count() == len(report['missed'])
        page.close()
        errors += [(d['index'], 'FP') for d in report['detections'] if d['tag'] == 'FP']
        errors += [(m['index'], 'FN') for m in report['missed']]
    assert missed_count > 0
    summary = json.loads((cam_dir / 'triage.json').read_text())
    listed = summary['false_positives'] + summary['missed']
    assert sorted((e['index'], e['tag']) for e in listed) == sorted(errors)


def test_test_loop_explains_masks_and_scores_them_against_gt_masks(val_root, tmp_path):
    """The instance demo in mmdet's test loop with ``target='mask'``: COCO bbox and segm mAP,
    the maps' localisation against the ground-truth boxes and masks, and their faithfulness."""
    options = [f'{key}={value}' for key, value in val_split_options(val_root).items()]
    options.append('custom_hooks.0.faithfulness_steps=2')
    command = [sys.executable, str(REPO / 'tools' / 'test_cam.py'),
               str(REPO / 'configs' / 'rtmdet-ins_shapes_cam.py'),
               str(REPO / 'demo' / 'rtmdet-ins_shapes.pth'), '--work-dir', str(tmp_path),
               '--cfg-options', *options]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / 'test_metrics.json').read_text())
    assert metrics['coco/segm_mAP_50'] >= 0.8 and metrics['cam/matched'] >= 10
    # a mask is a fraction of its box; the maps are on the objects far above chance
    assert metrics['cam/chance_mask'] < metrics['cam/chance']
    assert metrics['cam/pointing_mask'] >= 0.7 > 5 * metrics['cam/chance_mask']
    # deletion / insertion follow each mask by mask IoU: removing what the map ranks first
    # takes the mask away faster than restoring it brings it back
    assert metrics['cam/explained'] >= 10 and metrics['cam/oa'] > 0.2, metrics
    summaries = [json.loads(p.read_text()) for p in (tmp_path / 'cam').rglob('*.json')]
    rows = [row for summary in summaries for row in summary['detections']]
    assert rows and all('energy_in_mask' in row for row in rows)


@pytest.mark.slow
def test_test_loop_scores_the_maps_on_the_evidence_the_annotations_record(tmp_path):
    """The evidence demo in mmdet's test loop: CAMLocalizationMetric reads each object's cue
    from the annotation file and scores the maps on it, inside and outside the boxes; occlusion
    finds the cues where the default's neck-level maps do not."""
    root = tmp_path / 'evidence'
    write_split(root, 'val', 4, seed=7, kind='evidence')
    metrics = {}
    for method, option in (('odam', 'method=odam'), ('occlusion', 'method.window=24')):
        work_dir = tmp_path / method
        options = [f'{key}={value}' for key, value in val_split_options(root).items()]
        options += [f'test_evaluator.1.evidence_file={root}/val.json',
                    f'custom_hooks.0.{option}']
        out = subprocess.run([sys.executable, str(REPO / 'tools' / 'test_cam.py'),
                              str(REPO / 'configs' / 'rtmdet_evidence_cam.py'),
                              str(REPO / 'demo' / 'rtmdet_evidence.pth'), '--work-dir',
                              str(work_dir), '--cfg-options', *options],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        metrics[method] = json.loads((work_dir / 'test_metrics.json').read_text())
    odam, occlusion = metrics['odam'], metrics['occlusion']
    assert odam['coco/bbox_mAP_50'] >= 0.8
    for run in (odam, occlusion):
        assert run['cam/evidence_in'] + run['cam/evidence_out'] >= 6
        assert run['cam/evidence_in'] >= 2 and run['cam/evidence_out'] >= 1, run
    assert occlusion['cam/evidence_pointing'] >= 0.6 > odam['cam/evidence_pointing'] + 0.2


def test_the_hook_sends_overlays_and_the_atlas_to_the_configs_tensorboard(val_root, tmp_path):
    """With TensorBoard among the config's vis_backends, every explained test image's overlay
    and the atlas pictures reach its event file (read back with tensorboard's own reader),
    next to the files the hook writes as before."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mmdet_cam.model.checkpoint import load_checkpoint

    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir = str(tmp_path)
    cfg.merge_from_dict(val_split_options(val_root))
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend'),
                                   dict(type='TensorboardVisBackend')]
    # mmengine keeps one visualizer per name for the process: a Runner of an earlier test
    # would lend this one its own (local-only) visualizer
    cfg.visualizer.name = f'tensorboard_{tmp_path.name}'
    cfg.custom_hooks = [dict(type='DetCAMHook', method='odam', score_thr=0.3, atlas=True)]
    runner = Runner.from_cfg(cfg)
    load_checkpoint(runner.model, str(CHECKPOINT))
    runner.test()

    events = sorted(tmp_path.glob('**/events.out.tfevents*'))
    assert events, sorted(str(p) for p in tmp_path.rglob('*'))
    reader = EventAccumulator(str(events[0].parent), size_guidance={'images': 0})
    reader.Reload()
    tags = set(reader.Tags()['images'])
    stems = sorted(p.stem for p in (val_root / 'val').glob('*.jpg'))
    assert {f'cam/odam/{stem}' for stem in stems} <= tags
    atlas = json.loads((tmp_path / 'cam' / 'atlas.json').read_text())
    pictured = {name for name, c in atlas['classes'].items() if c['picture']}
    assert pictured and {f'cam/odam/atlas/{name}' for name in pictured} <= tags
    image = reader.Images(f'cam/odam/{stems[0]}')[0]
    decoded = cv2.imdecode(np.frombuffer(image.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    written = cv2.imread(str(tmp_path / 'cam' / f'{stems[0]}_cam.jpg'))
    assert decoded.shape == written.shape  # the overlay the files sink writes
    assert np.abs(decoded.astype(float) - written).mean() < 8  # JPEG against PNG
    assert not list(tmp_path.glob('**/vis_image/*'))  # the local backend gets no copies


def test_a_killed_test_run_resumed_gives_the_files_and_metrics_of_an_uninterrupted_one(
        tmp_path):
    """``DetCAMHook(resume=True)``: the test loop killed with SIGKILL mid-way and started
    again explains only the images it had not finished, and ends with the same per-image JSON,
    triage, atlas and metrics as a run that was never interrupted."""
    import signal
    import time
    root = tmp_path / 'shapes'
    write_split(root, 'val', 12, seed=12)
    options = [f'{key}={value}' for key, value in val_split_options(root).items()]
    options += ['custom_hooks.0.atlas=True']

    def command(work_dir: Path, *more: str) -> list:
        return [sys.executable, str(REPO / 'tools' / 'test_cam.py'), str(FAITHFULNESS_CONFIG),
                str(CHECKPOINT), '--work-dir', str(work_dir), '--triage', '--cfg-options',
                *options, *more]

    env = dict(os.environ, OMP_NUM_THREADS='1')
    whole, resumed = tmp_path / 'whole', tmp_path / 'resumed'
    out = subprocess.run(command(whole), capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    process = subprocess.Popen(command(resumed, 'custom_hooks.0.resume=True'), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list((resumed / 'cam').glob('0*.json'))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 2 <= len(list((resumed / 'cam').glob('0*.json'))) < 12, 'not killed mid-way'
    out = subprocess.run(command(resumed, 'custom_hooks.0.resume=True'), capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]

    def files(work_dir: Path) -> dict:
        return {p.name: p.read_bytes() for p in sorted((work_dir / 'cam').glob('*.json'))}

    assert files(resumed) == files(whole)  # per image, triage.json and atlas.json, byte for byte
    metrics = [json.loads((w / 'test_metrics.json').read_text()) for w in (whole, resumed)]
    assert metrics[0] == metrics[1] and metrics[0]['cam/explained'] > 0

    # resuming with other settings is refused in one line, and nothing is touched
    before = files(resumed)
    out = subprocess.run(command(resumed, 'custom_hooks.0.resume=True',
                                 'custom_hooks.0.score_thr=0.5'),
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'score_thr: 0.3 then, 0.5 now' in errors[0], out.stderr[-2000:]
    assert files(resumed) == before
    # so is resuming with other weights, whatever the checkpoint's name
    import torch
    checkpoint = torch.load(CHECKPOINT, map_location='cpu', weights_only=True)
    state = checkpoint.get('state_dict', checkpoint)
    name = next(key for key, value in state.items() if value.is_floating_point())
    state[name] = state[name] + 1e-3
    retrained = tmp_path / 'retrained.pth'
    torch.save(checkpoint, retrained)
    out = subprocess.run([part if part != str(CHECKPOINT) else str(retrained)
                          for part in command(resumed, 'custom_hooks.0.resume=True')],
                         capture_output=True, text=True, timeout=600, env=env)
    errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
    assert out.returncode == 2 and len(errors) == 1 and 'weights:' in errors[0], out.stderr[-2000:]
    assert files(resumed) == before
