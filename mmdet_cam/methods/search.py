"""``region_search``: the regions around a detection that keep it and whose removal takes it
away, found by asking the detector, greedily (Visual Precision Search, Chen et al., CVPR 2025,
arXiv 2411.16198, ``hrw-neurolab/VPS``).

VPS grows a set ``S`` of image regions one at a time, each time adding the region ``r`` that
maximises ``score(only S + r shown) + (1 - score(S + r hidden))``: the detection's tracked
score when every other pixel is removed (insertion) and when those pixels are removed
(deletion). The order in which regions join is the explanation. Here, per detection:

* the regions are a grid aligned to its box, ``cells`` per box side, continued over
  ``context`` box sizes on each side (by default 4 x 4 cells of half the box's size);
* removed pixels take the substrates of the deletion/insertion metrics
  (``mmdet_cam.metrics.faithfulness.substrate``): hidden pixels become the image's mean colour,
  shown ones are restored into the image blurred;
* the greedy runs to the last region (``n (n + 1) - 2`` forwards for ``n`` regions: 270 by
  default), or ``rounds`` steps, the regions left then ranked by their gains in the last one
  (PhaseWin, Gu et al., arXiv 2511.10914, prunes a greedy search likewise).

All detections' copies of a step go through the detector together. A region's value is its
rank (the first 1, the last ``1 / n``). The search says nothing about the order of pixels
inside one region or outside all of them; there, nearer the box's centre comes first (a
term smaller than one rank step, so it never reorders regions).
"""
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmengine.utils import ProgressBar

from ..boxes import box_gaussian
from ..engine.candidates import TrackedDetection, TrackedMask
from ..metrics.faithfulness import substrate
from ..registry import CAM_METHODS
from .kinds import MethodKind


def box_regions(size, box: Sequence[float], cells: int, context: float) -> np.ndarray:
    """``[h, w]`` region index of every pixel of an image of ``size = (h, w)``, for a box
    ``(x1, y1, x2, y2)`` in its pixels: ``cells`` x ``cells`` cells of the box and the same
    cells continued over ``context`` box sizes on each side (clipped to the image; empty ones
    dropped), numbered in raster order; -1 for the rest of the image."""
    height, width = size
    x1, y1, x2, y2 = box
    step_x, step_y = max((x2 - x1) / cells, 1.0), max((y2 - y1) / cells, 1.0)
    reach = int(np.ceil(context * cells))
    edges_x = np.unique(np.clip(np.round(x1 + step_x * np.arange(-reach, cells + reach + 1)),
                                0, width).astype(int))
    edges_y = np.unique(np.clip(np.round(y1 + step_y * np.arange(-reach, cells + reach + 1)),
                                0, height).astype(int))
    # a pixel's cell column / row (-1 or the count: outside the grid)
    column = np.searchsorted(edges_x, np.arange(width) + 0.5) - 1
    row = np.searchsorted(edges_y, np.arange(height) + 0.5) - 1
    columns, rows = len(edges_x) - 1, len(edges_y) - 1
    inside = ((row >= 0) & (row < rows))[:, None] & ((column >= 0) & (column < columns))[None]
    index = np.where(inside, row[:, None] * columns + column[None], -1)
    numbered = np.unique(index, return_inverse=True)[1].reshape(size)
    return (numbered - (index < 0).any()).astype(np.int32)


class _Search:
    """One detection's greedy search: its regions (``box_regions``), those chosen so far and
    the gains of the last step."""

    def __init__(self, regions: np.ndarray):
        self.regions = regions
        self.count = int(regions.max()) + 1
        self.chosen: List[int] = []
        self.left = list(range(self.count))
        self.gains = np.zeros(self.count)

    def candidate(self, region: int) -> np.ndarray:
        """``[h, w]``: the pixels shown once ``region`` joins the chosen ones."""
        return np.isin(self.regions, self.chosen + [region])

    def take(self, gains: np.ndarray) -> None:
        """Record a step's gains (one per region left, in order) and add the best region."""
        self.gains[self.left] = gains
        self.chosen.append(self.left.pop(int(np.argmax(gains))))

    def saliency(self, box: Sequence[float]) -> np.ndarray:
        """``[h, w]``: each region's rank (the chosen regions in order, then the others by
        their last gains; 1 for the first, ``1 / n`` for the last, 0 outside every region),
        plus less than half a rank step for nearness to the centre of ``box``
        (``box_gaussian``)."""
        order = self.chosen + sorted(self.left, key=lambda r: -self.gains[r])
        rank = np.empty(self.count + 1, np.float32)
        rank[order] = 1 - np.arange(self.count, dtype=np.float32) / self.count
        rank[-1] = 0  # index -1: outside every region
        return rank[self.regions] + 0.4 / self.count * box_gaussian(self.regions.shape, box)


