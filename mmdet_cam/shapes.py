"""A synthetic detection dataset: squares, circles and triangles on textured backgrounds.

Deterministic from a seed. Each image holds 1-6 shapes of varied size, colour and position,
some touching or overlapping, with COCO-format boxes and masks (the visible outline as polygons;
RLE for the few shapes with another shape inside them, which polygons cannot hold). It is what
the shipped demo detectors were trained on, and what tests and benchmarks draw fresh images from.

``kind='evidence'``: scenes whose deciding pixels are known (:func:`make_evidence_image`): an
object's class is set only by a small cue, returned per object as ``evidence``.

    python tools/make_shapes_dataset.py data/shapes --train 800 --val 200
    python tools/make_shapes_dataset.py data/evidence --kind evidence
"""
import json
from pathlib import Path
from typing import Collection, Dict, List, Tuple

import cv2
import mmcv
import numpy as np

CLASSES = ('square', 'circle', 'triangle')
PALETTE = [(220, 20, 60), (0, 130, 230), (250, 170, 30)]
METAINFO = dict(classes=CLASSES, palette=PALETTE)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Colour gradient + blurred blotches + stripes + pixel noise."""
    corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.float32)
    image = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    blotches = rng.normal(0, 40, size=(height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
    image += cv2.resize(blotches, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(0, 6)):
        p1 = tuple(int(v) for v in rng.integers(0, (width, height)))
        p2 = tuple(int(v) for v in rng.integers(0, (width, height)))
        colour = tuple(float(c) for c in rng.integers(0, 256, 3))
        cv2.line(image, p1, p2, colour, int(rng.integers(1, 4)))
    image += rng.normal(0, 12, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _polygon(label: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Outline of a shape as an (N, 2) float polygon."""
    if CLASSES[label] == 'circle':
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        return np.stack([cx + size / 2 * np.cos(t), cy + size / 2 * np.sin(t)], 1)
    corners = 4 if CLASSES[label] == 'square' else 3
    radius = size / 2 * (np.sqrt(2) if corners == 4 else 1.15)
    t = angle + np.arange(corners) * 2 * np.pi / corners
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)


def make_image(rng: np.random.Generator, height: int = 240, width: int = 320,
               kind: str = 'shapes') -> Tuple[np.ndarray, List[Dict]]:
    """One BGR image and its objects: ``dict(label, bbox=[x1, y1, x2, y2], mask, segmentation)``:
    the visible pixels of each shape as a boolean mask and as COCO polygons
    (``[[x1, y1, x2, y2, ...], ...]``, one per visible piece, original-image pixels).
    ``kind='evidence'``: a scene of :func:`make_evidence_image` (objects also carry
    ``evidence``)."""
    if kind == 'evidence':
        return make_evidence_image(rng, height, width)
    if kind != 'shapes':
        raise ValueError(f"kind must be 'shapes' or 'evidence', got {kind!r}")
    image = _background(rng, height, width)
    objects = []
    for _ in range(int(rng.integers(1, 7))):
        label = int(rng.integers(len(CLASSES)))
        size = float(rng.uniform(18, 0.4 * min(height, width)))
        if objects and rng.random() < 0.3:  # touch or overlap an earlier shape
            near = objects[int(rng.integers(len(objects)))]['bbox']
            cx = (near[0] + near[2]) / 2 + rng.choice([-1, 1]) * (near[2] - near[0] + size) / 2.2
            cy = (near[1] + near[3]) / 2 + rng.uniform(-size / 3, size / 3)
        else:
            cx = rng.uniform(size / 2, width - size / 2)
            cy = rng.uniform(size / 2, height - size / 2)
        polygon = _polygon(label, cx, cy, size, float(rng.uniform(0, 2 * np.pi)))
        polygon[:, 0] = polygon[:, 0].clip(0, width - 1)
        polygon[:, 1] = polygon[:, 1].clip(0, height - 1)
        x1, y1 = polygon.min(0)
        x2, y2 = polygon.max(0)
        if min(x2 - x1, y2 - y1) < 8:  # mostly outside the image
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.fillPoly(image, [np.round(polygon).astype(np.int32)], colour, cv2.LINE_AA)
        objects.append(dict(label=label, bbox=[float(x1), float(y1), float(x2 + 1),
                                               float(y2 + 1)], polygon=polygon))
    return image, _visible(objects, height, width)


