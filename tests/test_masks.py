"""The mask target: each instance's own mask logits, for every family of mmdet's instance
heads, and masks in the outputs."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import mmcv
import numpy as np
import pytest
import torch

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.boxes import mask_ious, tracked_mask_score
from mmdet_cam.engine.candidates import CandidateScorer
from mmdet_cam.engine.capture import differentiable_inference, frozen_parameters
from mmdet_cam.engine.mask_logits import candidate_mask_logits, instance_mask_logits
from mmdet_cam.errors import BadInputError, UnsupportedModelError
from mmdet_cam.metrics import pointing_hit_mask
from mmdet_cam.model.detector import preprocess
from mmdet_cam.shapes import make_image

from conftest import DEMO_IMAGE, make_scene, small_config

REPO = Path(__file__).parents[1]
INSTANCE_DEMO = (str(REPO / 'demo' / 'rtmdet-ins_shapes.py'),
                 str(REPO / 'demo' / 'rtmdet-ins_shapes.pth'))
MASK_RCNN = 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'  # also built by test_engine (shared)
# one config per family of instance heads (RoI, dynamic kernels, prototypes, queries);
# PointRend (2 minutes an image under autograd) is left to `benchmarks/zoo.py --target mask`
FAMILIES = [
    MASK_RCNN,
    'cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py',  # stage masks averaged and detached
    'ms_rcnn/ms-rcnn_r50-caffe_fpn_1x_coco.py',
    'rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py',
    'condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py',
    'yolact/yolact_r50_1xb8-55e_coco.py',
    'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
]
SLOW = ('cascade', 'ms_rcnn', 'mask2former')


@pytest.fixture(scope='module')
def instance_demo():
    return build_detector(*INSTANCE_DEMO)


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n.startswith(SLOW)
                                  else n for n in FAMILIES])
def test_every_family_gives_each_instance_its_own_mask_map(name, models):
    model = models(name)
    image = make_scene()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        masks = DetCAM(model, target='mask', score_thr=0, topk=3)(image)
        scores = DetCAM(model, score_thr=0, topk=3)(image)
    assert len(masks) == 3 and masks.cams.shape == (3,) + image.shape[:2]
    assert np.isfinite(masks.cams).all() and masks.cams.min() >= 0 and masks.cams.max() <= 1
    # an untrained box can be too small to hold a pixel of YOLACT's cropped prototypes (then
    # its map is zero, with a warning); the others have maps, and they differ
    lit = np.flatnonzero(masks.cams.reshape(3, -1).max(1) > 0)
    assert len(lit) >= 2 and not np.allclose(masks.cams[lit[0]], masks.cams[lit[1]])
    # the same detections; their masks are another value than their scores
    torch.testing.assert_close(masks.detections.bboxes, scores.detections.bboxes)
    assert not np.allclose(masks.cams, scores.cams, atol=1e-3)


def _recorded(model, image):
    """The detections of ``image`` with the mask heads' maps attached."""
    inputs, samples = preprocess(model, DetCAM(model).pipeline, image)
    inputs = inputs.float().requires_grad_()
    with frozen_parameters(model), differentiable_inference(model, masks=True), \
            torch.enable_grad(), instance_mask_logits(model):
        return model.predict(inputs, samples)[0].pred_instances


def _carried_to_image(pred, k, shape):
    """Detection ``k``'s thresholded map, carried onto the image by its box in both spaces."""
    (u1, v1, u2, v2), (x1, y1, x2, y2) = pred.mask_boxes[k].tolist(), pred.bboxes[k].tolist()
    sx, sy = (x2 - x1) / (u2 - u1), (y2 - y1) / (v2 - v1)
    warp = np.float32([[sx, 0, x1 - u1 * sx], [0, sy, y1 - v1 * sy]])
    logits = pred.mask_logits[k].detach().numpy()
    return cv2.warpAffine(logits, warp, shape[::-1], flags=cv2.INTER_LINEAR,
                          borderValue=-1e4) > float(pred.mask_thresholds[k])


