"""One request per call: which boxes (the reported detections, named boxes, another class) and
the value explained (score, logit, a box coordinate, the mask). Every box choice explains the
target that was asked, and a combination that cannot be honoured is refused with one line."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmdet_cam import DetCAM
from mmdet_cam.errors import BadInputError, DetCAMError
from mmdet_cam.model.detector import build_detector, preprocess, read_image

from conftest import DEMO_IMAGE, REPO

INSTANCE_DEMO = (str(REPO / 'demo' / 'rtmdet-ins_shapes.py'),
                 str(REPO / 'demo' / 'rtmdet-ins_shapes.pth'))
BBOX_X1, BBOX_Y2 = dict(type='bbox', coord='x1'), dict(type='bbox', coord='y2')


@pytest.fixture(scope='module')
def image():
    return read_image(DEMO_IMAGE)


@pytest.fixture(scope='module')
def instance_demo():
    return build_detector(*INSTANCE_DEMO)


def _own_box(result, k=0):
    return result.detections.bboxes[k:k + 1].numpy(), [int(result.detections.labels[k])]


@pytest.mark.parametrize('method, target', [('odam', BBOX_X1), ('odam', BBOX_Y2),
                                            ('gradcam++', 'logit'), ('odam', 'score')])
def test_a_named_box_explains_the_asked_target_as_its_detection_does(demo_model, image,
                                                                     method, target):
    """A detection's own box, named, is matched by the same raw candidate and explained for
    the same target: the same map as the detection's (to float tolerance)."""
    cam = DetCAM(demo_model, method=method, target=target)
    reported = cam(image)
    for k in range(min(3, len(reported))):
        boxes, labels = _own_box(reported, k)
        named = cam(image, boxes=boxes, labels=labels)
        assert float(named.detections.ious[0]) > 0.999
        np.testing.assert_allclose(named.cams[0], reported.cams[k], atol=1e-4)


@pytest.mark.parametrize('method, target', [('odam', BBOX_X1), ('gradcam++', 'logit')])
def test_a_named_box_no_longer_explains_the_score_whatever_was_asked(demo_model, image,
                                                                     method, target):
    """The bug this request fixed: ``--boxes`` with ``--target bbox`` gave the score's map."""
    boxes, labels = _own_box(DetCAM(demo_model)(image))
    asked = DetCAM(demo_model, method=method, target=target)(image, boxes=boxes, labels=labels)
    score = DetCAM(demo_model, method=method)(image, boxes=boxes, labels=labels)
    assert np.abs(asked.cams[0] - score.cams[0]).max() > 0.1


@pytest.mark.parametrize('target', [BBOX_X1, 'logit', 'score'])
def test_another_class_explains_the_asked_target(demo_model, image, target):
    """``explain_class`` reads the target of the same candidate: for the detection's own class,
    the detection's own map; for another class, a map of that class's value."""
    cam = DetCAM(demo_model, method='gradcam++', target=target)
    reported = cam(image)
    label = int(reported.detections.labels[0])
    same = cam(image, explain_class=label)
    np.testing.assert_allclose(same.cams[0], reported.cams[0], atol=1e-4)
    other = (label + 1) % len(cam.class_names)
    result = cam(image, explain_class=other)
    assert result.detections.labels.tolist() == [other] * len(reported)
    if target == BBOX_X1:  # a class-agnostic box: the same coordinate, the same map
        np.testing.assert_allclose(result.cams[0], reported.cams[0], atol=1e-4)


def test_a_contrast_of_logits_is_the_difference_of_logits(demo_model, image):
    """With the logit target, a contrast explains logit(reported) - logit(other): its map is
    not the contrast of scores' (GradCAM++ is not linear in the gradient)."""
    logit = DetCAM(demo_model, method='gradcam++', target='logit')
    score = DetCAM(demo_model, method='gradcam++')
    label = int(score(image).detections.labels[0])
    other = (label + 1) % len(score.class_names)
    a = logit(image, explain_class=other, contrast=True)
    b = score(image, explain_class=other, contrast=True)
    assert a.detections.versus_labels.tolist() == b.detections.versus_labels.tolist()
    assert np.abs(a.cams[0] - b.cams[0]).max() > 0.05


def test_relevancy_explains_the_asked_target_of_a_named_box(models):
    """The attention kind reads the same request: a DETR detection's own box, named, gives
    its detection's map for the bbox target, and that map is not the score's."""
    model = models('detr/detr_r50_8xb2-150e_coco.py')
    scene = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    cam = DetCAM(model, method='relevancy', target=BBOX_X1, score_thr=0, topk=2)
    reported = cam(scene)
    boxes, labels = _own_box(reported)
    named = cam(scene, boxes=boxes, labels=labels)
    np.testing.assert_allclose(named.cams[0], reported.cams[0], atol=1e-4)
    score = DetCAM(model, method='relevancy', score_thr=0, topk=2)(scene, boxes=boxes,
                                                                     labels=labels)
    assert np.abs(score.cams[0] - named.cams[0]).max() > 0.05


KINDS = {'gradient': 'odam', 'activation': 'eigencam', 'perturbation': 'scorecam',
         'black-box': dict(type='drise', num_masks=8), 'attention': 'relevancy'}
TARGETS = {'score': 'score', 'logit': 'logit', 'bbox': BBOX_X1, 'mask': 'mask'}
CHOICES = ('detections', 'named boxes', 'another class', 'contrast')
# what cannot be honoured, and the words of its one-line refusal
REFUSED = {('perturbation', 'logit'): 'not the logit target',
           ('perturbation', 'bbox'): 'not the bbox target',
           ('black-box', 'logit'): 'not the logit target',
           ('black-box', 'bbox'): 'not the bbox target',
           ('perturbation', 'contrast'): 'contrast of two classes',
           ('black-box', 'contrast'): 'contrast of two classes',
           ('black-box', 'named boxes'): 'reported detections only',
           ('black-box', 'another class'): 'reported detections only',
           ('mask', 'named boxes'): 'not with named boxes or another class',
           ('mask', 'another class'): 'not with named boxes or another class',
           ('mask', 'contrast'): 'not with named boxes or another class',
           ('bbox', 'contrast'): 'needs the score or logit target'}


