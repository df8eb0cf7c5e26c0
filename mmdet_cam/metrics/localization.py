"""Localisation figures of per-detection maps. Maps, boxes and images only: nothing here
calls a model or knows which method made a map.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the map's image; a pixel ``(y, x)`` is inside when
``x1 <= x + 0.5 <= x2`` and ``y1 <= y + 0.5 <= y2`` (its centre is in the box).
"""
from typing import Sequence, Tuple

import numpy as np

from ..boxes import box_mask


def peak_location(cam: np.ndarray) -> Tuple[int, int]:
    """``(x, y)`` pixel of the map's maximum."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(x), int(y)


def pointing_hit(cam: np.ndarray, box: Sequence[float]) -> bool:
    """Pointing game: does the map's peak fall inside ``box``?"""
    return pointing_hit_mask(cam, box_mask(cam.shape, box))


def energy_in_box(cam: np.ndarray, box: Sequence[float]) -> float:
    """Energy pointing game: share of the map's total mass inside ``box`` (0 for an empty map)."""
    return energy_in_mask(cam, box_mask(cam.shape, box))


def pointing_hit_mask(cam: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game against a boolean mask of the map's size (an instance's pixels)."""
    x, y = peak_location(cam)
    return bool(mask[y, x])


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total mass on the pixels of a boolean ``mask`` (0 for an empty map)."""
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else 0.0


def box_area_share(shape: Tuple[int, int], box: Sequence[float]) -> float:
    """Chance level of the (energy) pointing game: the box's share of the image."""
    return float(box_mask(shape, box).mean())
