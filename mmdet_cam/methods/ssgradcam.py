"""Spatial Sensitive Grad-CAM and Grad-CAM++ (Yamauchi & Ishikawa, ICIP 2022; Yamauchi,
CVPR-W 2024): Grad-CAM(++)'s channel weights times a *space map*, the gradient's magnitude
normalised per channel, so that a box's map keeps to where its own gradient is.

    SSGrad-CAM    map = sum_c w_c * S_c * A_c,  w_c = mean(g_c),  S_c = |g_c| / max |g_c|
    SSGrad-CAM++  the same with Grad-CAM++'s weights, every sum of which (gradients and
                  activations) is taken inside the detection's box on the feature grid

The gradient pipeline passes one :class:`~mmdet_cam.engine.layer_maps.BoxTarget` per map as
``targets``; the ReLU and the resize are the engine's.
"""
from typing import Optional, Sequence

import numpy as np
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus

from ..boxes import box_mask
from ..registry import CAM_METHODS

_EPS = 1e-7


def space_map(grads: np.ndarray) -> np.ndarray:
    """``|g| / max |g|`` over each channel's spatial positions (0 where a channel has none)."""
    magnitude = np.abs(grads)
    peak = magnitude.max(axis=(2, 3), keepdims=True)
    return np.where(peak > 0, magnitude / np.maximum(peak, _EPS), 0.0)


def box_masks(targets: Optional[Sequence], input_shape, grid_shape) -> np.ndarray:
    """``[K, 1, h, w]`` masks of the feature cells whose centres lie in each target's box
    (``bbox`` in network-input pixels); all ones without targets or for an empty box."""
    count = len(targets) if targets else 1
    masks = np.ones((count, 1) + tuple(grid_shape), np.float32)
    if not targets:
        return masks
    cell = (input_shape[-2] / grid_shape[0], input_shape[-1] / grid_shape[1])
    for k, target in enumerate(targets):
        inside = box_mask(tuple(grid_shape), target.bbox, cell)
        if inside.any():
            masks[k, 0] = inside
    return masks


@CAM_METHODS.register_module(name='ssgradcam')
class SSGradCAM(BaseCAM):
    """Grad-CAM's channel weights times the space map."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads,
                      eigen_smooth=False) -> np.ndarray:
        weights = grads.mean(axis=(2, 3), keepdims=True)
        return (weights * space_map(grads) * activations).sum(axis=1)


@CAM_METHODS.register_module(name='ssgradcam++')
class SSGradCAMPlusPlus(BaseCAM):
    """Grad-CAM++'s channel weights, computed inside the detection's box, times the space
    map."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads,
                      eigen_smooth=False) -> np.ndarray:
        inside = box_masks(targets, input_tensor.shape, grads.shape[2:])
        # the library's Grad-CAM++ weights, on the gradients and activations inside the box
        weights = GradCAMPlusPlus.get_cam_weights(self, input_tensor, target_layer, targets,
                                                  activations * inside, grads * inside)
        return (weights[:, :, None, None] * space_map(grads) * activations).sum(axis=1)