@CAM_METHODS.register_module(name='region_search')
class RegionSearch:
    """Greedy search, per detection, for the regions around it that keep it and whose removal
    takes it away (VPS-style; see the module's docstring).

    Args:
        cells: cells per box side (each region is ``1 / cells`` of the box's width and height).
        context: how far around the box the cells continue, in box sizes per side; beyond
            them nothing is searched (the map is 0 there, but for the order of nearness).
        rounds: greedy steps (default: to the last region); the regions left are ranked by
            their gains in the last step.
        batch_size: copies per forward pass.
        progress: show a progress bar over the forwards.
    """

    kind = MethodKind.BLACK_BOX  # BlackBoxPipeline runs it on the image, no gradients

    def __init__(self, cells: int = 2, context: float = 0.5, rounds: Optional[int] = None,
                 batch_size: int = 16, progress: bool = True):
        if cells < 1 or context < 0 or (rounds is not None and rounds < 1) or batch_size < 1:
            raise ValueError('region_search needs cells, rounds and batch_size >= 1 and context '
                             f'>= 0, got {cells}, {rounds}, {batch_size} and {context}')
        self.cells, self.context = int(cells), float(context)
        self.rounds = None if rounds is None else int(rounds)
        self.batch_size, self.progress = batch_size, progress

    def __call__(self, size, bboxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                 candidates_fn, num_classes: int, instance_masks=None) -> np.ndarray:
        """``[N, height, width]`` maps in [0, 1] for the ``N`` detections ``(bboxes, labels)``
        (original-image pixels) of an image of network-input ``size = (height, width)``;
        ``candidates_fn`` is a ``MaskedCandidates``. With ``instance_masks`` (``[N, H, W]``
        boolean), the detections' masks are followed instead of their boxes."""
        if len(bboxes) == 0:
            return np.zeros((0, *size), np.float32)
        image = candidates_fn.resized
        pixels = image.permute(1, 2, 0).numpy()
        shown_on = torch.from_numpy(substrate(pixels, 'blur').copy()).permute(2, 0, 1)
        hidden_as = torch.from_numpy(substrate(pixels, 'mean').copy()).permute(2, 0, 1)
        targets = ([TrackedDetection(box, label) for box, label in zip(bboxes, labels)]
                   if instance_masks is None else
                   [TrackedMask(mask, label) for mask, label in zip(instance_masks, labels)])
        scale = np.tile(candidates_fn.sample.metainfo.get('scale_factor', (1.0, 1.0))[:2], 2)
        boxes = np.asarray(bboxes, np.float64) * scale  # network-input pixels
        searches = [_Search(box_regions(size, box, self.cells, self.context)) for box in boxes]
        # the last region left needs no step
        steps = [min(self.rounds or s.count - 1, s.count - 1) for s in searches]
        total = sum(2 * sum(s.count - k for k in range(n)) for s, n in zip(searches, steps))
        bar = ProgressBar(total, file=sys.stderr) if self.progress else None
        for step in range(max(steps)):
            active = [k for k, n in enumerate(steps) if step < n]
            asked = [(k, region) for k in active for region in searches[k].left]
            owners = [k for k, _ in asked]
            kept = self._scores(candidates_fn, _Copies(searches, asked, image, shown_on),
                                owners, targets, bar)
            lost = self._scores(candidates_fn, _Copies(searches, asked, hidden_as, image),
                                owners, targets, bar)
            gains, first = kept - lost, 0
            for k in active:
                count = len(searches[k].left)
                searches[k].take(gains[first:first + count])
                first += count
        if bar is not None:
            sys.stderr.write('\n')
        return np.stack([s.saliency(box) for s, box in zip(searches, boxes)])

    @staticmethod
    def _scores(candidates_fn, copies, owners: List[int], targets, bar) -> np.ndarray:
        """Each copy's tracked score of the detection it was made for."""
        scores = [float(targets[owner](candidates))
                  for owner, candidates in zip(owners, candidates_fn.perturbed(copies))]
        if bar is not None:
            bar.update(len(scores))
        return np.asarray(scores)


class _Copies:
    """The copies of one step, made a forward's worth at a time (what
    ``MaskedCandidates.perturbed`` slices): per ``(detection, region)`` asked, ``inside`` on
    the pixels shown once the region joins that detection's chosen ones, ``outside``
    elsewhere."""

    def __init__(self, searches: List[_Search], asked, inside: torch.Tensor,
                 outside: torch.Tensor):
        self.searches, self.asked, self.inside, self.outside = searches, asked, inside, outside

    def __len__(self):
        return len(self.asked)

    def __getitem__(self, index: slice) -> torch.Tensor:
        shown = np.stack([self.searches[k].candidate(r) for k, r in self.asked[index]])
        return torch.where(torch.from_numpy(shown)[:, None], self.inside, self.outside)
