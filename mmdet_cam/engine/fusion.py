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
    low, high = _min_max(image)
    image -= low
    image /= 1e-7 + (high - low)
    return image


def scaled(image: np.ndarray, size, out: np.ndarray) -> np.ndarray:
    """``scale_cam_image(image[None], size)[0]``, written into ``out`` (float32, of ``size``
    ``(w, h)``) and returned; ``image`` is normalised in place."""
    return cv2.resize(np.asarray(normalise(image), np.float32), tuple(size), dst=out)


def _min_max(image: np.ndarray) -> Tuple[np.float32, np.float32]:
    low, high, _, _ = cv2.minMaxLoc(image)
    return np.float32(low), np.float32(high)


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
        total, divisor = self.summed(row, maps, resize)
        if divisor != 1:
            total /= divisor
        return normalise(total)

    def summed(self, row: int, maps: Sequence[Tuple[int, np.ndarray]],
               resize: bool = True) -> Tuple[np.ndarray, int]:
        """:meth:`fused` before its last steps: ``(total, divisor)``, the fused map being
        ``normalise(total / divisor)``."""
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
            return total, self.outputs
        return total, self.own.shape[1] if self.how == 'own' else 1


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

    def onto(self, row: int, height: int, width: int, out: np.ndarray) -> None:
        """``scaled(self[row][:height, :width], out's size, out)``: box ``row``'s fused map
        cropped, min-max scaled and resized into ``out``, in fewer passes over the fused size.

        Both min-max steps and the mean's division are affine, so they fold into one:
        with ``u = total / n``, ``y = (u - min u) / (1e-7 + max u - min u)`` and the crop's
        ``(y - min y) / (1e-7 + max y - min y)`` is ``(total - c) * s`` where ``c`` is the
        crop's minimum of ``total`` and ``s = 1 / (n * 1e-7 * d + crop's max - c)``, ``d`` the
        first step's divisor. The crop's minimum is subtracted before the resize, so that
        the resize's rounding is relative to the map's range, not its offset."""
        total, divisor = self.fusion.summed(row, self.maps[row])
        crop = total[:height, :width]
        low, high = _min_max(crop)
        full_low, full_high = low, high
        for rest in (total[height:], total[:height, width:]):
            if rest.size:
                rest_low, rest_high = _min_max(rest)
                full_low, full_high = min(full_low, rest_low), max(full_high, rest_high)
        first_divisor = np.float32(1e-7) + (full_high - full_low) / np.float32(divisor)
        scale = np.float32(1) / (np.float32(divisor * 1e-7) * first_divisor + (high - low))
        if crop.shape == out.shape:
            np.subtract(crop, low, out=out)
        else:
            crop -= low
            cv2.resize(crop, out.shape[::-1], dst=out)
        out *= scale

    scratch = True  # the maps may be overwritten (each is made again when asked for)
