"""Boxes a user names (a ground-truth box, a box drawn by hand, an object the model missed):
where they come from and how they are explained.

* ``--boxes 'x1,y1,x2,y2[:class]' ...``: boxes of one image (:func:`parse_box_specs`).
* ``--boxes-file FILE``: a COCO annotation file (boxes of the images its ``file_name`` entries
  name, classes by category name), a JSON object ``{"image.jpg": [box, ...], ...}``, or a JSON
  list of boxes of one image; a box is ``{"bbox": [x1, y1, x2, y2], "class": "name"}`` (the
  class is optional) (:func:`read_boxes_file`). Both give ``{image file name: (boxes [N, 4],
  labels)}``, labels being class names or None.
* :class:`NamedBoxes` explains the raw candidates that best match them
  (``DetCAM(img, boxes=, labels=)``).
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from ..errors import BadInputError, InputNotFoundError, UnsupportedModelError

BoxesByImage = Dict[str, Tuple[List[List[float]], List[Optional[str]]]]


def parse_box_specs(specs: Sequence[str]) -> Tuple[List[List[float]], List[Optional[str]]]:
    """``['x1,y1,x2,y2[:class]', ...]`` -> boxes and labels (None: any class)."""
    boxes, labels = [], []
    for spec in specs:
        coords, _, label = spec.partition(':')
        try:
            box = [float(v) for v in coords.split(',')]
        except ValueError:
            box = []
        if len(box) != 4:
            raise BadInputError(f'--boxes {spec!r}: expected x1,y1,x2,y2 or x1,y1,x2,y2:class')
        boxes.append(box)
        labels.append(label or None)
    return boxes, labels


def read_boxes_file(path: str, image_names: Sequence[str]) -> BoxesByImage:
    """The boxes of ``path`` for the images named ``image_names`` (file names)."""
    file = Path(path)
    if not file.is_file():
        raise InputNotFoundError(f'boxes file not found: {path}')
    try:
        content = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f'{path} is not a JSON file: {error}') from None
    if isinstance(content, dict) and 'annotations' in content and 'images' in content:
        table = _coco(content)
    elif isinstance(content, dict):
        table = {name: _box_list(boxes, path) for name, boxes in content.items()}
    elif isinstance(content, list):
        if len(image_names) != 1:
            raise BadInputError(f'{path} lists the boxes of one image; give a single image')
        table = {image_names[0]: _box_list(content, path)}
    else:
        raise BadInputError(f'{path}: expected COCO annotations, an object or a list of boxes')
    found = {name: table[name] for name in image_names if name in table}
    if not found:
        raise BadInputError(f'{path} names none of the input images '
                            f'({", ".join(list(image_names)[:3])}...)')
    return found


def _coco(content: dict) -> BoxesByImage:
    names = {image['id']: Path(image['file_name']).name for image in content['images']}
    classes = {c['id']: c['name'] for c in content.get('categories', [])}
    table: BoxesByImage = {}
    for annotation in content['annotations']:
        x, y, w, h = annotation['bbox']
        boxes, labels = table.setdefault(names[annotation['image_id']], ([], []))
        boxes.append([x, y, x + w, y + h])
        labels.append(classes.get(annotation.get('category_id')))
    return table


def _box_list(items, path: str) -> Tuple[List[List[float]], List[Optional[str]]]:
    boxes, labels = [], []
    for item in items:
        if not isinstance(item, dict) or len(item.get('bbox', ())) != 4:
            raise BadInputError(f'{path}: each box must be {{"bbox": [x1, y1, x2, y2], '
                                f'"class": name}}, got {item!r}')
        boxes.append([float(v) for v in item['bbox']])
        labels.append(item.get('class'))
    return boxes, labels


class NamedBoxes:
    """The raw candidates that best match boxes a user names (a ground-truth box, a box drawn
    by hand): a ``candidates`` argument of :func:`~mmdet_cam.engine.explain.explain`, run
    under :func:`every_candidate` so that no score threshold or NMS hides a weak candidate
    (and under :func:`added_proposals` for two-stage detectors, so each named box is a RoI).

    For each named box (original-image pixels) the candidate with the highest IoU x
    probability of the named class (of any class where the label is None) is explained, for
    that class. The explained detections carry ``named_bboxes`` and ``ious`` (the candidate's
    IoU with its named box): "what the model thought here". With ``by_iou`` the candidate
    with the highest IoU is taken whatever its score: given a detection's own box, that is the
    same candidate's score for another class (exactly so where box regression does not depend
    on the class: the same box comes back for every class). With ``versus`` (one class per
    box) the value explained is the candidate's score for its class *minus* its score for
    that class, matched the same way: the evidence for one class over the other
    (``versus_labels`` and ``versus_scores`` are recorded).
    """

    def __init__(self, bboxes, labels: Sequence[Optional[int]], by_iou: bool = False,
                 versus: Optional[Sequence[int]] = None):
        self.bboxes = torch.as_tensor(bboxes, dtype=torch.float32).reshape(-1, 4)
        self.labels, self.by_iou = list(labels), by_iou
        self.versus = None if versus is None else list(versus)

    @property
    def explained_labels(self) -> Optional[list]:
        """The labels whose scores the explained values read (None: any label)."""
        labels = self.labels + (self.versus or [])
        return None if None in labels else labels

    def __call__(self, pred: InstanceData, head_outputs: List[Tensor]):
        from mmdet.structures.bbox import bbox_overlaps
        if not len(pred):
            raise UnsupportedModelError('the detector returned no candidates for this image')
        ious = bbox_overlaps(self.bboxes.to(pred.bboxes.device), pred.bboxes.detach())
        index = self._best(pred, ious, self.labels)
        detections = pred[index]
        detections.named_bboxes = self.bboxes.to(pred.bboxes.device)
        detections.ious = ious[torch.arange(len(index)), index]
        values = pred.scores[index]
        if self.versus is not None:
            other = self._best(pred, ious, self.versus)
            detections.versus_labels = pred.labels[other]
            detections.versus_scores = pred.scores[other].detach()
            values = values - pred.scores[other]
        return values, detections

    def _best(self, pred: InstanceData, ious: Tensor, labels) -> Tensor:
        """Per named box, the index of its best candidate of the given label."""
        scores = pred.scores.detach()
        best = []
        for k, label in enumerate(labels):
            match = ious[k] + 1e-6 * scores if self.by_iou else ious[k] * scores
            if label is not None:
                if not bool((pred.labels == label).any()):
                    raise UnsupportedModelError(
                        f'the detector has no candidate of class {label} in this image (a '
                        "softmax classifier, as DETR's, reports only each candidate's top class)")
                match = torch.where(pred.labels == label, match, torch.full_like(match, -1))
            best.append(int(match.argmax()))
        return torch.as_tensor(best, device=pred.scores.device)
