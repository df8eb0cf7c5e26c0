"""Overlays of per-detection maps, with boxes drawn in mmdet's style.

Takes maps, boxes and images (BGR, as mmcv reads them); never calls the model.
"""
import contextlib
from typing import Optional, Sequence

import cv2
import numpy as np
from mmdet.structures import DetDataSample
from mmdet.visualization import DetLocalVisualizer
from mmdet.visualization.palette import get_palette
from mmengine.dist import utils as dist_utils
from mmengine.structures import InstanceData
from pytorch_grad_cam.utils.image import show_cam_on_image

from ..boxes import box_mask


def renormalize_in_boxes(cams: np.ndarray, bboxes: np.ndarray) -> np.ndarray:
    """Each map min-max normalised inside its own box and zero outside it."""
    out = np.zeros_like(cams)
    for i, (cam, box) in enumerate(zip(cams, bboxes)):
        inside = box_mask(cam.shape, box)
        if inside.any():
            values = cam[inside]
            span = values.max() - values.min()
            out[i][inside] = (values - values.min()) / span if span > 0 else 0
    return out


def class_name(names, label: int) -> str:
    """The name of class ``label`` in ``names``, or the label itself where they end."""
    return names[label] if label < len(names) else str(label)


def fuse_boxes(cams: np.ndarray, shape) -> np.ndarray:
    """One map for the whole image: the maximum over the detections' maps."""
    return cams.max(axis=0) if len(cams) else np.zeros(shape, np.float32)


def heatmap(cam: np.ndarray) -> np.ndarray:
    """The map alone as a BGR JET image (what ``overlay`` blends over the image)."""
    return overlay(np.zeros(cam.shape + (3,), np.uint8), cam, alpha=1.0)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The map as a JET heatmap over the BGR ``image``; ``alpha`` is the heatmap's opacity."""
    rgb = np.ascontiguousarray(image[..., ::-1], dtype=np.float32) / 255
    blended = show_cam_on_image(rgb, cam, use_rgb=True, image_weight=1 - alpha)
    return np.ascontiguousarray(blended[..., ::-1])


@contextlib.contextmanager
def _drawing_on_every_rank():
    """mmengine's visualizer draws only in the main process (``@master_only``), which suits
    one shared picture; here every process of a distributed test run draws its own images."""
    original = dist_utils.is_main_process
    dist_utils.is_main_process = lambda group=None: True
    try:
        yield
    finally:
        dist_utils.is_main_process = original


class BoxDrawer:
    """Draws detections with mmdet's ``DetLocalVisualizer`` (class names, scores, the
    dataset palette from the model's ``dataset_meta``)."""

    def __init__(self, dataset_meta: dict, line_width: int = 2):
        self.visualizer = DetLocalVisualizer(
            name=f'mmdet_cam_{id(self)}', line_width=line_width)
        with _drawing_on_every_rank():
            self.visualizer.dataset_meta = dataset_meta

    def draw(self, image: np.ndarray, detections: InstanceData,
             keep: Optional[Sequence[int]] = None) -> np.ndarray:
        """``image`` (BGR) with the detections (or those at ``keep``) drawn on it; an instance
        segmentor's masks as outlines in their class colour (mmdet fills them, which would
        hide the map)."""
        if keep is not None:
            detections = detections[list(keep)]
        boxes = InstanceData(**{key: detections.get(key) for key in ('bboxes', 'labels', 'scores')
                                if key in detections})
        with _drawing_on_every_rank():
            self.visualizer.add_datasample(
                'cam', np.ascontiguousarray(image[..., ::-1]),
                DetDataSample(pred_instances=boxes), draw_gt=False, show=False,
                pred_score_thr=0)
            drawn = np.ascontiguousarray(self.visualizer.get_image()[..., ::-1])
        if 'masks' in detections and len(detections):
            self._outline(drawn, np.asarray(detections.masks, dtype=np.uint8),
                          detections.labels.tolist())
        return drawn

    def _outline(self, image: np.ndarray, masks: np.ndarray, labels: Sequence[int]) -> None:
        palette = get_palette(self.visualizer.dataset_meta.get('palette') or 'random',
                              max(labels) + 1)
        for mask, label in zip(masks, labels):
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(image, contours, -1, tuple(int(c) for c in palette[label][::-1]),
                             2, cv2.LINE_AA)
