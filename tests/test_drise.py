"""D-RISE: black-box maps of each detection from the detector's outputs on masked images."""
import cv2
import mmcv
import numpy as np
import pytest

from mmdet_cam import DetCAM
from mmdet_cam.errors import UnknownNameError
from mmdet_cam.methods import build_cam_method
from mmdet_cam.methods.drise import DRISE, class_cosine, pairwise_iou
from mmdet_cam.metrics import box_mask

from conftest import DEMO_IMAGE as IMAGE


def drise(model, **options):
    return DetCAM(model, method=dict(type='drise', progress=False, **options), topk=2)


def test_maps_are_seeded_valid_and_higher_on_their_own_box(demo_model):
    result = drise(demo_model, num_masks=128, seed=0)(IMAGE)
    assert len(result) == 2 and result.cams.shape == (2,) + result.image.shape[:2]
    assert np.isfinite(result.cams).all() and result.cams.min() == 0
    assert result.cams.max() == pytest.approx(1)
    few = drise(demo_model, num_masks=32, seed=0)(IMAGE).cams
    np.testing.assert_array_equal(few, drise(demo_model, num_masks=32, seed=0)(IMAGE).cams)
    assert not np.array_equal(few, drise(demo_model, num_masks=32, seed=1)(IMAGE).cams)
    assert not np.allclose(result.cams[0], result.cams[1])  # each box its own map
    # a Monte Carlo estimate: with this few masks only the most confident box is asserted on
    inside = box_mask(result.cams[0].shape, result.detections.bboxes[0].tolist())
    assert result.cams[0][inside].mean() > 1.2 * result.cams[0][~inside].mean()


def test_a_larger_copy_of_an_image_gets_the_same_maps_at_its_own_size(demo_model):
    """Masks are made at the network's input size, whatever the photo's size, and the maps
    come back onto the photo's pixels."""
    image = mmcv.imread(IMAGE)
    large = cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    small_result = drise(demo_model, num_masks=64, seed=0)(image)
    large_result = drise(demo_model, num_masks=64, seed=0)(large)
    assert large_result.cams.shape == (2,) + large.shape[:2]
    np.testing.assert_allclose(large_result.detections.bboxes.numpy(),
                               3 * small_result.detections.bboxes.numpy(), atol=6)
    for small_map, large_map in zip(small_result.cams, large_result.cams):
        shrunk = cv2.resize(large_map, image.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert np.corrcoef(shrunk.ravel(), small_map.ravel())[0, 1] > 0.9


@pytest.mark.parametrize('config', ['retinanet/retinanet_r18_fpn_1x_coco.py',
                                    'yolox/yolox_tiny_8xb8-300e_coco.py'])  # pads to a square
def test_a_mask_multiplies_the_image_as_the_pipeline_resized_it(models, scene, config):
    """At the pipeline's own scale (no resizing), masking the network's image equals masking
    the image itself: same pixels, channels and padding."""
    from mmdet_cam.engine.candidates import CandidateScorer, MaskedCandidates
    model = models(config)
    scorer = CandidateScorer(model, DetCAM(model, method='drise').pipeline, batch_size=2)
    masked = MaskedCandidates(scorer, scene)
    assert masked.size == scene.shape[:2]
    masks = np.ones((3,) + scene.shape[:2], np.float32)
    masks[1, :, :150] = masks[2, 100:, 60:] = 0
    ours = list(masked(masks))  # one copy at a time
    reference = scorer([scene * m[..., None].astype(np.uint8) for m in masks])
    for a, b in zip(ours, reference):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.scores.numpy(), b.scores.numpy(), atol=1e-5)
        np.testing.assert_allclose(a.bboxes.numpy(), b.bboxes.numpy(), atol=1e-3)
    assert not np.allclose(np.sort(ours[0].bboxes.numpy().ravel()),
                           np.sort(ours[1].bboxes.numpy().ravel()))  # the masks did something


@pytest.mark.parametrize('config, owner', [
    ('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'roi_head'),  # two-stage
    ('condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py', None),  # single-stage
])
def test_every_candidate_comes_without_masks(models, scene, config, owner):
    """Masks for every raw candidate (thousands, each pasted at the image's size) cost more
    than the detector (Mask R-CNN ran out of memory explaining a named box); what reads every
    candidate (D-RISE, metrics, named boxes) needs only boxes, scores and labels."""
    from mmdet_cam.engine.candidates import CandidateScorer
    model = models(config)
    holder = getattr(model, owner) if owner else model
    mask_head = holder.mask_head
    calls = []
    handle = mask_head.register_forward_hook(lambda *args: calls.append(1))
    try:
        candidates = CandidateScorer(model, DetCAM(model).pipeline)([scene])[0]
        named = DetCAM(model)(scene, boxes=[[40, 30, 140, 110]])
        assert not calls and 'masks' not in candidates and len(candidates) > 100
        assert holder.mask_head is mask_head  # restored
        reported = DetCAM(model, score_thr=0, topk=1).detect(scene)
        assert calls and 'masks' in reported  # the model's own inference still draws masks
    finally:
        handle.remove()
    best = int(candidates.scores.argmax())
    assert float(candidates.scores[best]) == pytest.approx(float(reported.scores[0]), abs=1e-6)
    np.testing.assert_allclose(candidates.bboxes[best].numpy(), reported.bboxes[0].numpy(),
                               atol=1e-3)  # original-image pixels, as with the mask branch
    assert named.cams.shape == (1,) + scene.shape[:2] and np.isfinite(named.cams).all()
    assert float(named.detections.ious[0]) > 0  # a candidate on the named box (untrained)


def test_masks_are_coarse_random_grids_kept_with_probability_p():
    method = DRISE(num_masks=40, grid=4, p=0.25, batch_size=16, seed=0)
    batches = list(method.masks(30, 50))
    assert [len(b) for b in batches] == [16, 16, 8]
    masks = np.concatenate(batches)
    assert masks.shape == (40, 30, 50) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - 0.25) < 0.08
    assert len({m.tobytes() for m in masks}) == 40  # a different mask each time
    np.testing.assert_array_equal(masks, np.concatenate(list(method.masks(30, 50))))


