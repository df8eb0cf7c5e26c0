"""Saturated scores still have maps: the log-odds' gradient is the logit's, even at 1.0."""
import warnings

import numpy as np
import pytest
import torch

from mmdet_cam import DetCAM, SaturatedScoreWarning, build_detector
from mmdet_cam.engine.saturation import _ActivationsWithFloor, log_odds

from conftest import DEMO_IMAGE, REPO


@pytest.mark.parametrize('logit', [0.0, 5.0, 30.0])
def test_log_odds_has_the_logits_gradient_even_at_saturation(logit):
    x = torch.tensor([logit], requires_grad=True)
    with _ActivationsWithFloor():
        score = torch.sigmoid(x)
    assert float(score) == float(torch.sigmoid(torch.tensor(logit)))  # the same value
    log_odds(score).sum().backward()
    assert float(x.grad) == pytest.approx(1.0, rel=1e-5)
    plain = torch.tensor([logit], requires_grad=True)
    log_odds(torch.sigmoid(plain)).sum().backward()  # without the floor: lost at saturation
    assert (float(plain.grad) == 0) == (logit == 30.0)


def test_a_saturated_softmax_is_explained_by_its_pre_softmax_value():
    z = torch.tensor([[40.0, 0.0, 1.0]], requires_grad=True)
    with _ActivationsWithFloor():
        probabilities = z.softmax(-1)
    assert float(probabilities[0, 0]) == 1.0
    log_odds(probabilities[:, 0]).sum().backward()
    assert float(z.grad[0, 0]) == pytest.approx(1.0, rel=1e-5)
    assert z.grad[0, 1:].abs().max() < 1e-4  # the others' share of a probability of 1e-17


@pytest.fixture(scope='module')
def saturated_demo():
    """The RTMDet demo with its class logits shifted by +16: every detection's score is
    exactly 1.0 in float32, and a box's logit (hence its logit's gradient) is the same as
    before the shift."""
    model = build_detector(str(REPO / 'demo' / 'rtmdet_shapes.py'),
                           str(REPO / 'demo' / 'rtmdet_shapes.pth'))
    plain = DetCAM(model, topk=4)(DEMO_IMAGE)
    with torch.no_grad():
        for conv in model.bbox_head.rtm_cls:
            conv.bias += 16
    return model, plain


@pytest.mark.parametrize('target', ['score', 'logit'])
def test_saturated_detections_get_the_maps_of_their_logits(saturated_demo, target):
    """Each of the same candidates (named by its box, IoU 1), with a score of exactly 1.0,
    gets the map it had unsaturated (ODAM's maps do not change with a box's gradient scale,
    and the shift leaves each logit's gradient as it was); the score target says why."""
    model, plain = saturated_demo
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = DetCAM(model, target=target)(DEMO_IMAGE, boxes=plain.detections.bboxes,
                                              labels=plain.detections.labels.tolist())
    assert (result.detections.scores == 1.0).all() and (result.detections.ious > 0.999).all()
    notes = [w.message for w in caught if isinstance(w.message, SaturatedScoreWarning)]
    if target == 'score':
        assert len(notes) == 1 and notes[0].detections == [0, 1, 2, 3]
    else:
        assert not notes
    assert (result.cams.max(axis=(1, 2)) > 0.99).all()
    for saturated, unsaturated in zip(result.cams, plain.cams):
        assert np.corrcoef(saturated.ravel(), unsaturated.ravel())[0, 1] > 0.999
