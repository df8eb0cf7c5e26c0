"""The shipped demo detector: small, loads weights-only, finds the shapes of images it never
saw, and its per-detection maps point at the detected objects."""
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.structures.bbox import bbox_overlaps

from mmdet_cam import DetCAM
from mmdet_cam.metrics import pointing_hit
from mmdet_cam.shapes import make_image

REPO = Path(__file__).parents[1]
CONFIG = str(REPO / 'demo' / 'rtmdet_shapes.py')
CHECKPOINT = str(REPO / 'demo' / 'rtmdet_shapes.pth')


@pytest.fixture(scope='module')
def fresh_images():
    """Images from seeds the training and val splits never used."""
    return [make_image(np.random.default_rng(seed), 240, 320) for seed in range(9000, 9012)]


@pytest.fixture(scope='module')
def demo_cam():
    return DetCAM(CONFIG, CHECKPOINT, method='gradcam', score_thr=0.3)


def test_checkpoint_is_small_and_loads_weights_only():
    assert Path(CHECKPOINT).stat().st_size < 20 * 2**20
    checkpoint = torch.load(CHECKPOINT, map_location='cpu', weights_only=True)
    assert list(checkpoint['meta']['dataset_meta']['classes']) == ['square', 'circle', 'triangle']


def test_detects_the_shapes_of_fresh_images(demo_cam, fresh_images):
    found = total = 0
    for image, objects in fresh_images:
        result = demo_cam(image)
        total += len(objects)
        if not objects or not len(result):
            continue
        gt = torch.tensor([o['bbox'] for o in objects])
        ious = bbox_overlaps(gt, result.detections.bboxes)
        same = torch.tensor([o['label'] for o in objects])[:, None] == result.detections.labels
        found += int(((ious >= 0.5) & same).any(dim=1).sum())
    assert found / total >= 0.9, f'recall {found}/{total}'


@pytest.mark.parametrize('method', ['hirescam', 'layercam', 'gradcamelementwise'])
def test_maps_peak_inside_their_detection(fresh_images, method):
    # Element-wise methods keep where each box's gradient is. (GradCAM, GradCAM++ and XGradCAM
    # pool it into channel weights, so their maps light up every object of the class; see
    # benchmarks/localization.py.)
    cam = DetCAM(CONFIG, CHECKPOINT, method=method, score_thr=0.3)
    hits = []
    for image, _ in fresh_images:
        result = cam(image)
        hits += [pointing_hit(result.cams[k], result.detections.bboxes[k].tolist())
                 for k in range(len(result))]
    assert len(hits) >= 20 and np.mean(hits) >= 0.9, f'{np.mean(hits):.2f} of {len(hits)}'


def test_neighbouring_objects_get_different_maps(demo_cam, fresh_images):
    for image, _ in fresh_images:
        result = demo_cam(image)
        if len(result) >= 2:
            peaks = [np.unravel_index(c.argmax(), c.shape) for c in result.cams]
            assert len(set(peaks)) > 1
            return
    pytest.fail('no image with two detections')
