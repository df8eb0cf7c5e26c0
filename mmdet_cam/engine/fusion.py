"""Maps of several layer outputs (pyramid levels) fused into one map per box:
pytorch_grad_cam's multi-layer aggregation (ReLU, mean or max, min-max per map), or each box's
own outputs only (``'own'``)."""
from typing import List

import numpy as np
from pytorch_grad_cam.utils.image import scale_cam_image


def fuse(per_output: List[np.ndarray], how: str, own=None) -> np.ndarray:
    """pytorch_grad_cam's multi-layer aggregation (ReLU, mean or max, min-max per map) of
    ``[(K, H, W)]`` maps per output; ``'own'``: the mean over each box's own outputs (``own``:
    ``[K, layers]`` indices)."""
    fusion = Fusion(how, len(per_output[0]), per_output[0].shape[:0:-1], len(per_output), own)
    for index, maps in enumerate(per_output):
        fusion.add(index, np.arange(len(maps)), maps.copy())
    return fusion.result()


class Fusion:
    """:func:`fuse` one output at a time, for some boxes at a time, into one buffer: the
    same sums in the same order as over the stacked maps (an output that adds nothing to a
    box adds an exact zero there), without holding a map per output per box."""

    def __init__(self, how: str, count: int, size, outputs: int, own=None):
        self.how, self.outputs, self.own = how, outputs, own
        self.total = np.zeros((count, size[1], size[0]), np.float32)

    def add(self, index: int, rows: np.ndarray, maps: np.ndarray) -> None:
        """Output ``index``'s maps of boxes ``rows`` (overwritten: ReLU in place)."""
        np.maximum(maps, 0, out=maps)
        if self.how == 'own':
            mine = (self.own[rows] == index).any(axis=1)
            rows, maps = rows[mine], maps[mine]
        if self.how == 'max':
            self.total[rows] = np.maximum(self.total[rows], maps)
        else:
            self.total[rows] += maps

    def result(self) -> np.ndarray:
        if self.how == 'mean':
            self.total /= self.outputs
        elif self.how == 'own':
            self.total /= self.own.shape[1]
        return scale_cam_image(self.total)
