"""Maps scored against evidence known by construction: the pixels that decide a detection
(``shapes.make_evidence_image``'s cues). Maps and boolean masks only, as the other metrics.

* :func:`evidence_pointing`: the map's peak falls on the cue, dilated by a few pixels (a map
  made at a feature stride cannot hit a 9-pixel cue exactly).
* :func:`evidence_mass`: the share of the map's positive mass on the cue (CLEVR-XAI's relevance
  mass accuracy, Arras et al., Information Fusion 2022).
* :func:`rank_accuracy`: of the ``K`` highest pixels of the map, with ``K`` the cue's pixel
  count, the share on the cue (CLEVR-XAI's relevance rank accuracy).
"""
import cv2
import numpy as np

from .localization import peak_location


def dilated(evidence: np.ndarray, pixels: int = 3) -> np.ndarray:
    """``evidence`` grown by ``pixels`` in every direction."""
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(evidence.astype(np.uint8), kernel) > 0


def evidence_pointing(cam: np.ndarray, evidence: np.ndarray, tolerance: int = 3) -> bool:
    """Whether the map's peak lies on the cue grown by ``tolerance`` pixels."""
    x, y = peak_location(cam)
    return bool(dilated(evidence, tolerance)[y, x])


def evidence_mass(cam: np.ndarray, evidence: np.ndarray) -> float:
    """Share of the map's positive mass on the cue (0 for a map with none)."""
    positive = np.maximum(cam, 0)
    total = float(positive.sum())
    return float(positive[evidence].sum()) / total if total > 0 else 0.0


def rank_accuracy(cam: np.ndarray, evidence: np.ndarray) -> float:
    """Share of the map's ``K`` highest pixels that lie on the cue (``K``: its pixel count);
    ties at the K-th value are broken by position (stable)."""
    count = int(evidence.sum())
    if count == 0:
        return 0.0
    top = np.argsort(-cam.ravel(), kind='stable')[:count]
    return float(evidence.ravel()[top].mean())
