"""tools/demo_gradcam.py run as a user runs it: a subprocess, checked by its files, JSON,
exit code and messages."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mmdet_cam.methods import DEFAULT_METHOD
from mmdet_cam.settings import PIXEL_EVIDENCE_METHOD

from conftest import make_scene, small_config

pytestmark = pytest.mark.slow  # subprocesses, Runners or a browser: `-m "not slow"` skips them

TOOL = str(Path(__file__).parents[1] / 'tools' / 'demo_gradcam.py')


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    """A config file for a small untrained RetinaNet (320 px, no score threshold)."""
    path = tmp_path_factory.mktemp('cfg') / 'retinanet_small.py'
    small_config('retinanet/retinanet_r18_fpn_1x_coco.py').dump(str(path))
    return str(path)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    cv2.imwrite(str(folder / 'a.jpg'), make_scene(seed=1))
    cv2.imwrite(str(folder / 'b.png'), make_scene(200, 260, seed=2))
    return folder


def run(*args, expect=0):
    out = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == expect, out.stdout + out.stderr
    assert 'Traceback' not in out.stderr, out.stderr
    return out


def test_one_image_gives_overlay_per_box_images_maps_and_json(config, images, tmp_path):
    run(config, 'none', images / 'a.jpg', '--score-thr', 0, '--topk', 3, '--per-box',
        '--save-npy', '--save-all', '--method', 'gradcam++', '--out-dir', tmp_path)
    overlay = cv2.imread(str(tmp_path / 'a_cam.jpg'))
    assert overlay.shape == (240, 320, 3)
    summary = json.loads((tmp_path / 'a.json').read_text())
    assert summary['method'] == 'gradcam++' and summary['target_layers'] == ['neck']
    assert len(summary['detections']) == 3
    for box in summary['detections']:
        assert set(box) >= {'bbox', 'label', 'class_name', 'score', 'peak', 'peak_in_box',
                            'energy_in_box'}
        assert 0 <= box['energy_in_box'] <= 1
        x1, y1, x2, y2 = box['bbox']
        assert 0 <= x1 <= x2 <= 320 and 0 <= y1 <= y2 <= 240
    per_box = sorted(p.name for p in tmp_path.glob('a_box*.jpg'))
    assert len(per_box) == 3 and per_box[0].startswith('a_box0_')
    maps = np.load(tmp_path / 'a_cams.npy')
    assert maps.shape == (3, 240, 320) and 0 <= maps.min() and maps.max() <= 1
    assert (tmp_path / 'a_original.jpg').exists() and (tmp_path / 'a_detection.jpg').exists()


def test_renormalize_keeps_maps_inside_their_boxes(config, images, tmp_path):
    run(config, 'none', images / 'a.jpg', '--score-thr', 0, '--topk', 1, '--renormalize',
        '--per-box', '--alpha', 1.0, '--out-dir', tmp_path)
    box = json.loads((tmp_path / 'a.json').read_text())['detections'][0]['bbox']
    picture = cv2.imread(str(next(tmp_path.glob('a_box0_*.jpg')))).astype(int)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    # with alpha 1 the picture is the JET colour of the map: zero (dark blue) outside the box
    outside = picture.copy()
    outside[max(y1 - 3, 0):y2 + 4, max(x1 - 3, 0):x2 + 4] = -1
    blue = outside[outside[..., 0] >= 0]
    assert np.median(blue[:, 0]) > 100 and np.median(blue[:, 2]) < 60


def test_folder_with_a_bad_image_reports_it_and_keeps_going(config, images, tmp_path):
    folder = tmp_path / 'in'
    folder.mkdir()
    for name in ('a.jpg', 'b.png'):
        (folder / name).write_bytes((images / name).read_bytes())
    (folder / 'broken.jpg').write_bytes(b'not an image')
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    (out_dir / 'keep_me.txt').write_text('mine')
    out = run(config, 'none', folder, '--score-thr', 0, '--topk', 2, '--out-dir', out_dir,
              expect=1)
    assert 'broken.jpg' in out.stderr
    assert (out_dir / 'a_cam.jpg').exists() and (out_dir / 'b_cam.jpg').exists()
    assert (out_dir / 'keep_me.txt').read_text() == 'mine'
    assert '2 of 3 inputs' in out.stdout and '1 failed' in out.stdout


def test_grayscale_rgba_and_16_bit_images_are_explained(config, tmp_path):
    gray = cv2.cvtColor(make_scene(), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / 'gray.png'), gray)
    cv2.imwrite(str(tmp_path / 'rgba.png'), cv2.cvtColor(make_scene(), cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(tmp_path / 'deep.png'), make_scene().astype(np.uint16) * 257)
    run(config, 'none', tmp_path / '*.png', '--score-thr', 0, '--topk', 1,
        '--out-dir', tmp_path / 'out')
    for stem in ('gray', 'rgba', 'deep'):
        assert cv2.imread(str(tmp_path / 'out' / f'{stem}_cam.jpg')).shape == (240, 320, 3)


def test_video_is_written_back_with_its_frame_rate(config, tmp_path):
    video = tmp_path / 'clip.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 12, (320, 240))
    for seed in range(4):
        writer.write(make_scene(seed=seed))
    writer.release()
    run(config, 'none', video, '--score-thr', 0, '--topk', 2, '--out-dir', tmp_path / 'out')
    result = cv2.VideoCapture(str(tmp_path / 'out' / 'clip_cam.mp4'))
    assert round(result.get(cv2.CAP_PROP_FPS)) == 12
    assert int(result.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert (int(result.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(result.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (320, 240)
    frames = json.loads((tmp_path / 'out' / 'clip.json').read_text())['frames']
    assert [len(f['detections']) for f in frames] == [2, 2, 2, 2]


def test_each_layer_alone_gives_its_own_files_and_report_panel(config, tmp_path):
    """--per-layer on an image and a video: files per layer, one shared original per image or
    frame, the same detections in each panel, and each layer's own map."""
    folder, layers = tmp_path / 'in', ['neck.fpn_convs.0', 'neck.fpn_convs.1']
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.jpg'), make_scene(seed=1))
    writer = cv2.VideoWriter(str(folder / 'clip.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 5,
                             (320, 240))
    for seed in range(2):
        writer.write(make_scene(seed=seed))
    writer.release()
    out = tmp_path / 'out'
    run(config, 'none', folder, '--score-thr', 0, '--topk', 2, '--per-layer', '--save-npy',
        '--target-layers', *layers, '--html', '--out-dir', out)
    summaries = [json.loads((out / f'a.{layer}.json').read_text()) for layer in layers]
    for k, (layer, summary) in enumerate(zip(layers, summaries)):
        assert summary['target_layers'] == [layer]
        assert (summary['group'], summary['panel'], summary['panel_index']) == ('a', layer, k)
        assert (out / f'a.{layer}_cam.jpg').is_file() and (out / f'a.{layer}_map1.jpg').is_file()
        assert (out / f'clip.{layer}_cam.mp4').is_file()
        frames = json.loads((out / f'clip.{layer}.json').read_text())['frames']
        assert [len(f['detections']) for f in frames] == [2, 2]
        assert (out / f'clip.{layer}_f00001_map0.jpg').is_file()
    assert [d['bbox'] for d in summaries[0]['detections']] == \
        [d['bbox'] for d in summaries[1]['detections']]
    maps = [np.load(out / f'a.{layer}_cams.npy') for layer in layers]
    assert np.abs(maps[0] - maps[1]).max() > 0.1
    originals = sorted(p.name for p in out.glob('*_original.jpg'))
    assert originals == ['a_original.jpg', 'clip_f00000_original.jpg', 'clip_f00001_original.jpg']
    assert sorted(p.name for p in out.glob('*.html')) == ['a.html', 'clip.html', 'index.html']


def test_list_layers_prints_names_and_shapes(config, images):
    out = run(config, 'none', images / 'a.jpg', '--list-layers')
    line = next(row for row in out.stdout.splitlines() if row.startswith('neck.fpn_convs.0 '))
    assert '[1, 256, 32, 40]' in line


def test_help_documents_every_option_with_examples():
    out = run('--help')
    for option in ('--method', '--method-options', '--boxes', '--explain-class', '--contrast',
                   '--target-layers', '--fuse', '--target', '--score-thr', '--topk',
                   '--classes', '--device', '--out-dir', '--renormalize', '--per-box',
                   '--save-npy', '--save-all', '--list-layers', '--cfg-options', '--alpha',
                   '--show', '--per-layer', '--html', '--texts', 'examples:'):
        assert option in out.stdout


@pytest.mark.parametrize('case, message', [
    ('missing_config', 'config not found'),
    ('missing_checkpoint', 'checkpoint not found'),
    ('missing_image', 'image not found'),
    ('corrupt_image', 'cannot read image'),
    ('empty_folder', 'no images or videos in folder'),
    ('unknown_method', "unknown cam method 'gradcan'"),
    ('repeated_method', 'method names separated by commas, each once'),
    ('bad_method_option', "bad options for method DRISE: got an unexpected keyword argument "
     "'num_maks' (its options: num_masks, grid, p,"),
    ('bad_layer', 'Close matches: neck.fpn_convs'),
    ('reversed_box', 'is empty or reversed'),
    ('boxes_for_a_folder', '--boxes names boxes of one image'),
    ('contrast_without_class', '--contrast needs --explain-class'),
    ('unwritable_out_dir', 'cannot write to output folder'),
    ('missing_device', 'cuda'),
    ('mmdet_fails', 'mmdet cannot run the detector of ssd300_coco.py'),
])
def test_bad_input_gets_a_one_line_error(config, images, tmp_path, case, message):
    image, args = images / 'a.jpg', []
    cfg, ckpt, out_dir = config, 'none', tmp_path / 'out'
    if case == 'missing_config':
        cfg = tmp_path / 'nope.py'
    elif case == 'missing_checkpoint':
        ckpt = tmp_path / 'nope.pth'
    elif case == 'missing_image':
        image = tmp_path / 'nope.jpg'
    elif case == 'corrupt_image':
        image = tmp_path / 'corrupt.jpg'
        image.write_bytes(b'\xff\xd8 garbage')
    elif case == 'empty_folder':
        image = tmp_path / 'empty'
        image.mkdir()
    elif case == 'unknown_method':
        args = ['--method', 'gradcan']
    elif case == 'repeated_method':
        args = ['--method', 'gradcam,odam,gradcam']
    elif case == 'bad_method_option':
        args = ['--method', 'drise', '--method-options', 'num_maks=10']
    elif case == 'bad_layer':
        args = ['--target-layers', 'neck.fpn_conv.0']
    elif case == 'reversed_box':
        args = ['--boxes', '50,50,10,10:person']
    elif case == 'boxes_for_a_folder':
        image, args = images, ['--boxes', '10,10,50,50']
    elif case == 'contrast_without_class':
        args = ['--contrast']
    elif case == 'unwritable_out_dir':
        (tmp_path / 'file').write_text('x')
        out_dir = tmp_path / 'file' / 'sub'
    elif case == 'missing_device':  # a GPU index no host has, or CUDA on a CPU-only host
        args = ['--device', 'cuda:99' if torch.cuda.is_available() else 'cuda']
    elif case == 'mmdet_fails':
        cfg, args = 'ssd300_coco', ['--cfg-options', 'model.test_cfg.score_thr=0']
    out = run(cfg, ckpt, image, '--out-dir', out_dir, *args, expect=2)
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith('error: ') and message in lines[-1], out.stderr
    assert len([row for row in lines if row.startswith('error')]) == 1


@pytest.mark.parametrize('method, expected', [
    ('gradcam++', ['not box-specific', 'what in the image made this box']),
    ('ssgradcam++', ['what in the image made this box']),
    ('occlusion', [])])
def test_notes_name_the_box_specific_method_and_the_one_for_deciding_pixels(tmp_path, method,
                                                                            expected):
    repo = Path(__file__).parents[1]
    options = ['--method-options', 'window=64'] if method == 'occlusion' else []
    out = run(repo / 'demo' / 'rtmdet_shapes.py', repo / 'demo' / 'rtmdet_shapes.pth',
              repo / 'demo' / 'images' / 'shapes_1.jpg', '--method', method, *options,
              '--out-dir', tmp_path)
    notes = [line for line in out.stderr.splitlines() if line.startswith('note:')]
    assert len(notes) == len(expected), notes
    for note, words in zip(notes, expected):
        assert words in note
    if expected[:1] == ['not box-specific']:
        assert f'--method {DEFAULT_METHOD}' in notes[0]
    if expected:
        assert f'--method {PIXEL_EVIDENCE_METHOD}' in notes[-1]


def test_named_boxes_are_explained_and_reported_with_their_match(tmp_path):
    repo = Path(__file__).parents[1]
    run(repo / 'demo' / 'rtmdet_shapes.py', repo / 'demo' / 'rtmdet_shapes.pth',
        repo / 'demo' / 'images' / 'shapes_1.jpg', '--score-thr', '0.999', '--method', 'odam',
        '--boxes', '190,40,276,128:triangle', '110,115,180,185', '--out-dir', tmp_path)
    rows = json.loads((tmp_path / 'shapes_1.json').read_text())['detections']
    assert [r['named_bbox'] for r in rows] == [[190, 40, 276, 128], [110, 115, 180, 185]]
    assert rows[0]['class_name'] == 'triangle'
    assert all(0 < r['iou_with_named'] <= 1 and r['peak_in_box'] for r in rows)


def test_relevancy_on_the_dino_demo_writes_maps_and_json_without_layers(tmp_path):
    repo = Path(__file__).parents[1]
    run(repo / 'demo' / 'dino_shapes.py', repo / 'demo' / 'dino_shapes.pth',
        repo / 'demo' / 'images' / 'shapes_1.jpg', '--method', 'relevancy', '--score-thr', 0.2,
        '--per-box', '--out-dir', tmp_path)
    summary = json.loads((tmp_path / 'shapes_1.json').read_text())
    assert summary['method'] == 'relevancy' and summary['target_layers'] == []
    rows = summary['detections']
    assert len(rows) >= 3 and len(list(tmp_path.glob('shapes_1_box*.jpg'))) == len(rows)
    assert np.mean([r['peak_in_box'] for r in rows]) >= 0.75


def test_boxes_file_in_coco_format_explains_each_images_objects(tmp_path):
    from mmdet_cam.shapes import write_split
    write_split(tmp_path, 'val', 3, seed=7)
    repo = Path(__file__).parents[1]
    annotations = json.loads((tmp_path / 'val.json').read_text())
    run(repo / 'demo' / 'rtmdet_shapes.py', repo / 'demo' / 'rtmdet_shapes.pth', tmp_path / 'val',
        '--score-thr', '0.999', '--boxes-file', tmp_path / 'val.json',
        '--out-dir', tmp_path / 'out')
    for image in annotations['images']:
        expected = [a['bbox'] for a in annotations['annotations'] if a['image_id'] == image['id']]
        rows = json.loads((tmp_path / 'out' / f"{Path(image['file_name']).stem}.json").read_text())
        named = [r['named_bbox'] for r in rows['detections']]
        np.testing.assert_allclose(named, [[x, y, x + w, y + h] for x, y, w, h in expected],
                                   atol=0.01)
    other = tmp_path / 'other.json'
    other.write_text(json.dumps({'elsewhere.jpg': [{'bbox': [1, 1, 9, 9]}]}))
    out = run(repo / 'demo' / 'rtmdet_shapes.py', repo / 'demo' / 'rtmdet_shapes.pth',
              tmp_path / 'val', '--boxes-file', other, '--out-dir', tmp_path / 'out', expect=2)
    assert out.stderr.strip().splitlines()[-1].startswith('error: ') and 'names none' in out.stderr
