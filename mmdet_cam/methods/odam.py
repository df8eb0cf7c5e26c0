"""ODAM (Zhao & Chan, ICLR 2023, arXiv 2304.06354): the detection's own score, gradient times
activation, summed over channels, at the pyramid level that produced the box.

Per level this is HiResCAM's formula: the gradient is kept where it is (no channel pooling), so
the map of one box does not light up other objects that drive the same channels. The "own
level" comes from the engine: a detection's gradient reaches only the level (or RoI level)
that produced it, the other levels give all-zero maps, and the fused map is the own level's.
"""
import numpy as np
from pytorch_grad_cam.base_cam import BaseCAM

from ..registry import CAM_METHODS


@CAM_METHODS.register_module(name='odam')
class ODAM(BaseCAM):
    """``ReLU(sum_c dS/dA_c * A_c)`` per detection (the ReLU is the engine's)."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads,
                      eigen_smooth=False) -> np.ndarray:
        return (grads * activations).sum(axis=1)