# Evidence scenes: an object's class is set by a small cue alone (a cross or a ring inside the
# object, off its centre, or a tag beside it, outside its box); silhouette, size and colour are
# drawn independently of the class. Cues on the background and objects without a cue are
# distractors, neither of which is an object of any class.
EVIDENCE_CLASSES = ('cross', 'ring', 'tagged')
EVIDENCE_PALETTE = [(220, 20, 60), (0, 130, 230), (20, 160, 60)]
EVIDENCE_METAINFO = dict(classes=EVIDENCE_CLASSES, palette=EVIDENCE_PALETTE)
CUE_SIZE = 9  # pixels across a cue
_OUTSIDE = 2  # the class whose cue lies outside its box


def _draw_cue(canvas: np.ndarray, cue: int, cx: int, cy: int, colour) -> None:
    """Cue ``cue`` (an ``EVIDENCE_CLASSES`` index) centred at ``(cx, cy)`` on ``canvas``."""
    half = CUE_SIZE // 2
    if EVIDENCE_CLASSES[cue] == 'cross':
        cv2.line(canvas, (cx - half, cy), (cx + half, cy), colour, 2)
        cv2.line(canvas, (cx, cy - half), (cx, cy + half), colour, 2)
    elif EVIDENCE_CLASSES[cue] == 'ring':
        cv2.circle(canvas, (cx, cy), half - 1, colour, 2)
    else:
        cv2.rectangle(canvas, (cx - half, cy - half), (cx + half, cy + half), colour, -1)


def _cue_pixels(cue: int, cx: int, cy: int, height: int, width: int) -> np.ndarray:
    pixels = np.zeros((height, width), np.uint8)
    _draw_cue(pixels, cue, cx, cy, 1)
    return pixels > 0


def _contrasting(image: np.ndarray, pixels: np.ndarray):
    """Black or white, whichever stands out from what ``pixels`` cover in ``image``."""
    return (0, 0, 0) if image[pixels].mean() > 110 else (255, 255, 255)


def _in_box_cue(rng, mask: np.ndarray, polygon: np.ndarray, cx: float, cy: float):
    """A cue centre inside the object, 40-65% of the way from its centre to its border along
    a random direction, with every cue pixel on the object; None if none was found."""
    height, width = mask.shape
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    for _ in range(30):
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        border = 0.0  # distance to the border along the direction
        while cv2.pointPolygonTest(contour, tuple(map(float, (cx, cy) + (border + 0.5)
                                                     * direction)), False) >= 0:
            border += 0.5
        x, y = np.round((cx, cy) + rng.uniform(0.4, 0.65) * border * direction).astype(int)
        pixels = _cue_pixels(0, x, y, height, width) | _cue_pixels(1, x, y, height, width)
        if pixels.any() and mask[pixels].all():
            return int(x), int(y)
    return None


def _beside_box(rng, box, height: int, width: int):
    """A tag centre outside ``box`` (x1, y1, x2, y2), 3-6 pixels off one of its sides."""
    x1, y1, x2, y2 = box
    half = CUE_SIZE // 2
    for side in rng.permutation(4):
        gap = int(rng.integers(3, 7)) + half + 1
        if side < 2:  # left or right
            x = int(x1 - gap) if side == 0 else int(x2 + gap)
            y = int(rng.uniform(y1 + half, max(y1 + half, y2 - half)))
        else:  # above or below
            y = int(y1 - gap) if side == 2 else int(y2 + gap)
            x = int(rng.uniform(x1 + half, max(x1 + half, x2 - half)))
        if half <= x < width - half and half <= y < height - half:
            return x, y
    return None


