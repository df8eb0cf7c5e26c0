"""Where a detection's map lies relative to its box, and a class's average of that over many
detections (the evidence atlas). Arrays in, numbers out.

A detection's *box frame* is its box as the unit square with ``margin`` box sizes around it on
each side, sampled at ``size x size``: the box is the middle ``1 / (1 + 2 margin)`` of the
frame, whatever its size and aspect ratio. Pixels of the frame outside the image carry no map:
they are marked invalid, so that an average over detections counts only the detections that
saw that pixel (a box at the border does not pull its class's map toward zero there).
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..boxes import box_mask


def box_frame(cam: np.ndarray, box: Sequence[float], size: int = 96,
              margin: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """``cam`` (``H x W``) resampled into ``box``'s frame: ``(frame, valid)``, both
    ``size x size`` (float32 map, boolean inside-the-image)."""
    x1, y1, x2, y2 = map(float, box)
    width, height = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    left, top = x1 - margin * width, y1 - margin * height
    scale_x = (1 + 2 * margin) * width / size  # image pixels per frame pixel
    scale_y = (1 + 2 * margin) * height / size
    # frame pixel (u, v) (centre at u + 0.5) samples the image at left + (u + 0.5) * scale
    to_image = np.array([[scale_x, 0, left + 0.5 * scale_x - 0.5],
                         [0, scale_y, top + 0.5 * scale_y - 0.5]], np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    # replicated, so that frame pixels just inside the image are not blended with a zero
    # border; those outside it are marked invalid below
    frame = cv2.warpAffine(cam.astype(np.float32), to_image, (size, size), flags=flags,
                           borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.ones(cam.shape, np.float32), to_image, (size, size),
                            flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return frame, inside > 0.5


def frame_box(size: int = 96, margin: float = 1.0) -> Tuple[int, int, int, int]:
    """The box's pixels in its frame: ``(x1, y1, x2, y2)``, end exclusive."""
    start = round(size * margin / (1 + 2 * margin))
    return start, start, size - start, size - start


def mass_shares(cam: np.ndarray, box: Sequence[float], margin: float = 1.0) -> Optional[dict]:
    """Shares of ``cam``'s positive mass ``inside`` the box, in the ``ring`` of ``margin`` box
    sizes just outside it, ``farther`` out, and ``outside`` (ring + farther): over the whole
    map, at the image's pixels. None for a map without positive mass."""
    positive = np.clip(cam, 0, None)
    total = float(positive.sum())
    if total <= 0:
        return None
    x1, y1, x2, y2 = map(float, box)
    width, height = x2 - x1, y2 - y1
    framed = [x1 - margin * width, y1 - margin * height, x2 + margin * width,
              y2 + margin * height]
    inside = float(positive[box_mask(cam.shape, box)].sum()) / total
    in_frame = float(positive[box_mask(cam.shape, framed)].sum()) / total
    return dict(inside=inside, ring=max(in_frame - inside, 0.0),
                farther=max(1 - in_frame, 0.0), outside=max(1 - inside, 0.0))


SHARES = ('inside', 'ring', 'farther', 'outside')


@dataclass
class ClassAtlas:
    """One class's running atlas: the sum of its detections' frames and of their validity,
    and the sums of their mass shares."""
    size: int = 96
    detections: int = 0
    flat: int = 0  # detections whose map has no positive mass (no shares)
    frame_sum: Optional[np.ndarray] = None
    seen: Optional[np.ndarray] = None
    share_sums: Dict[str, float] = field(default_factory=lambda: dict.fromkeys(SHARES, 0.0))

    def add(self, cam: np.ndarray, box: Sequence[float], margin: float = 1.0) -> None:
        """One detection: its map ``cam`` (the whole image's) and its box."""
        self.add_part(*box_frame(cam, box, self.size, margin), mass_shares(cam, box, margin))

    def add_part(self, frame: np.ndarray, valid: np.ndarray, shares: Optional[dict]) -> None:
        """One detection as :func:`box_frame` and :func:`mass_shares` gave it."""
        if self.frame_sum is None:
            self.frame_sum = np.zeros((self.size, self.size), np.float64)
            self.seen = np.zeros((self.size, self.size), np.int64)
        self.frame_sum += np.where(valid, frame, 0)  # unseen pixels add nothing
        self.seen += valid
        self.detections += 1
        if shares is None:
            self.flat += 1
            return
        for key in SHARES:
            self.share_sums[key] += shares[key]

    def merge(self, other: 'ClassAtlas') -> None:
        """Add another process's (or run's) atlas of the same class."""
        if other.frame_sum is not None:
            if self.frame_sum is None:
                self.frame_sum, self.seen = other.frame_sum.copy(), other.seen.copy()
            else:
                self.frame_sum += other.frame_sum
                self.seen += other.seen
        self.detections += other.detections
        self.flat += other.flat
        for key in SHARES:
            self.share_sums[key] += other.share_sums[key]

    def mean_map(self) -> Optional[np.ndarray]:
        """The class's mean map in the box frame (each pixel over the detections whose frame
        saw it; 0 where none did), or None without detections."""
        if self.frame_sum is None:
            return None
        return (self.frame_sum / np.maximum(self.seen, 1)).astype(np.float32)

    def summary(self) -> dict:
        """``detections``, ``flat`` and the mean mass shares (None without a scored map)."""
        scored = self.detections - self.flat
        return dict(detections=self.detections, flat=self.flat,
                    **{key: (round(self.share_sums[key] / scored, 4) if scored else None)
                       for key in SHARES})
