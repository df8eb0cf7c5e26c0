"""How a ``DetCAMResult`` shows itself in Jupyter: the overlay of every map with the boxes,
then one thumbnail per detection (its map over its box and surroundings) with its class and
score, as self-contained HTML (images inline as PNG: no files, no extra dependency)."""
import base64
import html

import cv2
import numpy as np

from .overlays import BoxDrawer, class_name, fuse_boxes, overlay

THUMBNAIL_HEIGHT = 128


def png(image_bgr: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode('.png', image_bgr)
    if not ok:
        raise ValueError('the image could not be encoded as PNG')
    return encoded.tobytes()


def _drawer(result) -> BoxDrawer:
    return BoxDrawer(result.dataset_meta or {})


def result_png(result) -> bytes:
    """The overlay of every map (their maximum) with the boxes drawn, as PNG."""
    heat = overlay(result.image, fuse_boxes(result.cams, result.image.shape[:2]))
    return png(_drawer(result).draw(heat, result.detections))


def thumbnail(result, k: int) -> np.ndarray:
    """Detection ``k``'s map over its box, with a quarter of the box's size around it."""
    height, width = result.image.shape[:2]
    x1, y1, x2, y2 = result.detections.bboxes[k].tolist()
    dx, dy = (x2 - x1) / 4, (y2 - y1) / 4
    left, top = int(max(x1 - dx, 0)), int(max(y1 - dy, 0))
    right, bottom = int(min(np.ceil(x2 + dx), width)), int(min(np.ceil(y2 + dy), height))
    crop = overlay(result.image, result.cams[k])[top:max(bottom, top + 1),
                                                 left:max(right, left + 1)]
    scale = THUMBNAIL_HEIGHT / crop.shape[0]
    return cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), THUMBNAIL_HEIGHT))


def result_html(result) -> str:
    """The overlay and the per-detection thumbnails, as HTML with inline PNG images."""
    names = list((result.dataset_meta or {}).get('classes') or ())

    def image_tag(data: bytes, alt: str, style: str = '') -> str:
        encoded = base64.b64encode(data).decode('ascii')
        return (f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}" '
                f'style="{style}">')

    cards = []
    for k, (label, score) in enumerate(zip(result.detections.labels.tolist(),
                                           result.detections.scores.tolist())):
        caption = f'{k}: {class_name(names, label)} {score:.2f}'
        cards.append(f'<figure style="margin:0"><figcaption>{html.escape(caption)}'
                     f'</figcaption>{image_tag(png(thumbnail(result, k)), caption)}</figure>')
    count = len(result)
    return (f'<div class="mmdet-cam-result"><p>{count} detection{"" if count == 1 else "s"}'
            f'</p>{image_tag(result_png(result), "overlay", "max-width:100%")}'
            f'<div style="display:flex;flex-wrap:wrap;gap:8px">{"".join(cards)}</div></div>')
