"""Network-input maps -> original-image maps.

mmdet's test pipeline resizes the image (keeping its aspect ratio or not) and pads it at the
bottom/right (``Pad`` in the pipeline, ``pad_size_divisor`` in the data preprocessor). A map
on the padded input is cropped to the resized image first and only then resized to the
original size; resizing the padded map directly shifts every map off its box.
"""
from typing import Sequence, Tuple

import numpy as np

from .fusion import scaled


def resized_image_size(metainfo: dict) -> Tuple[int, int]:
    """``(h, w)`` of the resized, unpadded image inside the network input.

    Derived from ``ori_shape * scale_factor`` because some pipelines (e.g. YOLOX's
    ``Pad(pad_to_square=True)``) overwrite ``img_shape`` with the padded size.
    """
    ori_h, ori_w = metainfo['ori_shape'][:2]
    scale_w, scale_h = metainfo.get('scale_factor', (1.0, 1.0))[:2]
    img_h, img_w = metainfo['img_shape'][:2]
    return min(img_h, int(round(ori_h * scale_h))), min(img_w, int(round(ori_w * scale_w)))


def to_original_image(maps: Sequence[np.ndarray], metainfo: dict) -> np.ndarray:
    """Crop ``(H_in, W_in)`` maps to the resized image, min-max normalise each, and resize
    to ``ori_shape`` (pytorch_grad_cam's ``scale_cam_image``): returns float32
    ``(N, H_ori, W_ori)`` in [0, 1]."""
    ori_h, ori_w = metainfo['ori_shape'][:2]
    out = np.empty((len(maps), ori_h, ori_w), np.float32)
    h, w = resized_image_size(metainfo)
    for image, into in zip(maps, out):
        into[...] = scaled(image[:h, :w].copy(), (ori_w, ori_h), into)
    return out
