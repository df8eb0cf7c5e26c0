"""The evidence atlas: each detection's map in its box's frame, averaged per class; the mass
inside, just around and farther from the boxes; from the CLI (``--atlas``), the API's sink and
on the report's index."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmdet_cam import DetCAM
from mmdet_cam.metrics.atlas import ClassAtlas, box_frame, frame_box, mass_shares
from mmdet_cam.outputs.atlas import AtlasSink
from mmdet_cam.shapes import EVIDENCE_CLASSES, make_evidence_image, write_split

REPO = Path(__file__).parents[1]
TOOL = str(REPO / 'tools' / 'demo_gradcam.py')


def blob(shape, centre, sigma=3.0) -> np.ndarray:
    ys, xs = np.mgrid[:shape[0], :shape[1]] + 0.5
    return np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma ** 2))


def test_the_frame_puts_the_box_in_its_middle_third_whatever_its_size():
    shape = (200, 300)
    for box in ([100, 60, 140, 100], [100, 70, 160, 100]):  # a square and a wide box
        x1, y1, x2, y2 = box
        width = x2 - x1
        # one blob at the box's centre, one a box width to the right of it
        cam = blob(shape, ((x1 + x2) / 2, (y1 + y2) / 2)) + blob(
            shape, ((x1 + x2) / 2 + width, (y1 + y2) / 2))
        frame, valid = box_frame(cam, box, size=96, margin=1.0)
        assert frame.shape == valid.shape == (96, 96) and valid.all()
        assert frame_box(96, 1.0) == (32, 32, 64, 64)
        row = frame[48]
        assert abs(int(np.argmax(row[:64])) - 48) <= 1  # the box's centre: the frame's
        assert abs(int(np.argmax(row[64:])) + 64 - 80) <= 1  # a box size right: 5/6 across


def test_frame_pixels_outside_the_image_are_invalid_and_do_not_dilute_the_mean():
    shape = (100, 100)
    inner, corner = [40, 40, 60, 60], [0, 0, 20, 20]  # the corner box's frame leaves the image
    cam_inner = np.ones(shape, np.float32)
    cam_corner = np.ones(shape, np.float32)
    _, valid = box_frame(cam_corner, corner)
    assert not valid[:30, :30].any() and valid[40:, 40:].all()  # up-left of the image: unseen
    atlas = ClassAtlas(size=96)
    atlas.add(cam_inner, inner)
    atlas.add(cam_corner, corner)
    # a map of ones everywhere in the image: the mean is one wherever a detection saw the pixel
    assert np.allclose(atlas.mean_map(), 1.0, atol=1e-5)
    assert atlas.detections == 2


def test_mass_shares_split_the_map_inside_around_and_farther():
    shape = (200, 200)
    box = [80, 80, 120, 120]  # the ring: 40 px around it; farther: the rest
    inside, ring, far = blob(shape, (100, 100), 2), blob(shape, (70, 100), 2), blob(
        shape, (10, 10), 2)
    shares = mass_shares(inside + ring + 2 * far, box)
    assert shares['inside'] == pytest.approx(0.25, abs=0.01)
    assert shares['ring'] == pytest.approx(0.25, abs=0.01)
    assert shares['farther'] == pytest.approx(0.5, abs=0.01)
    assert shares['outside'] == pytest.approx(shares['ring'] + shares['farther'])
    assert mass_shares(np.zeros(shape), box) is None  # a flat map has no shares


def test_the_sink_lists_every_class_and_says_when_nothing_was_detected(tmp_path):
    meta = dict(classes=EVIDENCE_CLASSES)
    sink = AtlasSink(tmp_path, meta, dict(method='odam'))
    message = sink.close()
    assert message.startswith('atlas: no detection in 0 image(s)')
    atlas = json.loads((tmp_path / 'atlas.json').read_text())
    assert atlas['method'] == 'odam' and atlas['detections'] == 0
    assert set(atlas['classes']) == set(EVIDENCE_CLASSES)
    assert all(c['detections'] == 0 and c['picture'] is None and c['inside'] is None
               for c in atlas['classes'].values())
    assert not list(tmp_path.glob('atlas_*.jpg'))


@pytest.fixture(scope='module')
def evidence_scenes(tmp_path_factory):
    """Fresh evidence scenes (not the demo's val split: another seed)."""
    root = tmp_path_factory.mktemp('evidence')
    write_split(root, 'val', 6, seed=9001, kind='evidence')
    return root / 'val'


@pytest.mark.slow
def test_cli_atlas_of_a_folder_averages_every_detection_per_class(evidence_scenes, tmp_path):
    out = tmp_path / 'cam'
    run = subprocess.run([sys.executable, TOOL, str(REPO / 'demo' / 'rtmdet_evidence.py'),
                          str(REPO / 'demo' / 'rtmdet_evidence.pth'), str(evidence_scenes),
                          '--out-dir', str(out), '--atlas'], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    atlas = json.loads((out / 'atlas.json').read_text())
    per_image = [json.loads(p.read_text()) for p in sorted(out.glob('0*.json'))]
    counts = {name: 0 for name in EVIDENCE_CLASSES}
    for summary in per_image:
        for row in summary['detections']:
            counts[row['class_name']] += 1
    assert {n: c['detections'] for n, c in atlas['classes'].items()} == counts
    assert atlas['images'] == 6 and atlas['detections'] == sum(counts.values()) > 0
    assert atlas['method'] == 'odam' and atlas['target_layers'] == ['neck']
    assert f'atlas: {atlas["detections"]} detections' in run.stdout
    for name, entry in atlas['classes'].items():
        if entry['detections']:
            picture = cv2.imread(str(out / entry['picture']))
            assert picture is not None and picture.shape[1] == 288 and picture.std() > 10
            assert entry['inside'] + entry['outside'] == pytest.approx(1, abs=1e-3)
            assert entry['ring'] + entry['farther'] == pytest.approx(entry['outside'], abs=1e-3)
    # the default's neck-level maps stay on the object, whatever decided the class
    assert all(c['inside'] > 0.6 for c in atlas['classes'].values() if c['detections'])


@pytest.mark.slow
def test_occlusions_atlas_puts_the_tagged_class_outside_its_boxes(evidence_demo, tmp_path):
    """The question the atlas answers: the tagged class is decided by a tag beside the object,
    the others by a cue inside it; occlusion (the method for "what in the image") shows it."""
    cam = DetCAM(evidence_demo, method=dict(type='occlusion', progress=False))
    sink = AtlasSink(tmp_path, dict(classes=EVIDENCE_CLASSES), {})
    rng = np.random.default_rng(20261205)
    for k in range(6):
        image, _ = make_evidence_image(rng)
        sink.add(cam(image), f'scene{k}')
    summary = {EVIDENCE_CLASSES[label]: atlas.summary() for label, atlas in sink.classes.items()}
    assert summary['tagged']['detections'] >= 2, summary
    inner = [summary[name]['outside'] for name in ('cross', 'ring') if name in summary]
    # 12 other scenes (docs/benchmarks.md): 0.52 outside for tagged, 0.26 and 0.13 for the others
    assert inner and summary['tagged']['outside'] >= 0.35, summary
    assert summary['tagged']['outside'] > max(inner) + 0.1, summary


@pytest.mark.slow
def test_cli_atlas_of_images_without_detections_says_so_and_exits_0(tmp_path):
    folder = tmp_path / 'blank'
    folder.mkdir()
    cv2.imwrite(str(folder / 'grey.jpg'), np.full((120, 160, 3), 128, np.uint8))
    run = subprocess.run([sys.executable, TOOL, str(REPO / 'demo' / 'rtmdet_shapes.py'),
                          str(REPO / 'demo' / 'rtmdet_shapes.pth'), str(folder), '--out-dir',
                          str(tmp_path / 'cam'), '--atlas'], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith('atlas:')]
    assert len(lines) == 1 and lines[0].startswith('atlas: no detection in 1 image(s)')
    atlas = json.loads((tmp_path / 'cam' / 'atlas.json').read_text())
    assert atlas['detections'] == 0 and set(atlas['classes']) == {'square', 'circle', 'triangle'}