def _refusal(kind, target, choice):
    for key in ((target, choice), (kind, target), (kind, choice)):
        if key in REFUSED:
            return REFUSED[key]
    return None


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('target', TARGETS)
def test_every_combination_explains_its_target_or_is_refused_in_one_line(instance_demo, image,
                                                                         kind, target):
    """(detections, named boxes, another class, contrast) x (score, logit, bbox, mask) x each
    kind of method: the request carries the asked target, or it is refused with one line
    naming why (never replaced by another target)."""
    refused_target = _refusal(kind, target, 'detections')
    if refused_target is not None:  # refused for every call, so when the explainer is built
        with pytest.raises(BadInputError, match=refused_target) as refused:
            DetCAM(instance_demo, method=KINDS[kind], target=TARGETS[target])
        assert '\n' not in str(refused.value)
        return
    cam = DetCAM(instance_demo, method=KINDS[kind], target=TARGETS[target])
    reported = cam.detect(image)
    boxes, labels = reported.bboxes[:1].numpy(), [int(reported.labels[0])]
    other = (labels[0] + 1) % len(cam.class_names)
    calls = {'detections': {}, 'named boxes': dict(boxes=boxes, labels=labels),
             'another class': dict(explain_class=other, reported=reported),
             'contrast': dict(explain_class=other, contrast=True, reported=reported)}
    for choice in CHOICES:
        expected = _refusal(kind, target, choice)
        if expected is None:
            request = cam.request(image=image, **calls[choice])
            assert request.target_name == target and request.target is cam.target
        else:
            with pytest.raises(BadInputError, match=expected) as refused:
                cam.request(image=image, **calls[choice])
            assert '\n' not in str(refused.value)


def test_a_refused_target_is_refused_when_the_explainer_is_built(demo_model):
    with pytest.raises(BadInputError, match=r'^drise: .*not the bbox target'):
        DetCAM(demo_model, method='drise', target='bbox')
    with pytest.raises(DetCAMError, match='not the logit target'):
        DetCAM(demo_model, method='scorecam', target='logit')


@pytest.mark.slow
def test_cli_named_box_with_bbox_target_writes_the_bbox_map(tmp_path):
    """The issue's own commands: the bbox target's maps differ from the score's."""
    base = [sys.executable, str(REPO / 'tools' / 'demo_gradcam.py'),
            str(REPO / 'demo' / 'rtmdet_shapes.py'), str(REPO / 'demo' / 'rtmdet_shapes.pth'),
            DEMO_IMAGE, '--boxes', '100,60,160,120', '--save-npy']
    for name, extra in (('a', ['--target', 'bbox', '--bbox-coord', 'x1']), ('b', [])):
        subprocess.run(base + extra + ['--out-dir', str(tmp_path / name)], check=True,
                       capture_output=True)
    a, b = (np.load(tmp_path / name / 'shapes_1_cams.npy') for name in 'ab')
    assert np.abs(a - b).max() > 0.1
    refused = subprocess.run(base + ['--method', 'drise', '--target', 'bbox', '--out-dir',
                                     str(tmp_path / 'c')], capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith('error: drise: ')


def test_another_class_of_a_head_that_keeps_only_the_top_class_reads_that_classs_score(models,
                                                                                        scene):
    """YOLOX reports only each candidate's top class; ``explain_class`` reads the asked class's
    score of the same candidate from the head's own outputs (objectness x sigmoid of that
    class's logit, recomputed here from the raw head outputs), and explains it."""
    model = models('yolox/yolox_s_8xb8-300e_coco.py')
    cam = DetCAM(model, method='hirescam', score_thr=0, topk=3)
    reported = cam(scene)
    label = int(reported.detections.labels[0])
    other = (label + 1) % len(cam.class_names)
    result = cam(scene, explain_class=other)
    assert result.detections.labels.tolist() == [other] * len(reported)
    np.testing.assert_allclose(result.detections.ious.numpy(), 1, atol=1e-4)  # same candidates

    raw = {}
    handle = model.bbox_head.register_forward_hook(lambda m, a, out: raw.update(out=out))
    inputs, samples = preprocess(model, cam.pipeline, scene)
    with torch.no_grad():
        model.predict(inputs, samples)
    handle.remove()
    cls_scores, bbox_preds, objectness = raw['out']
    priors = model.bbox_head.prior_generator.grid_priors(
        [m.shape[2:] for m in cls_scores], device=cls_scores[0].device, with_stride=True)
    boxes = model.bbox_head._bbox_decode(torch.cat(priors), _flat(bbox_preds, 4)[None])[0]
    boxes = boxes / boxes.new_tensor(samples[0].scale_factor).repeat(2)
    probs = _flat(cls_scores, cls_scores[0].shape[1]).sigmoid() * _flat(objectness, 1).sigmoid()
    for k, box in enumerate(result.detections.bboxes):
        prior = int((boxes - box).abs().sum(1).argmin())
        assert float(result.detections.scores[k]) == pytest.approx(
            float(probs[prior, other]), rel=1e-4)
    assert result.cams[0].max() > 0
    assert np.abs(result.cams[0] - reported.cams[0]).max() > 0.05


def _flat(maps, channels: int):
    """A head's per-level ``[1, C, H, W]`` outputs as ``[priors, C]``, in YOLOX's order."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(-1, channels) for m in maps])
