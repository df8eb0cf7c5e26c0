"""Evidence known by construction: scenes whose class is set by a small cue
(``shapes.make_evidence_image``), and the metrics that score maps against the cue."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.boxes import box_iou, box_mask, tracked_score
from mmdet_cam.engine.candidates import CandidateScorer
from mmdet_cam.metrics import evidence_mass, evidence_pointing, rank_accuracy
from mmdet_cam.shapes import EVIDENCE_CLASSES, make_evidence_image, make_image, write_split

from conftest import REPO


@pytest.fixture(scope='module')
def scenes():
    return [make_image(np.random.default_rng(seed), kind='evidence') for seed in range(60)]


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _border_distance(mask, start, direction):
    """How far from ``start`` along ``direction`` the mask goes on."""
    distance = 0.0
    while True:
        x, y = np.round(start + (distance + 0.5) * direction).astype(int)
        if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x]):
            return distance
        distance += 0.5


def test_every_class_is_present_and_each_object_has_its_cue(scenes):
    labels = [obj['label'] for _, objects in scenes for obj in objects]
    assert set(labels) == set(range(len(EVIDENCE_CLASSES)))
    for _, objects in scenes:
        for obj in objects:
            assert 20 <= obj['evidence'].sum() <= 120  # a small cue


def test_inside_cues_lie_in_the_object_a_third_of_the_way_out_or_more(scenes):
    checked = 0
    for _, objects in scenes:
        for obj in objects:
            if EVIDENCE_CLASSES[obj['label']] == 'tagged':
                continue
            assert obj['mask'][obj['evidence']].all()
            centre, cue = _centroid(obj['mask']), _centroid(obj['evidence'])
            direction = (cue - centre) / np.linalg.norm(cue - centre)
            border = _border_distance(obj['mask'], centre, direction)
            assert np.linalg.norm(cue - centre) >= border / 3, (cue, centre, border)
            checked += 1
    assert checked >= 40


def test_the_tagged_class_has_its_cue_outside_its_box_and_near_it(scenes):
    checked = 0
    for image, objects in scenes:
        for obj in objects:
            if EVIDENCE_CLASSES[obj['label']] != 'tagged':
                continue
            inside = box_mask(image.shape[:2], obj['bbox'])
            assert not (inside & obj['evidence']).any()
            near = box_mask(image.shape[:2], np.add(obj['bbox'], [-20, -20, 20, 20]))
            assert obj['evidence'][~near].sum() == 0
            checked += 1
    assert checked >= 20


def test_objects_do_not_overlap_and_size_says_nothing_of_the_class(scenes):
    sizes = {label: [] for label in range(len(EVIDENCE_CLASSES))}
    for _, objects in scenes:
        for a in range(len(objects)):
            for b in range(a + 1, len(objects)):
                assert not (objects[a]['mask'] & objects[b]['mask']).any()
        for obj in objects:
            x1, y1, x2, y2 = obj['bbox']
            sizes[obj['label']].append(np.sqrt((x2 - x1) * (y2 - y1)))
    means = [np.mean(values) for values in sizes.values()]
    assert max(means) / min(means) < 1.2, means


def test_distractors_are_drawn_cues_without_objects_and_objects_without_cues(scenes):
    """Some scenes hold more cue-coloured cue shapes or objects than annotated objects: the
    annotated objects never cover every saturated black or white 9-pixel mark of the image."""
    marks_outside = 0
    for image, objects in scenes:
        annotated = np.zeros(image.shape[:2], bool)
        for obj in objects:
            annotated |= obj['mask'] | obj['evidence']
        extreme = (image.max(axis=2) < 8) | (image.min(axis=2) > 247)
        marks_outside += int((extreme & ~annotated).sum() > 15)
    assert marks_outside >= 10


def test_the_coco_files_carry_each_cue(tmp_path):
    path = write_split(tmp_path, 'val', 3, seed=5, kind='evidence')
    content = json.loads(path.read_text())
    assert [c['name'] for c in content['categories']] == list(EVIDENCE_CLASSES)
    rng = np.random.default_rng(5)  # write_split draws each image's size, then the image
    height, width = int(rng.integers(200, 321)), int(rng.integers(200, 321))
    _, objects = make_image(rng, height, width, kind='evidence')
    first = [a for a in content['annotations'] if a['image_id'] == 0]
    assert len(first) == len(objects)
    for annotation, obj in zip(first, objects):
        assert annotation['category_id'] == obj['label'] + 1
        decoded = mask_utils.decode(dict(annotation['evidence'],
                                         counts=annotation['evidence']['counts'].encode()))
        assert np.array_equal(decoded > 0, obj['evidence'])


def test_a_scene_without_a_cue_differs_only_on_that_cue():
    image, objects = make_evidence_image(np.random.default_rng(2))
    for k, obj in enumerate(objects):
        without, again = make_evidence_image(np.random.default_rng(2), omit_cues=[k])
        changed = (without != image).any(axis=2)
        assert changed.any() and not changed[~obj['evidence']].any()
        assert all(np.array_equal(a['evidence'], b['evidence']) for a, b in zip(objects, again))


def test_evidence_metrics_on_hand_made_maps():
    cue = np.zeros((40, 50), bool)
    cue[10:13, 20:26] = True  # 18 pixels
    on_cue = cue.astype(np.float32)
    assert evidence_pointing(on_cue, cue)
    assert evidence_mass(on_cue, cue) == 1.0 and rank_accuracy(on_cue, cue) == 1.0
    beside = np.zeros_like(on_cue)
    beside[11, 28] = 1.0  # 2 pixels right of the cue: within the tolerance
    assert evidence_pointing(beside, cue) and not evidence_pointing(beside, cue, tolerance=1)
    far = np.zeros_like(on_cue)
    far[30, 5] = 1.0
    assert not evidence_pointing(far, cue)
    assert evidence_mass(far, cue) == 0.0 and rank_accuracy(far, cue) == 0.0
    uniform = np.ones_like(on_cue)
    assert evidence_mass(uniform, cue) == pytest.approx(18 / 2000)
    half = np.zeros_like(on_cue)
    half[10:13, 20:23] = 1.0  # half the cue's pixels are the map's top ones
    half[0, :9] = 0.9
    assert rank_accuracy(half, cue) == pytest.approx(0.5)
    assert evidence_mass(-on_cue, cue) == 0.0  # negative evidence is no mass


@pytest.mark.parametrize('demo', ['rtmdet', pytest.param('dino', marks=pytest.mark.slow)])
def test_the_evidence_demo_uses_the_cues_and_fails_without_them(evidence_demo, demo):
    """The intervention that makes the cue ground truth for this model: on fresh scenes, each
    evidence demo (CNN and DETR-style) finds the objects of their class, and the same scene
    without an object's cue drops the detection's tracked score to at most half for at least
    80% of them."""
    model = evidence_demo if demo == 'rtmdet' else build_detector(
        str(REPO / 'demo' / 'dino_evidence.py'), str(REPO / 'demo' / 'dino_evidence.pth'))
    cam = DetCAM(model)
    scorer = CandidateScorer(model, cam.pipeline)
    ratios, objects_seen, found = [], 0, 0
    for seed in range(200000, 200008):
        image, objects = make_evidence_image(np.random.default_rng(seed))
        detections, original = cam.detect(image), scorer([image])[0]
        objects_seen += len(objects)
        for k, obj in enumerate(objects):
            ious = box_iou(detections.bboxes.numpy(), obj['bbox'])
            ious[detections.labels.numpy() != obj['label']] = 0
            if not len(ious) or ious.max() < 0.5:
                continue
            found += 1
            box = detections.bboxes[int(np.argmax(ious))].tolist()
            without = scorer([make_evidence_image(np.random.default_rng(seed),
                                                  omit_cues=[k])[0]])[0]
            before, after = (tracked_score(c.bboxes, c.scores, c.labels, box, obj['label'])
                             for c in (original, without))
            ratios.append(after / before)
    assert found >= 0.8 * objects_seen, (found, objects_seen)
    assert np.mean(np.asarray(ratios) <= 0.5) >= 0.8, ratios
