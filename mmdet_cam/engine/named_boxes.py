"""Boxes a user names (a ground-truth box, a box drawn by hand, an object the model missed):
where they come from and how they are explained.

* ``--boxes 'x1,y1,x2,y2[:class]' ...``: boxes of one image (:func:`parse_box_specs`).
* ``--boxes-file FILE``: a COCO annotation file (boxes of the images its ``file_name`` entries
  name, classes by category name), a JSON object ``{"image.jpg": [box, ...], ...}``, or a JSON
  list of boxes of one image; a box is ``{"bbox": [x1, y1, x2, y2], "class": "name"}`` (the
  class is optional) (:func:`read_boxes_file`). Both give ``{image file name: (boxes [N, 4],
  labels)}``, labels being class names or None.
* ``request.NamedBoxes`` explains the raw candidates that best match them
  (``DetCAM(img, boxes=, labels=)``).
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import BadInputError, InputNotFoundError

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
