"""Maps of several layer outputs (pyramid levels) fused into one map per box:
pytorch_grad_cam's multi-layer aggregation (ReLU, mean or max, min-max per map), or each box's
own outputs only (``'own'``).

The steps of pytorch_grad_cam's ``scale_cam_image`` (minus the minimum, over ``1e-7`` plus the
new maximum, ``cv2.resize``) are repeated here one map at a time, in place or into a given
array: the library stacks every map of a call into a new array, and at 100 boxes of an 800 px
input those arrays are hundreds of MB of fresh memory per call (tested equal to the library).
"""
from typing import List, Sequence

import cv2
import numpy as np


def normalise(image: np.ndarray) -> np.ndarray:
    """``scale_cam_image``'s min-max step on one map, in place."""
    image -= np.min(image)
    image /= 1e-7 + np.max(image)
    return image


def scaled(image: np.ndarray, size, out: np.ndarray) -> np.ndarray:
    """``scale_cam_image(image[None], size)[0]``, written into ``out`` (float32, of ``size``
    ``(w, h)``) and returned; ``image`` is normalised in place."""
    return cv2.resize(np.asarray(normalise(image), np.float32), tuple(size), dst=out)


def fuse(per_output: List[np.ndarray], how: str, own=None) -> List[np.ndarray]:
    """pytorch_grad_cam's multi-layer aggregation (ReLU, mean or max, min-max per map) of
    ``[(K, H, W)]`` maps per output; ``'own'``: the mean over each box's own outputs (``own``:
    ``[K, layers]`` indices). One ``(H, W)`` map per box."""
    fusion = Fusion(how, len(per_output[0]), per_output[0].shape[:0:-1], len(per_output), own)
    for index, maps in enumerate(per_output):
        fusion.add(index, np.arange(len(maps)), maps.copy())
    return fusion.result()


class Fusion:
    """:func:`fuse` one output at a time, for some boxes at a time, into one map per box: the
    same sums in the same order as over the stacked maps (an output that adds nothing to a
    box adds an exact zero there), without holding a map per output per box."""

    def __init__(self, how: str, count: int, size, outputs: int, own=None):
        self.how, self.outputs, self.own, self.size = how, outputs, own, tuple(size)
        # one array per box: freed maps of a box's size are reused by the allocator, while an
        # array for all boxes at once would be fresh (page-faulted) memory every call
        self.total = [np.zeros((size[1], size[0]), np.float32) for _ in range(count)]
        self._scratch = np.empty((size[1], size[0]), np.float32)

    def add(self, index: int, rows: np.ndarray, maps: Sequence[np.ndarray]) -> None:
        """Output ``index``'s maps of boxes ``rows`` at the fused size (overwritten: ReLU in
        place)."""
        for row, image in zip(*self._mine(index, rows, maps)):
            self._add(row, np.maximum(image, 0, out=image))

    def add_unscaled(self, index: int, rows: np.ndarray, maps: np.ndarray) -> None:
        """Output ``index``'s raw maps of boxes ``rows`` at the output's own size: ReLU,
        ``scale_cam_image`` to the fused size, then as :meth:`add` (``maps`` overwritten)."""
        for row, image in zip(*self._mine(index, rows, maps)):
            resized = scaled(np.maximum(image, 0, out=image), self.size, self._scratch)
            self._add(row, np.maximum(resized, 0, out=resized))

    def _mine(self, index: int, rows: np.ndarray, maps):
        if self.how == 'own':
            mine = (self.own[rows] == index).any(axis=1)
            return rows[mine], [m for m, keep in zip(maps, mine) if keep]
        return rows, maps

    def _add(self, row: int, image: np.ndarray) -> None:
        if self.how == 'max':
            np.maximum(self.total[row], image, out=self.total[row])
        else:
            self.total[row] += image

    def result(self) -> List[np.ndarray]:
        """The fused, min-max normalised map of each box (the buffers themselves)."""
        for image in self.total:
            if self.how == 'mean':
                image /= self.outputs
            elif self.how == 'own':
                image /= self.own.shape[1]
            normalise(image)
        return self.total
