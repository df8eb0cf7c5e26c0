"""Localisation figures on hand-made maps, and the synthetic dataset's annotations."""
import json

import numpy as np

from mmdet_cam.metrics import box_area_share, box_mask, energy_in_box, peak_location, pointing_hit
from mmdet_cam.shapes import CLASSES, make_image, write_split
from mmdet_cam.visualization import renormalize_in_boxes


def test_pointing_and_energy_on_a_known_map():
    cam = np.zeros((100, 200), np.float32)
    cam[20:40, 50:90] = 1.0   # all mass in x 50..89, y 20..39
    cam[30, 60] = 2.0         # peak
    assert peak_location(cam) == (60, 30)
    assert pointing_hit(cam, [50, 20, 90, 40]) and not pointing_hit(cam, [0, 0, 50, 100])
    assert energy_in_box(cam, [50, 20, 90, 40]) == 1.0
    assert abs(energy_in_box(cam, [50, 20, 70, 40]) - 401 / 801) < 1e-6
    assert energy_in_box(np.zeros((4, 4)), [0, 0, 4, 4]) == 0.0
    assert box_area_share((100, 200), [0, 0, 100, 50]) == 0.25


def test_box_mask_counts_pixels_whose_centre_is_inside():
    mask = box_mask((10, 10), [2.4, 1.0, 5.6, 3.0])
    assert mask.sum() == 4 * 2 and mask[1, 2] and mask[2, 5] and not mask[1, 6]


def test_renormalize_in_boxes_is_zero_outside_and_full_range_inside():
    rng = np.random.default_rng(0)
    cams = rng.random((2, 50, 60)).astype(np.float32)
    boxes = np.array([[10, 5, 30, 25], [0, 0, 60, 50]], np.float32)
    out = renormalize_in_boxes(cams, boxes)
    inside = box_mask((50, 60), boxes[0])
    assert (out[0][~inside] == 0).all()
    assert out[0][inside].min() == 0 and abs(out[0][inside].max() - 1) < 1e-6
    np.testing.assert_allclose(out[1], (cams[1] - cams[1].min()) / np.ptp(cams[1]), atol=1e-6)


def test_shapes_are_deterministic_and_their_boxes_fit_the_painted_pixels():
    a, objects = make_image(np.random.default_rng(7))
    b, _ = make_image(np.random.default_rng(7))
    assert (a == b).all() and 1 <= len(objects) <= 6
    for obj in objects:
        ys, xs = np.nonzero(obj['mask'])
        assert obj['bbox'] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert obj['label'] in range(len(CLASSES))


def test_shape_polygons_rasterise_back_to_their_masks():
    from pycocotools import mask as mask_utils
    rng = np.random.default_rng(11)
    polygons = 0
    for _ in range(20):
        _, objects = make_image(rng)
        for obj in objects:
            if obj['has_holes']:
                continue
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in obj['segmentation'])
            rle = mask_utils.merge(mask_utils.frPyObjects(obj['segmentation'], 240, 320))
            assert (mask_utils.decode(rle).astype(bool) == obj['mask']).all()
            polygons += 1
    assert polygons >= 40


def test_written_split_is_valid_coco(tmp_path):
    from pycocotools.coco import COCO
    path = write_split(tmp_path, 'val', 6, seed=3)
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 6 and len(coco.getCatIds()) == len(CLASSES)
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert isinstance(ann['segmentation'], list) or 'counts' in ann['segmentation']
        mask = coco.annToMask(ann)
        x, y, w, h = ann['bbox']
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
    image = json.loads(path.read_text())['images'][0]
    assert (tmp_path / image['file_name']).is_file()