@pytest.mark.parametrize('which', ['instance demo', MASK_RCNN])
def test_recorded_maps_are_the_reported_masks_in_their_order(which, instance_demo, models):
    """The map recorded for detection k, thresholded and carried onto the image, is detection
    k's reported mask and no other's (RTMDet-Ins: stride 8 of the input; RoI: 28x28 in the
    box)."""
    if which == 'instance demo':
        model, image = instance_demo, mmcv.imread(DEMO_IMAGE)
    else:
        model, image = models(which), make_scene()
    pred = _recorded(model, image)
    wide = ((pred.mask_boxes[:, 2:] - pred.mask_boxes[:, :2]).min(1).values > 2).nonzero()
    pred = pred[wide.flatten()[pred.scores[wide.flatten()].argsort(descending=True)[:5]]]
    assert len(pred) == 5
    masks = pred.masks.numpy()
    iou = np.array([[(_carried_to_image(pred, i, image.shape[:2]) & masks[j]).sum()
                     / max((_carried_to_image(pred, i, image.shape[:2]) | masks[j]).sum(), 1)
                     for j in range(5)] for i in range(5)])
    # each map matches its own mask best, and its own mask best matches it (an untrained model's
    # small, ragged masks lose some IoU to the resampling)
    own = np.arange(5)
    assert (iou.argmax(1) == own).all() and (iou.argmax(0) == own).all(), iou.round(2)
    assert np.diag(iou).min() >= 0.3 and np.diag(iou).mean() >= 0.6, iou.round(2)


def test_region_box_sums_the_logits_in_the_box(instance_demo):
    mask = DetCAM(instance_demo, target='mask', score_thr=0.3)(DEMO_IMAGE)
    box = DetCAM(instance_demo, target=dict(type='mask', region='box'), score_thr=0.3)(DEMO_IMAGE)
    torch.testing.assert_close(mask.detections.bboxes, box.detections.bboxes)
    assert len(mask) >= 4 and not np.allclose(mask.cams, box.cams, atol=1e-3)


def test_mask_maps_peak_inside_the_ground_truth_mask(instance_demo):
    """On images the instance demo never saw, the default method's mask map of a detection
    that found its object peaks on that object's pixels."""
    cam = DetCAM(instance_demo, target='mask', score_thr=0.3)
    hits = []
    rng = np.random.default_rng(9300)
    for _ in range(25):
        image, objects = make_image(rng, int(rng.integers(200, 321)), int(rng.integers(200, 321)))
        result = cam(image)
        for k in range(len(result)):
            own = _own_object(result, k, objects)
            if own is not None:
                hits.append(pointing_hit_mask(result.cams[k], own['mask']))
    assert len(hits) >= 60 and np.mean(hits) >= 0.9, f'{np.mean(hits):.2f} of {len(hits)}'


def _own_object(result, k, objects):
    """The object of detection ``k``'s class whose mask its mask overlaps most (IoU >= 0.5)."""
    mask = result.detections.masks[k].numpy()
    best, found = 0.5, None
    for obj in objects:
        if obj['label'] == int(result.detections.labels[k]):
            iou = (mask & obj['mask']).sum() / max((mask | obj['mask']).sum(), 1)
            if iou >= best:
                best, found = iou, obj
    return found


def test_score_and_mask_answer_different_questions(instance_demo):
    """Same detections, different values: the maps differ, while both stay on the object."""
    image, objects = make_image(np.random.default_rng(9301), 240, 320)
    score = DetCAM(instance_demo, score_thr=0.3)(image)
    mask = DetCAM(instance_demo, target='mask', score_thr=0.3)(image)
    assert len(mask) >= 1
    correlation = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(score.cams, mask.cams)]
    assert max(correlation) < 0.99, correlation


def test_bad_uses_of_the_mask_target_are_refused(instance_demo, demo_model, models):
    with pytest.raises(UnsupportedModelError, match='no instance mask head'):
        DetCAM(demo_model, target='mask')
    with pytest.raises(UnsupportedModelError, match="follows each mask.*QueryInst"):
        DetCAM(models('queryinst/queryinst_r50_fpn_1x_coco.py'), target='mask',
               method='scorecam')
    with pytest.raises(BadInputError, match='named boxes'):
        DetCAM(instance_demo, target='mask')(DEMO_IMAGE, boxes=[[10, 10, 60, 60]])