def make_evidence_image(rng: np.random.Generator, height: int = 240, width: int = 320,
                        omit_cues: Collection[int] = ()) -> Tuple[np.ndarray, List[Dict]]:
    """One BGR evidence scene and its objects, as :func:`make_image` gives them plus
    ``evidence``: the boolean mask of the cue that decides the object's class (labels index
    ``EVIDENCE_CLASSES``). ``cross`` and ``ring`` objects carry their cue inside, 40-65% of the
    way from the centre to the border; a ``tagged`` object's cue is a tag 3-6 pixels outside its
    box. Objects do not overlap. Also drawn, and not returned: 0-2 objects without a cue and
    0-2 cues on the background.

    ``omit_cues``: indices of returned objects whose cue is not drawn; the scene is otherwise
    the same (same ``rng`` state in, same pixels elsewhere): the intervention that tells
    whether a detector uses the cue."""
    image = _background(rng, height, width)
    taken = np.zeros((height, width), bool)  # objects and cues so far, with a margin
    objects, wanted = [], int(rng.integers(1, 5))
    plain, loose = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    for attempt in range(60):
        if len(objects) == wanted and not plain:
            break
        size = float(rng.uniform(44, min(100, 0.45 * min(height, width))))
        cx, cy = rng.uniform(size / 2 + 2, (width - size / 2 - 2, height - size / 2 - 2))
        polygon = _polygon(int(rng.integers(3)), cx, cy, size, float(rng.uniform(0, 2 * np.pi)))
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
        mask = mask > 0
        ys, xs = np.nonzero(mask)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        label = int(rng.integers(len(EVIDENCE_CLASSES))) if len(objects) < wanted else None
        centre = None
        if label is not None:
            centre = (_beside_box(rng, box, height, width) if label == _OUTSIDE
                      else _in_box_cue(rng, mask, polygon, cx, cy))
            if centre is None:
                continue
        evidence = (_cue_pixels(label, *centre, height, width) if label is not None
                    else np.zeros_like(mask))
        footprint = cv2.dilate((mask | evidence).astype(np.uint8), np.ones((15, 15), np.uint8))
        if (taken & (footprint > 0)).any():
            continue
        taken |= footprint > 0
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.fillPoly(image, [np.round(polygon).astype(np.int32)], colour, cv2.LINE_AA)
        if label is None:
            plain -= 1
            continue
        if len(objects) not in omit_cues:
            _draw_cue(image, label, *centre, _contrasting(image, evidence))
        objects.append(dict(label=label, mask=mask, evidence=evidence, **_outline(mask),
                            bbox=box))
    for _ in range(20 * loose):  # cues with no object
        if not loose:
            break
        cue, x, y = int(rng.integers(3)), int(rng.integers(8, width - 8)), \
            int(rng.integers(8, height - 8))
        pixels = _cue_pixels(cue, x, y, height, width)
        if (taken & cv2.dilate(pixels.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0).any():
            continue
        taken |= pixels
        _draw_cue(image, cue, x, y, _contrasting(image, pixels))
        loose -= 1
    return image, objects


def _visible(objects: List[Dict], height: int, width: int) -> List[Dict]:
    """Later shapes are painted over earlier ones: keep what remains visible, with boxes
    fitted to the visible part; drop shapes less than 40% visible."""
    owner = np.full((height, width), -1, np.int32)
    for index, obj in enumerate(objects):
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(obj['polygon']).astype(np.int32)], 1)
        owner[mask > 0] = index
    kept = []
    for index, obj in enumerate(objects):
        ys, xs = np.nonzero(owner == index)
        full = cv2.contourArea(obj['polygon'].astype(np.float32))
        if len(xs) < 0.4 * max(full, 1):
            continue
        mask = owner == index
        kept.append(dict(label=obj['label'], mask=mask, **_outline(mask),
                         bbox=[float(xs.min()), float(ys.min()), float(xs.max() + 1),
                               float(ys.max() + 1)]))
    return kept


def _outline(mask: np.ndarray) -> dict:
    """The mask's outer contours as COCO polygons, and whether it has holes (a shape painted
    inside it), which polygons cannot express.

    Contours are traced at twice the resolution, so that they run around the pixels instead of
    through the centres of the edge pixels: COCO's rasterisation gives back the mask exactly."""
    doubled = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer = [c for c, h in zip(contours, hierarchy[0]) if h[3] < 0]
    return dict(segmentation=[((c.reshape(-1) + 0.5) / 2).tolist() for c in outer if len(c) >= 3],
                has_holes=len(outer) < len(contours))


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=rle['size'], counts=rle['counts'].decode('ascii'))


def write_split(out_dir: Path, split: str, count: int, seed: int, kind: str = 'shapes') -> Path:
    """Write ``count`` images to ``out_dir/split/`` and ``out_dir/split.json`` (COCO); for
    ``kind='evidence'`` each annotation also holds its cue's pixels (``evidence``, RLE)."""
    rng = np.random.default_rng(seed)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(count):
        height, width = int(rng.integers(200, 321)), int(rng.integers(200, 321))
        image, objects = make_image(rng, height, width, kind)
        name = f'{split}/{image_id:05d}.jpg'
        mmcv.imwrite(image, str(out_dir / name))
        images.append(dict(id=image_id, file_name=name, height=height, width=width))
        for obj in objects:
            x1, y1, x2, y2 = obj['bbox']
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=obj['label'] + 1,
                bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1), iscrowd=0,
                segmentation=_rle(obj['mask']) if obj['has_holes'] else obj['segmentation'],
                **({'evidence': _rle(obj['evidence'])} if 'evidence' in obj else {})))
    classes = EVIDENCE_CLASSES if kind == 'evidence' else CLASSES
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(classes)]
    path = out_dir / f'{split}.json'
    path.write_text(json.dumps(dict(images=images, annotations=annotations,
                                    categories=categories)))
    return path
