"""Network-input maps -> original-image maps.

mmdet's test pipeline resizes the image (keeping its aspect ratio or not) and pads it at the
bottom/right (``Pad`` in the pipeline, ``pad_size_divisor`` in the data preprocessor). A map
on the padded input is cropped to the resized image first and only then resized to the
original size; resizing the padded map directly shifts every map off its box.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence, Tuple

import numpy as np

from .fusion import scaled

WORKERS = min(4, os.cpu_count() or 1)  # threads mapping boxes' maps onto the image


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

    scratch = getattr(maps, 'scratch', False)  # maps we may normalise in place

    def one(k: int) -> None:  # maps[k]: valid until this thread's next maps[...]
        if hasattr(maps, 'onto'):  # fused maps scaled on the way (fusion.FusedMaps.onto)
            maps.onto(k, h, w, out[k])
            return
        crop = maps[k][:h, :w]
        into = out[k]
        result = scaled(crop if scratch else crop.copy(), (ori_w, ori_h), into)
        if result.ctypes.data != into.ctypes.data:
            into[...] = result
    # numpy and OpenCV release the GIL on whole maps: the boxes share the cores
    with ThreadPoolExecutor(min(len(maps), WORKERS) or 1) as pool:
        list(pool.map(one, range(len(maps))))
    return out