def test_every_candidate_draws_no_masks_for_rtmdet_ins(instance_demo):
    """Reading every raw candidate (perturbation methods, D-RISE, metrics) draws no masks:
    RTMDet-Ins drew one per candidate inside its box head."""
    cam = DetCAM(instance_demo)
    candidates = CandidateScorer(instance_demo, cam.pipeline)([mmcv.imread(DEMO_IMAGE)])[0]
    assert 'masks' not in candidates and len(candidates) > 1000


def test_cli_writes_mask_fields(tmp_path):
    out = tmp_path / 'out'
    subprocess.run([sys.executable, str(REPO / 'tools' / 'demo_gradcam.py'), *INSTANCE_DEMO,
                    DEMO_IMAGE, '--target', 'mask', '--per-box', '--out-dir', str(out)],
                   check=True, capture_output=True, cwd=REPO)
    summary = json.loads((out / 'shapes_1.json').read_text())
    assert summary['target'] == 'mask' and summary['mask_region'] == 'mask'
    rows = summary['detections']
    assert rows and all(row['mask_area'] > 0 and 0 <= row['energy_in_mask'] <= 1 for row in rows)
    assert np.mean([row['peak_in_mask'] for row in rows]) >= 0.8


def test_masks_are_outlined_not_filled():
    from mmengine.structures import InstanceData

    from mmdet_cam.visualization import BoxDrawer
    drawer = BoxDrawer(dict(classes=('a', 'b'), palette=[(255, 0, 0), (0, 255, 0)]))
    image = np.full((60, 80, 3), 128, np.uint8)
    mask = np.zeros((1, 60, 80), bool)
    mask[0, 20:40, 30:60] = True
    drawn = drawer.draw(image, InstanceData(
        bboxes=torch.tensor([[25., 15, 65, 45]]), labels=torch.tensor([1]),
        scores=torch.tensor([0.9]), masks=torch.from_numpy(mask)))
    assert (drawn[30, 45] == 128).all()  # inside the mask: the image, not a fill
    blue, green, red = drawn[20, 45].astype(int)  # on its outline (the box is at y = 15)
    assert green > 200 and blue < 80 and red < 80


def test_mask_tracking_follows_the_mask_not_the_box(instance_demo):
    """Deletion / insertion for masks score each perturbed image by the best raw candidate's
    mask IoU with the explained mask x its probability, from unpasted candidate masks."""
    from mmdet_cam.metrics import mask_tracker
    result = DetCAM(instance_demo, target='mask', score_thr=0.3)(DEMO_IMAGE)
    scorer = CandidateScorer(instance_demo, DetCAM(instance_demo).pipeline, masks=True)
    candidates = scorer([result.image])[0]
    assert 'masks' not in candidates
    every = candidate_mask_logits(candidates, torch.ones(len(candidates), dtype=torch.bool))
    assert every.shape[0] == len(candidates)
    masks = result.detections.masks.numpy()
    for k in range(len(result)):
        label = int(result.detections.labels[k])
        own = mask_tracker(scorer, masks[k], label)([result.image])[0]
        # its own candidate: IoU of the head's stride-8 mask with the pasted one, x its score
        assert 0.7 * float(result.detections.scores[k]) <= own <= 1
        # another object of another class, asked as this class: no candidate of this class
        # matches its mask as well
        others = [j for j in range(len(result)) if (masks[j] & masks[k]).sum() == 0
                  and int(result.detections.labels[j]) != label]
        for j in others:
            assert mask_tracker(scorer, masks[j], label)([result.image])[0] < 0.5 * own
        # read by falling score until none can beat the best: the maximum over every candidate
        same = candidates.labels == label
        brute = mask_ious(candidates, [masks[k]], same)[0] * candidates.scores
        assert tracked_mask_score(candidates, masks[k], label) == pytest.approx(
            float(brute[same].max()), abs=1e-6)


