"""``region_search``: a greedy search, per detection, for the regions of the image that keep it
shown and whose removal takes it away (VPS-style)."""
import cv2
import numpy as np
import pytest
import torch

from mmdet_cam import DetCAM
from mmdet_cam.boxes import box_mask
from mmdet_cam.engine.candidates import CandidateScorer, MaskedCandidates, TrackedDetection
from mmdet_cam.errors import UnknownNameError
from mmdet_cam.methods import build_cam_method
from mmdet_cam.methods.search import _Search, box_regions
from mmdet_cam.metrics.faithfulness import substrate

from conftest import DEMO_IMAGE


def test_regions_are_cells_of_the_box_and_its_surroundings():
    regions = box_regions((100, 120), (30, 20, 70, 60), cells=2, context=0.5)
    assert regions.shape == (100, 120) and regions.dtype == np.int32
    # 4 x 4 cells of 20 x 20 pixels over the box grown by half its size; -1 elsewhere
    assert np.bincount(regions[regions >= 0]).tolist() == [400] * 16
    assert (regions[0:80, 10:90] >= 0).all() and (regions[80:] == -1).all()
    assert (regions[:, :10] == -1).all() and (regions[:, 90:] == -1).all()
    box = box_mask((100, 120), (30, 20, 70, 60))
    assert len(np.unique(regions[box])) == 4  # the box is exactly its four inner cells
    assert not np.isin(np.unique(regions[box]), np.unique(regions[~box])).any()
    # no context: the box's cells only; at the border the cells are clipped
    alone = box_regions((100, 120), (30, 20, 70, 60), 2, 0)
    assert np.bincount(alone[alone >= 0]).tolist() == [400] * 4 and (alone >= 0).sum() == 1600
    corner = box_regions((100, 120), (0, 0, 40, 40), 2, 0.5)
    assert np.bincount(corner[corner >= 0]).tolist() == [400] * 9
    assert (box_regions((50, 60), (0, 0, 60, 50), 1, 1.0) == 0).all()  # the whole image


def test_a_regions_rank_orders_the_map_and_nearness_only_its_pixels():
    search = _Search(box_regions((100, 120), (30, 20, 70, 60), 2, 0.5))
    for _ in range(3):  # the gains favour the highest-numbered region left
        search.take(np.arange(len(search.left), dtype=float))
    assert search.chosen == [15, 14, 13]
    values = search.saliency((30, 20, 70, 60))
    ranks = [values[search.regions == r] for r in search.chosen + [12, 0]]
    assert all(a.min() > b.max() for a, b in zip(ranks, ranks[1:]))  # regions never reorder
    assert values[search.regions < 0].max() < ranks[-1].min()
    assert values.max() <= 1 + 0.4 / 16 and values.min() >= 0
    # inside a region, nearer the box's centre first
    assert values[45, 45] > values[21, 31]


def test_options_are_checked():
    with pytest.raises(UnknownNameError, match='cells, rounds and batch_size'):
        build_cam_method(dict(type='region_search', cells=0), None)
    with pytest.raises(UnknownNameError, match='context'):
        build_cam_method(dict(type='region_search', context=-1), None)
    method = build_cam_method(dict(type='region_search', cells=3, rounds=4), None)
    assert (method.cells, method.context, method.rounds) == (3, 0.5, 4)
    assert build_cam_method('region_search', None).rounds is None  # to the last region


@pytest.fixture(scope='module')
def searched(demo_model):
    cam = DetCAM(demo_model, method=dict(type='region_search', progress=False), topk=2)
    return cam, cam(DEMO_IMAGE)


def test_maps_rank_regions_are_box_specific_and_peak_on_their_own_box(searched):
    _, result = searched
    assert len(result) == 2 and result.cams.shape == (2,) + result.image.shape[:2]
    assert np.isfinite(result.cams).all() and result.cams.min() >= 0
    assert result.cams.max(axis=(1, 2)) == pytest.approx([1, 1])
    assert not np.allclose(result.cams[0], result.cams[1])
    for cam, box in zip(result.cams, result.detections.bboxes.tolist()):
        peak = np.unravel_index(cam.argmax(), cam.shape)
        assert box_mask(cam.shape, box)[peak]


def test_the_first_region_is_the_one_that_keeps_the_box_best(searched, demo_model):
    """Asked independently of the search: for detection 0, each region shown alone in the
    blurred image and hidden alone under the mean colour; the map's top region is the one
    with the largest (kept - lost) tracked score."""
    cam, result = searched
    image = cv2.imread(DEMO_IMAGE)
    masked = MaskedCandidates(CandidateScorer(demo_model, cam.pipeline), image)
    resized = masked.resized
    pixels = resized.permute(1, 2, 0).numpy()
    blurred = torch.from_numpy(substrate(pixels, 'blur').copy()).permute(2, 0, 1)
    mean = torch.from_numpy(substrate(pixels, 'mean').copy()).permute(2, 0, 1)
    box = result.detections.bboxes[0].numpy()
    scale = np.tile(masked.sample.metainfo['scale_factor'][:2], 2)
    regions = box_regions(masked.size, box * scale, 2, 0.5)
    shown = torch.from_numpy(np.stack([regions == r for r in range(regions.max() + 1)]))[:, None]
    target = TrackedDetection(box, int(result.detections.labels[0]))
    kept = [float(target(c)) for c in masked.perturbed(torch.where(shown, resized, blurred))]
    lost = [float(target(c)) for c in masked.perturbed(torch.where(shown, mean, resized))]
    best = int(np.argmax(np.subtract(kept, lost)))
    # the top of the map (on the original image) lies in the best region (network input)
    top = np.argwhere(result.cams[0] >= result.cams[0].max() - 1e-6)
    y, x = (top.mean(axis=0) * scale[[1, 0]]).astype(int)
    assert regions[min(y, regions.shape[0] - 1), min(x, regions.shape[1] - 1)] == best