def test_similarity_terms():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(pairwise_iou(boxes[:1], boxes), [[1, 1 / 3, 0]])
    cosine = class_cosine(np.array([0.9]), np.array([1]), np.array([0.9, 0.6, 0.9]),
                          np.array([1, 1, 2]), num_classes=3)
    assert cosine[0, 0] == pytest.approx(1)
    assert cosine[0, 0] > cosine[0, 1] > cosine[0, 2]


def test_options_are_checked():
    with pytest.raises(UnknownNameError, match='0 < p < 1'):
        build_cam_method(dict(type='drise', p=1.5), None)
    with pytest.raises(UnknownNameError, match='needs a type'):
        build_cam_method(dict(num_masks=10), None)
    method = build_cam_method(dict(type='drise', num_masks=10, seed=3), None)
    assert (method.num_masks, method.seed) == (10, 3)
    with pytest.raises(UnknownNameError, match='dtype must be one of'):
        build_cam_method(dict(type='drise', dtype='int8'), None)


def test_bfloat16_masked_forwards_give_the_float32_maps_closely(demo_model):
    """The same masks (same seed) scored under bfloat16 autocast: each box's map is float32's
    up to the rounding of the scores (Pearson r above 0.95)."""
    full = drise(demo_model, num_masks=64, seed=0)(IMAGE).cams
    low = drise(demo_model, num_masks=64, seed=0, dtype='bfloat16')(IMAGE).cams
    assert low.dtype == np.float32 and np.isfinite(low).all()
    for a, b in zip(full, low):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


@pytest.mark.parametrize('config', [
    'sabl/sabl-retinanet_r50_fpn_1x_coco.py',  # bucketed box regression, dense head
    'sabl/sabl-faster-rcnn_r50_fpn_1x_coco.py',  # bucketed box regression, RoI head
])
def test_drise_explains_sabl_heads(models, scene, config):
    cam = DetCAM(models(config), method=dict(type='drise', num_masks=8, batch_size=8,
                                             progress=False), score_thr=0, topk=2)
    result = cam(scene)
    assert len(result) == 2 and result.cams.shape == (2,) + scene.shape[:2]
    assert np.isfinite(result.cams).all() and result.cams.max() == pytest.approx(1)
    assert not np.array_equal(result.cams[0], result.cams[1])


def test_nearest_upsampling_gives_hard_edged_binary_masks(demo_model):
    masks = np.concatenate(list(DRISE(num_masks=8, grid=4, upsample='nearest').masks(30, 50)))
    assert set(np.unique(masks)) <= {0.0, 1.0} and 0 < masks.mean() < 1
    with pytest.raises(UnknownNameError, match='upsample must be one of bilinear, nearest'):
        build_cam_method(dict(type='drise', upsample='cubic'), demo_model)


def test_a_head_that_detaches_its_outputs_is_refused_with_drise_suggested(demo_model):
    from mmdet_cam.errors import UnsupportedModelError

    def detached(module, inputs, outputs):  # as heads that cut their own graph do
        return tuple([level.detach() for level in branch] for branch in outputs)

    handle = demo_model.bbox_head.register_forward_hook(detached)
    try:
        with pytest.raises(UnsupportedModelError, match='--method drise needs no gradients'):
            DetCAM(demo_model, method='odam', topk=2)(IMAGE)
        result = drise(demo_model, num_masks=16)(IMAGE)
    finally:
        handle.remove()
    assert len(result) == 2 and np.isfinite(result.cams).all()
    assert result.cams.max() == pytest.approx(1)


@pytest.mark.parametrize('config, channels_last', [
    ('retinanet/retinanet_r18_fpn_1x_coco.py', True),
    ('centernet/centernet_r18_8xb16-crop512-140e_coco.py', False),  # views its features
    ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', False),  # mmcv's RoIAlign misreads it
])
def test_masked_batches_run_channels_last_where_the_model_allows(models, scene, config,
                                                                 channels_last):
    from mmdet_cam.engine.candidates import CandidateScorer
    model = models(config)
    pipeline = DetCAM(model, method='drise').pipeline
    fast, plain = CandidateScorer(model, pipeline), CandidateScorer(model, pipeline)
    plain.channels_last = False
    images = [scene, scene[::-1].copy()]
    ours, reference = fast(images), plain(images)
    assert fast.channels_last is channels_last  # else it fell back to the plain layout
    for a, b in zip(ours, reference):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(np.sort(a.scores.numpy()), np.sort(b.scores.numpy()),
                                   atol=1e-5)


def test_every_candidate_of_a_query_based_roi_head(models, scene):
    """Sparse R-CNN (and QueryInst) take the top ``max_per_img`` of their (query, class)
    scores: every pair is asked for, not more (a larger top-k failed)."""
    from mmdet_cam.engine.candidates import CandidateScorer
    model = models('sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py')
    candidates = CandidateScorer(model, DetCAM(model).pipeline)([scene])[0]
    queries, classes = model.rpn_head.num_proposals, model.roi_head.bbox_head[-1].num_classes
    assert len(candidates) == queries * classes
    reported = DetCAM(model, score_thr=0, topk=1).detect(scene)
    assert float(candidates.scores.max()) == pytest.approx(float(reported.scores[0]), abs=1e-6)