def test_rtmdet_ins_candidate_masks_are_the_heads_own(instance_demo):
    """RTMDet-Ins candidates' masks, drawn on demand as batched matrix products, are the
    logits mmdet's dynamic convolutions give, for the same candidates in the same order
    (repeated priors, one per class, included)."""
    scorer = CandidateScorer(instance_demo, DetCAM(instance_demo).pipeline, masks=True)
    outputs = []  # the head's outputs end with the image's mask features
    handle = instance_demo.bbox_head.register_forward_hook(
        lambda module, args, output: outputs.append(output[-1][0]))
    try:
        candidates = scorer([mmcv.imread(DEMO_IMAGE)])[0]
    finally:
        handle.remove()
    features = outputs[-1]
    chosen = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(0))[:300]
    assert len(torch.unique(candidates.priors[chosen], dim=0)) < len(chosen)  # repeats
    with torch.no_grad():
        expected = instance_demo.bbox_head._mask_predict_by_feat_single(
            features, candidates.kernels[chosen], candidates.priors[chosen])
    drawn = candidate_mask_logits(candidates, chosen)
    height, width = drawn.shape[-2:]
    torch.testing.assert_close(drawn, expected[:, :height, :width], rtol=1e-5, atol=1e-4)


def test_roi_head_candidates_carry_the_heads_own_unpasted_masks(models):
    """Mask faithfulness on RoI heads: the best-scored raw candidates (``ROI_MASK_CANDIDATES``)
    carry their 28x28 mask logits, unpasted; the top detection's candidate carries the very
    map the head made for the detection, and a region's tracked IoU with it is the IoU counted
    in image pixels."""
    from mmdet_cam.engine.mask_logits import ROI_MASK_CANDIDATES
    from mmdet_cam.metrics import tracked_mask_score
    model, image = models(MASK_RCNN), make_scene()
    candidates = CandidateScorer(model, DetCAM(model).pipeline, masks=True)([image])[0]
    assert 'masks' not in candidates and len(candidates) == ROI_MASK_CANDIDATES
    assert candidates.mask_logits.shape == (len(candidates), 28, 28)
    top = _recorded(model, image)[:1]
    same = ((candidates.bboxes - top.bboxes).abs().max(1).values < 1e-3) & \
        (candidates.labels == top.labels)
    assert same.sum() == 1
    torch.testing.assert_close(candidates.mask_logits[same], top.mask_logits.detach(),
                               atol=1e-4, rtol=1e-4)
    # IoU of its thresholded cells, drawn on the image by its box, with a region of the image,
    # as tracked (the candidates' grids, with the share of each cell the region covers) and
    # as counted in image pixels
    x1, y1, x2, y2 = top.bboxes[0].tolist()
    ys, xs = np.mgrid[:image.shape[0], :image.shape[1]] + 0.5
    inside = (xs > x1) & (xs < x2) & (ys > y1) & (ys < y2)
    cells = (top.mask_logits[0] > top.mask_thresholds[0]).numpy()
    drawn = np.zeros(image.shape[:2], bool)
    drawn[inside] = cells[((ys[inside] - y1) / (y2 - y1) * 28).astype(int),
                          ((xs[inside] - x1) / (x2 - x1) * 28).astype(int)]
    region = (xs < (x1 + x2) / 2) & (ys > y1 - 20)  # smooth, half over the box
    iou = (drawn & region).sum() / (drawn | region).sum()
    tracked = tracked_mask_score(candidates[same], region, int(top.labels[0]))
    assert tracked == pytest.approx(iou * float(candidates.scores[same]), rel=0.1)


@pytest.mark.parametrize('name', [
    'condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py',
    'yolact/yolact_r50_1xb8-55e_coco.py',
    pytest.param('mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', marks=pytest.mark.slow)])
