"""Model-parameter randomisation test (Adebayo et al., NeurIPS 2018, arXiv 1810.03292) for
per-detection maps.

The detector's weights are re-initialised block by block, cascading from the box head back to
the backbone's stem. After each step every explained detection's map is computed again for the
*same* raw candidate (``FixedCandidates``: same raw positions and weights; a two-stage
detector keeps its original RoIs) and compared with its original map by Spearman rank
correlation. A method whose maps stay the same once the head is random explains the image, not
the model.

Unlike the other metrics here this one needs the model: it takes a ``DetCAM`` (anything with
``model``, ``select``, ``with_model`` and a ``__call__(image, candidates=)``).
"""
import copy
import warnings
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
from mmengine.structures import InstanceData
from scipy.stats import spearmanr
from torch import nn

from ..engine.fixed_candidates import FixedCandidates
from ..engine.proposals import pinned_proposals
from ..engine.request import Detections
from ..model.detector import read_image
from ..model.layers import predicting_detector

# a detector's parts, from its output back to its input (other parts with weights are
# randomised just before the neck)
_PARTS_FROM_OUTPUT = ('roi_head', 'rpn_head', 'bbox_head', 'decoder', 'query_embedding',
                      'encoder')
_PARTS_AT_INPUT = ('neck', 'backbone')


@dataclass
class SanityResult:
    """``correlation[s, k]``: Spearman rank correlation between detection ``k``'s original map
    and its map once the blocks ``steps[:s + 1]`` are randomised (1: unchanged)."""
    steps: List[str]
    correlation: np.ndarray
    detections: InstanceData

    def after(self, part: str) -> np.ndarray:
        """Per detection, the correlation once every block of ``part`` (e.g. the box head,
        ``'bbox_head'`` or ``'roi_head'``) is randomised."""
        last = max(s for s, name in enumerate(self.steps) if name.split('.')[0] == part)
        return self.correlation[last]

    @property
    def head_randomised(self) -> np.ndarray:
        """Per detection, the correlation once the box head is random: a method that passes
        the check changes its maps here (the explained value now comes from random weights)."""
        return self.after(self.steps[0].split('.')[0])


def cascade_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The blocks to randomise, in order: the children (with weights) of the box head(s),
    then of the other parts, the neck and the backbone, each part's children last to first."""
    detector = predicting_detector(model)
    named = dict(detector.named_children())
    middle = [name for name in named
              if name not in _PARTS_FROM_OUTPUT + _PARTS_AT_INPUT and _has_weights(named[name])]
    blocks = []
    for part in [p for p in _PARTS_FROM_OUTPUT if p in named] + middle + [
            p for p in _PARTS_AT_INPUT if p in named]:
        children = [(f'{part}.{name}', child) for name, child in named[part].named_children()
                    if _has_weights(child)]
        if children:
            blocks += children[::-1]
        elif _has_weights(named[part]):
            blocks.append((part, named[part]))
    return blocks


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def reinitialise(module: nn.Module) -> None:
    """torch's default initialisation for every submodule that has one (convolutions, linear
    layers, norms with their running statistics)."""
    for sub in module.modules():
        if hasattr(sub, 'reset_parameters'):
            sub.reset_parameters()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps over the pixels where either is non-zero; 0 when
    either is constant there (no ranking).

    Pixels both maps leave at zero are ties that say nothing about the weights: for a fixed
    candidate, a box-specific map is zero outside the candidate's receptive field in every
    model (93% of the demo model's ODAM maps), which alone would keep the correlation high.
    """
    a, b = np.ravel(a), np.ravel(b)
    either = (a > 0) | (b > 0)
    a, b = a[either], b[either]
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def parameter_randomisation(cam, image, seed: int = 0, head_only: bool = False) -> SanityResult:
    """Cascading randomisation of ``cam.model`` (a copy; the model itself is not changed) for
    the detections ``cam`` explains in ``image`` (a path or BGR array). ``head_only``: stop
    once the box head is random (enough for ``head_randomised``; a method that re-runs the
    detector pays a whole run per step)."""
    image = read_image(image)
    fixed = FixedCandidates(Detections(cam.select))
    proposals = {}
    with pinned_proposals(cam.model, proposals):
        original = cam(image, candidates=fixed)
    model = copy.deepcopy(cam.model)
    randomised = cam.with_model(model)
    steps, rows = [], []
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.simplefilter('ignore')  # random blocks leave some maps without gradient
        blocks = cascade_blocks(model)
        if head_only:
            head = blocks[0][0].split('.')[0]
            blocks = [(name, block) for name, block in blocks if name.split('.')[0] == head]
        for name, block in blocks:
            reinitialise(block)
            with pinned_proposals(model, proposals):
                result = randomised(image, candidates=fixed)
            steps.append(name)
            rows.append([spearman(a, b) for a, b in zip(original.cams, result.cams)])
    correlation = np.asarray(rows, np.float64).reshape(len(steps), len(original))
    return SanityResult(steps, correlation, original.detections)
