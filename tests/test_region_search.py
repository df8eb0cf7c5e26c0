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
from mmdet_cam.methods.search import box_regions
from mmdet_cam.metrics.faithfulness import substrate

from conftest import DEMO_IMAGE


def test_regions_are_cells_of_the_box_its_surroundings_and_the_rest():
    regions = box_regions((100, 120), (30, 20, 70, 60), cells=2, context=0.5)
    assert regions.shape == (100, 120) and regions.dtype == np.int32
    sizes = np.bincount(regions.ravel())
    # 4 x 4 cells of 20 x 20 pixels over the box grown by half its size, then everything else
    assert sizes.tolist() == [400] * 16 + [100 * 120 - 80 * 80]
    assert (regions[0:80, 10:90] < 16).all() and (regions[80:] == 16).all()
    box = box_mask((100, 120), (30, 20, 70, 60))
    assert len(np.unique(regions[box])) == 4  # the box is exactly its four inner cells
    assert not np.isin(np.unique(regions[box]), np.unique(regions[~box])).any()
    # no context: the box's cells and the rest; at the border the cells are clipped
    assert np.bincount(box_regions((100, 120), (30, 20, 70, 60), 2, 0).ravel()).tolist() == \
        [400] * 4 + [100 * 120 - 1600]
    corner = np.bincount(box_regions((100, 120), (0, 0, 40, 40), 2, 0.5).ravel())
    assert corner.tolist() == [400] * 9 + [100 * 120 - 3600]
    whole = box_regions((50, 60), (0, 0, 60, 50), 1, 1.0)
    assert (whole == 0).all()  # a box over the whole image: one region, nothing left over


def test_options_are_checked():
    with pytest.raises(UnknownNameError, match='cells, rounds and batch_size'):
        build_cam_method(dict(type='region_search', cells=0), None)
    with pytest.raises(UnknownNameError, match='context'):
        build_cam_method(dict(type='region_search', context=-1), None)
    method = build_cam_method(dict(type='region_search', cells=3, rounds=4), None)
    assert (method.cells, method.context, method.rounds) == (3, 0.5, 4)


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