def test_other_families_candidates_carry_the_heads_own_masks(name, models):
    """CondInst / BoxInst and YOLACT (drawn on demand by their mask head) and Mask2Former
    (recorded): among the raw candidates with a top detection's box and label, one carries
    the very map the head made for that detection, on the same grid. Compared as
    probabilities: YOLACT's maps are probabilities, whose logits near 0 magnify rounding."""
    model, image = models(name), make_scene()
    candidates = CandidateScorer(model, DetCAM(model).pipeline, masks=True)([image])[0]
    assert 'masks' not in candidates or name.startswith('mask2former')
    top = _recorded(model, image)[:3]
    assert len(top) == 3
    for k in range(len(top)):
        same = torch.nonzero(((candidates.bboxes - top.bboxes[k]).abs().max(1).values < 1e-3)
                             & (candidates.labels == top.labels[k]))[:, 0]
        assert len(same)
        own = top.mask_logits[k].detach().sigmoid()
        drawn = candidate_mask_logits(candidates, same).sigmoid()
        closest = int((drawn - own).abs().flatten(1).max(1).values.argmin())
        torch.testing.assert_close(drawn[closest], own, atol=1e-4, rtol=0)
        torch.testing.assert_close(candidates.mask_boxes[same[closest]], top.mask_boxes[k],
                                   atol=1e-3, rtol=1e-4)
        assert float(candidates.mask_thresholds[same[closest]]) == float(top.mask_thresholds[k])


