"""G-CAME (Nguyen et al., arXiv 2306.03400): Grad-CAM's weighted activations, each channel
multiplied by a Gaussian centred on the detection's own cell, so the map stays around the
prediction that is explained.

    map = sum_c w_c * G_c * A_c,   w_c = mean(g_c)
    G_c = a Gaussian in [0, 1] around the box's cell, sigma_c = |log |w_c|| / k * log(stride),
          k = floor(sqrt(h * w) - 1) / 6  (grid h x w, stride = input height / h)

The formulas for sigma and k are those of the authors' code (github.com/khanhnguyenuet/
GCAME). There the centre is the first non-zero gradient position of each channel; here it
is the cell where the box's gradient is largest (summed over channels), which is the
prediction's own cell for dense heads and does not depend on the scan order. Levels the
detection did not come from have a zero gradient and a zero map, as in the reference.
"""
import numpy as np
from pytorch_grad_cam.base_cam import BaseCAM

from ..registry import CAM_METHODS

_MIN_SIGMA = 1e-3  # in cells; |w_c| = 1 would give sigma = 0


def gaussian_masks(centres: np.ndarray, sigmas: np.ndarray, grid_shape) -> np.ndarray:
    """``[K, C, h, w]`` Gaussians min-max scaled to [0, 1]: ``centres`` ``[K, 2]`` (row,
    column), ``sigmas`` ``[K, C]`` in cells."""
    rows, cols = np.arange(grid_shape[0]), np.arange(grid_shape[1])
    dist2 = ((rows[None, :, None] - centres[:, 0, None, None]) ** 2
             + (cols[None, None, :] - centres[:, 1, None, None]) ** 2)  # [K, h, w]
    sigmas = np.maximum(sigmas, _MIN_SIGMA)[:, :, None, None]
    masks = np.exp(-dist2[:, None] / (2 * sigmas ** 2))
    low = masks.min(axis=(2, 3), keepdims=True)
    high = masks.max(axis=(2, 3), keepdims=True)
    return (masks - low) / np.maximum(high - low, 1e-12)


@CAM_METHODS.register_module(name='gcame')
class GCAME(BaseCAM):
    """``ReLU(sum_c mean(g_c) * Gaussian_c * A_c)`` per detection (the ReLU is the engine's)."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads,
                      eigen_smooth=False) -> np.ndarray:
        count, _, height, width = grads.shape
        weights = grads.mean(axis=(2, 3))  # [K, C]
        peak = np.abs(grads).sum(axis=1).reshape(count, -1).argmax(axis=1)
        centres = np.stack(np.unravel_index(peak, (height, width)), axis=1)
        stride = input_tensor.shape[-2] / height
        cells = np.floor(np.sqrt(height * width) - 1) / 6
        with np.errstate(divide='ignore'):
            sigmas = np.abs(np.log(np.abs(weights))) / max(cells, 1e-12) * np.log(max(stride, 1))
        sigmas = np.where(weights != 0, sigmas, _MIN_SIGMA)  # such channels add 0 anyway
        masks = gaussian_masks(centres, sigmas, (height, width))
        return (weights[:, :, None, None] * masks * activations).sum(axis=1)
