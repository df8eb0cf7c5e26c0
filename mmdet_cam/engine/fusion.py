"""Maps of several layer outputs (pyramid levels) fused into one map per box:
pytorch_grad_cam's multi-layer aggregation (ReLU, mean or max, min-max per map), or each box's
own outputs only (``'own'``).

The steps of pytorch_grad_cam's ``scale_cam_image`` (minus the minimum, over ``1e-7`` plus the
new maximum, ``cv2.resize``) are repeated here one map at a time, in place or into a given
array: the library stacks every map of a call into a new array, and at 100 boxes of an 800 px
input those arrays are hundreds of MB of fresh memory per call (tested equal to the library).
"""
import threading
from typing import List, Sequence, Tuple

import cv2
import numpy as np


def normalise(image: np.ndarray) -> np.ndarray:
    """``scale_cam_image``'s min-max step on one map, in place (float32). The minimum and
    maximum come from one pass (OpenCV), and the new maximum is ``max - min`` in float32,
    which is what the maximum of ``image - min`` is (rounding is monotone): the same numbers
    in two passes fewer."""
    if image.dtype != np.float32 or image.ndim != 2:
        image -= np.min(image)
        image /= 1e-7 + np.max(image)
        return image
    low, high, _, _ = cv2.minMaxLoc(image)
    low = np.float32(low)
    image -= low
    image /= 1e-7 + (np.float32(high) - low)
    return image


def scaled(image: np.ndarray, size, out: np.ndarray) -> np.ndarray:
    """``scale_cam_image(image[None], size)[0]``, written into ``out`` (float32, of ``size``
    ``(w, h)``) and returned; ``image`` is normalised in place."""
    return cv2.resize(np.asarray(normalise(image), np.float32), tuple(size), dst=out)


def fuse(per_output: List[np.ndarray], how: str, own=None) -> np.ndarray:
    """pytorch_grad_cam's multi-layer aggregation (ReLU, mean or max, min-max per map) of
    ``[(K, H, W)]`` maps per output; ``'own'``: the mean over each box's own outputs (``own``:
    ``[K, layers]`` indices). Returns ``(K, H, W)``."""
    count, size = len(per_output[0]), per_output[0].shape[:0:-1]
    fusion = Fusion(how, size, len(per_output), own)
    out = np.empty((count, size[1], size[0]), np.float32)
    for row in range(count):
        out[row] = fusion.fused(row, [(i, maps[row]) for i, maps in enumerate(per_output)],
                                resize=False)
    return out


class Fusion:
    """:func:`fuse` for one box at a time, from each output's raw map at the output's own size
    (ReLU, ``scale_cam_image`` to the fused size, ReLU, sum or maximum, min-max): the same
    operations in the same order as over stacked maps, in two buffers of the fused size that
    every box reuses."""

    def __init__(self, how: str, size, outputs: int, own=None):
        self.how, self.outputs, self.own, self.size = how, outputs, own, tuple(size)
        self._buffers = threading.local()  # each thread its own pair (see FusedMaps)

    def _pair(self) -> Tuple[np.ndarray, np.ndarray]:
        if not hasattr(self._buffers, 'pair'):
            shape = (self.size[1], self.size[0])
            self._buffers.pair = np.empty(shape, np.float32), np.empty(shape, np.float32)
        return self._buffers.pair

    def fused(self, row: int, maps: Sequence[Tuple[int, np.ndarray]],
              resize: bool = True) -> np.ndarray:
        """Box ``row``'s fused map from ``(output index, map)`` pairs (outputs left out add
        nothing); with ``resize``, raw maps that are ReLU'd and scaled here (and overwritten),
        else maps already at the fused size (left as they are). The result is a buffer
        that the next call in the same thread overwrites."""
        total, scratch = self._pair()
        first = True
        for index, image in maps:
            if self.how == 'own' and not (self.own[row] == index).any():
                continue
            if resize:
                # the second ReLU is left out: a min-max scaled map, resized by linear
                # interpolation (weights >= 0), has no negative value
                image = scaled(np.maximum(image, 0, out=image), self.size,
                               total if first else scratch)
            if first:  # what 0 + ReLU(image) and max(0, ReLU(image)) are
                if image is not total:
                    np.maximum(image, 0, out=total)
                first = False
                continue
            if not resize:
                image = np.maximum(image, 0, out=scratch)
            if self.how == 'max':
                np.maximum(total, image, out=total)
            else:
                total += image
        if first:
            total.fill(0)
        if self.how == 'mean':
            total /= self.outputs
        elif self.how == 'own':
            total /= self.own.shape[1]
        return normalise(total)


class FusedMaps:
    """The fused maps of boxes, made when asked for: ``maps[k]`` lists box ``k``'s ``(output
    index, raw map)`` pairs. ``fused_maps[k]`` is valid until the same thread asks for another
    (one buffer per thread serves every box), so that 100 boxes at an 800 px input never
    hold 100 maps of the input's size (see :func:`~.geometry.to_original_image`, their
    consumer)."""

    def __init__(self, fusion: Fusion, maps: List[List[Tuple[int, np.ndarray]]]):
        self.fusion, self.maps = fusion, maps

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, row: int) -> np.ndarray:
        return self.fusion.fused(row, self.maps[row])

    scratch = True  # the maps may be overwritten (each is made again when asked for)