def test_solo_candidates_carry_their_maps_and_the_boxes_of_their_masks():
    """SOLO reports all-zero boxes: its candidates' boxes are their masks' and their recorded
    maps, placed by those boxes, are their reported masks. (Without ``filter_thr``, the score
    threshold after its matrix NMS, an untrained SOLOv2 gives candidates.)"""
    cfg = small_config('solov2/solov2-light_r18_fpn_ms-3x_coco.py')
    cfg.model.test_cfg.filter_thr = 0.0
    torch.manual_seed(0)
    model, image = build_detector(cfg), make_scene()
    candidates = CandidateScorer(model, DetCAM(model).pipeline, masks=True)([image])[0]
    assert len(candidates) > 10 and candidates.mask_logits.shape[0] == len(candidates)
    for k in range(5):
        reported = candidates.masks[k].numpy()
        ys, xs = np.nonzero(reported)
        assert candidates.bboxes[k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        carried = _carried_to_image(candidates, k, image.shape[:2])
        assert (carried & reported).sum() / (carried | reported).sum() >= 0.9


def test_drise_follows_condinst_masks(models):
    """D-RISE with the mask target runs on a dynamic-kernel head (refused before its
    candidates carried masks): finite maps, other than the box target's at the same seed."""
    model = models('condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py')
    drise = dict(type='drise', num_masks=48, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        masks = DetCAM(model, target='mask', method=drise, score_thr=0, topk=3)(make_scene())
        boxes = DetCAM(model, method=drise, score_thr=0, topk=3)(make_scene())
    assert len(masks) == 3 and np.isfinite(masks.cams).all()
    assert (masks.cams.reshape(3, -1).max(1) > 0).all()
    assert not np.allclose(masks.cams, boxes.cams, atol=1e-3)


@pytest.mark.slow
def test_mask_scoring_rcnn_candidates_are_rescored_in_chunks_without_pasting(models):
    """Mask Scoring R-CNN rescores boxes by its mask IoU head, so reading every raw candidate
    runs its mask branch: on the best-scored candidates, in chunks, pasting nothing (it ran
    out of memory pasting 80000 masks)."""
    from mmdet_cam.engine.mask_logits import ROI_MASK_CANDIDATES
    from mmdet_cam.patching import swapped
    model, image = models('ms_rcnn/ms-rcnn_r50-caffe_fpn_1x_coco.py'), make_scene()
    scorer = CandidateScorer(model, DetCAM(model).pipeline)
    rescored = scorer([image])[0]
    with swapped(model.roi_head, 'mask_head', None):  # mmdet's box-only path: box scores
        boxes = scorer([image])[0]
    assert 'masks' not in rescored and len(rescored) == ROI_MASK_CANDIDATES < len(boxes)
    best = boxes[boxes.scores.argsort(descending=True)[:ROI_MASK_CANDIDATES]]
    order = rescored.bboxes[:, 0].argsort()
    torch.testing.assert_close(rescored.bboxes[order], best.bboxes[best.bboxes[:, 0].argsort()])
    assert not torch.allclose(rescored.scores.sort().values, best.scores.sort().values)


@pytest.mark.slow
def test_methods_that_rerun_the_detector_follow_the_mask(instance_demo):
    """D-RISE, occlusion, region search and the perturbation methods weigh each re-run by the
    best mask IoU x class agreement among the raw candidates' unpasted masks, not by boxes."""
    drise = dict(type='drise', num_masks=200, progress=False)
    masks = DetCAM(instance_demo, target='mask', method=drise, score_thr=0.3)(DEMO_IMAGE)
    boxes = DetCAM(instance_demo, method=drise, score_thr=0.3)(DEMO_IMAGE)
    assert len(masks) >= 4 and np.isfinite(masks.cams).all()
    assert not np.allclose(masks.cams, boxes.cams, atol=1e-3)  # same masks, other weights
    # only candidates near a detection have their masks compared: the maps of every
    # candidate's, at the same seed, to r >= 0.95
    every = DetCAM(instance_demo, target='mask', score_thr=0.3,
                   method=dict(drise, mask_candidate_iou=None))(DEMO_IMAGE)
    assert min(np.corrcoef(a.ravel(), b.ravel())[0, 1]
               for a, b in zip(masks.cams, every.cams)) >= 0.95
    hits = [pointing_hit_mask(masks.cams[k], masks.detections.masks[k].numpy())
            for k in range(len(masks))]
    assert np.mean(hits) >= 0.6
    occlusion = dict(type='occlusion', window=32, progress=False)
    hidden = DetCAM(instance_demo, target='mask', method=occlusion, score_thr=0.3)(DEMO_IMAGE)
    by_box = DetCAM(instance_demo, method=occlusion, score_thr=0.3)(DEMO_IMAGE)
    assert len(hidden) == len(masks) and np.isfinite(hidden.cams).all()
    assert not np.allclose(hidden.cams, by_box.cams, atol=1e-3)
    search = dict(type='region_search', rounds=3, progress=False)
    searched = DetCAM(instance_demo, target='mask', method=search, topk=2)(DEMO_IMAGE)
    assert len(searched) == 2 and np.isfinite(searched.cams).all()
    assert not np.allclose(searched.cams,
                           DetCAM(instance_demo, method=search, topk=2)(DEMO_IMAGE).cams)
    for cam, mask in zip(searched.cams, searched.detections.masks.numpy()):
        assert cam[mask].mean() > cam[~mask].mean()
    ablation = DetCAM(instance_demo, target='mask', method='ablationcam', score_thr=0.3)(
        DEMO_IMAGE)
    assert np.isfinite(ablation.cams).all() and ablation.cams.max() > 0
    assert not np.allclose(ablation.cams[0], ablation.cams[1])


def test_solo_heads_draw_a_bounded_number_of_candidate_masks(models, monkeypatch):
    """With no score threshold an untrained SOLOv2 asks for a mask per (grid cell, class) pair
    before its NMS (3872 x 80, over 20 GB at 256 px; the zoo's crash rows): only the
    best-scored ones up to the memory bound are drawn."""
    from mmdet_cam.engine import capture
    model = models('solov2/solov2-light_r18_fpn_ms-3x_coco.py')
    head = model.mask_head
    drawn, best = [], []
    single = head._predict_by_feat_single

    def counting(kernel_preds, cls_scores, mask_feats, img_meta, cfg=None):
        kept = cls_scores > (cfg or head.test_cfg).score_thr
        drawn.append(int(kept.sum()))
        best.append(bool(kept.flatten()[cls_scores.flatten().argmax()]))
        return single(kernel_preds, cls_scores, mask_feats, img_meta, cfg)
    monkeypatch.setattr(head, '_predict_by_feat_single', counting)
    monkeypatch.setattr(capture, 'SOLO_MASK_BYTES', 300 * 64 * 64 * 4 * capture.MASK_COPIES)
    assert head.test_cfg.score_thr == 0 and head.num_classes * 3872 > 300
    result = DetCAM(model, score_thr=0, topk=3)(make_scene())
    assert drawn and 0 < max(drawn) <= 300 and all(best)
    assert np.isfinite(result.cams).all()  # untrained: its masks are empty, so no detection
