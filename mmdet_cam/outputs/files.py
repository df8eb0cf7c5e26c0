"""The files sink: for each explained image its overlay, per-box images, maps and JSON
summary (and, for the HTML report, the maps alone)."""
import re
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import mmcv
import numpy as np
from mmdet.visualization.palette import get_palette

from ..errors import DetCAMError
from ..metrics import (
    energy_in_box,
    energy_in_mask,
    peak_location,
    pointing_hit,
    pointing_hit_mask,
)
from ..settings import OutputSettings
from ..visualization import (
    BoxDrawer,
    class_name,
    fuse_boxes,
    heatmap,
    overlay,
    renormalize_in_boxes,
)
from .atomic import atomic_path, write_json
from .report import frame_stem
from .sink import Sink


class ResultWriter(Sink):
    """Writes ``<stem>_cam.jpg`` (all boxes' maps, max-fused, with the boxes drawn) and
    ``<stem>.json`` (detections, settings, per-box peak and energy inside the box); on request
    ``<stem>_box<k>_<class>_<score>.jpg``, ``<stem>_cams.npy``, ``<stem>_original.jpg`` and
    ``<stem>_detection.jpg``; with ``html``, what :func:`~mmdet_cam.outputs.report.write_report`
    shows: ``<stem>_original.jpg`` and each map alone, ``<stem>_map<k>.jpg`` per box and
    ``<stem>_map_all.jpg`` (their maximum). Never deletes anything in ``out_dir``.

    A run that explains each image several ways (methods, layers) gives each way its own
    writer with a ``panel`` name: its files are ``<stem>.<panel>_...`` and its JSON records
    ``group`` (the image's stem) and ``panel``, so the report shows the ways side by side; the
    original image, ``<stem>_original.jpg``, is shared.

    Args:
        out_dir: existing, writable folder.
        dataset_meta: ``classes`` and ``palette`` for labels and box colours.
        settings: the run's description (:func:`~mmdet_cam.outputs.run.describe_run`),
            recorded in every JSON file.
        output: alpha, renormalize, per_box, ... (see :class:`~mmdet_cam.settings.OutputSettings`).
        panel: the name of this way of explaining in a multi-panel run (None: the only one).
        panel_index: its place among the panels.
    """

    def __init__(self, out_dir, dataset_meta: dict, settings: dict,
                 output: OutputSettings = OutputSettings(), panel: Optional[str] = None,
                 panel_index: int = 0):
        self.out_dir = Path(out_dir)
        self.class_names: Sequence[str] = dataset_meta.get('classes', ())
        self.settings = settings
        self.alpha, self.renormalize = output.alpha, output.renormalize
        self.per_box, self.save_npy = output.per_box, output.save_npy
        self.save_all, self.html = output.save_all, output.html
        self.drawer = BoxDrawer(dataset_meta)
        self.palette = report_palette(dataset_meta) if self.html else None
        self.panel, self.panel_index = panel, panel_index

    def file_stem(self, stem: str) -> str:
        """The prefix of this writer's files for an image (or video) named ``stem``."""
        return f'{stem}.{panel_slug(self.panel)}' if self.panel else stem

    def json_path(self, stem: str) -> Path:
        """This writer's JSON summary of the image (or video) named ``stem``."""
        return self.out_dir / f'{self.file_stem(stem)}.json'

    def panel_fields(self, stem: str) -> dict:
        """What a JSON summary records of the panel it belongs to (nothing without one)."""
        return (dict(group=stem, panel=self.panel, panel_index=self.panel_index)
                if self.panel else {})

    def add(self, result, stem: str, source: Optional[str] = None,
            extra: Optional[dict] = None) -> None:
        self.write_image(result, stem, source, extra)

    def write_image(self, result, stem: str, source: Optional[str] = None,
                    extra: Optional[dict] = None) -> np.ndarray:
        """Write the files of one image (``extra``: more entries of its JSON); returns the
        overlay picture."""
        group, stem = stem, self.file_stem(stem)
        picture = self.render(result)
        self.imwrite(f'{stem}_cam.jpg', picture)
        if self.per_box:
            cams = self.display_maps(result)
            for k, name in enumerate(self.box_names(result)):
                heat = overlay(result.image, cams[k], self.alpha)
                self.imwrite(f'{stem}_box{k}_{name}.jpg',
                             self.drawer.draw(heat, result.detections, keep=[k]))
        if self.html:
            self.write_report_images(result, group)
        elif self.save_all and self.panel_index == 0:
            self.imwrite(f'{group}_original.jpg', result.image)
        if self.save_all:
            self.imwrite(f'{stem}_detection.jpg', self.drawer.draw(result.image,
                                                                   result.detections))
        if self.save_npy:
            with atomic_path(self.out_dir / f'{stem}_cams.npy') as path:
                np.save(path, result.cams)
        summary = dict(image=source, image_size=list(result.image.shape[:2]), **self.settings,
                       **self.panel_fields(group),
                       **({'tokens': result.tokens} if result.tokens else {}),
                       detections=self.describe(result),
                       **(extra or {}),
                       **(dict(palette=self.palette) if self.palette else {}))
        # written last: an image whose JSON is there has all its files (resumed runs skip it)
        write_json(self.json_path(group), summary)
        return picture

    def write_report_images(self, result, stem: str, frame: Optional[int] = None) -> None:
        """``<stem>_original.jpg`` and the maps alone, ``<stem>_map<k>.jpg`` per box and
        ``<stem>_map_all.jpg`` (panel files as :meth:`file_stem` names them; a video's
        ``frame`` as :func:`~mmdet_cam.outputs.report.frame_stem` does), for
        :func:`~mmdet_cam.outputs.report.write_report`."""
        maps, original = self.file_stem(stem), stem
        if frame is not None:
            maps, original = frame_stem(maps, frame), frame_stem(original, frame)
        cams = self.display_maps(result)
        for k, cam in enumerate(cams):
            self.imwrite(f'{maps}_map{k}.jpg', heatmap(cam))
        self.imwrite(f'{maps}_map_all.jpg', heatmap(fuse_boxes(cams, result.image.shape[:2])))
        if self.panel_index == 0:  # the original is shared by the panels: written once
            self.imwrite(f'{original}_original.jpg', result.image)

    def render(self, result) -> np.ndarray:
        """The image with the max over all boxes' maps and the boxes drawn."""
        cams = self.display_maps(result)
        heat = overlay(result.image, fuse_boxes(cams, result.image.shape[:2]), self.alpha)
        return self.drawer.draw(heat, result.detections)

    def display_maps(self, result) -> np.ndarray:
        if self.renormalize:
            return renormalize_in_boxes(result.cams, result.detections.bboxes.numpy())
        return result.cams

    def box_names(self, result) -> List[str]:
        return [f'{self.class_name(label).replace(" ", "-")}_{score:.2f}'
                for label, score in zip(result.detections.labels.tolist(),
                                        result.detections.scores.tolist())]

    def class_name(self, label: int) -> str:
        return class_name(self.class_names, label)

    def describe(self, result) -> List[dict]:
        """Per detection: box, label, class, score, map peak, and the map's share inside."""
        rows = []
        for k in range(len(result)):
            box = [round(v, 2) for v in result.detections.bboxes[k].tolist()]
            label = int(result.detections.labels[k])
            cam = result.cams[k]
            rows.append(dict(
                index=k, bbox=box, label=label, class_name=self.class_name(label),
                score=round(float(result.detections.scores[k]), 4),
                peak=list(peak_location(cam)), peak_in_box=pointing_hit(cam, box),
                energy_in_box=round(energy_in_box(cam, box), 4),
                **(_mask_fields(cam, result.detections.masks[k])
                   if 'masks' in result.detections else {}),
                **({'level': int(result.detections.levels[k])}
                   if 'levels' in result.detections else {}),
                **({'named_bbox': [round(v, 2) for v in
                                   result.detections.named_bboxes[k].tolist()],
                    'iou_with_named': round(float(result.detections.ious[k]), 4)}
                   if 'named_bboxes' in result.detections else {}),
                **({'reported_class': self.class_name(int(result.detections.reported_labels[k])),
                    'reported_score': round(float(result.detections.reported_scores[k]), 4)}
                   if 'reported_labels' in result.detections else {}),
                **({'versus_class': self.class_name(int(result.detections.versus_labels[k])),
                    'versus_score': round(float(result.detections.versus_scores[k]), 4)}
                   if 'versus_labels' in result.detections else {}),
                **({'tag': result.detections.tags[k]} if 'tags' in result.detections else {}),
                **({key: round(value, 4) for key, value in
                    result.detections.faithfulness[k].items()}
                   if 'faithfulness' in result.detections else {}),
                **({'token_attributions': [round(float(v), 6)
                                           for v in result.token_attributions[k]]}
                   if result.token_attributions is not None else {}),
                zero_gradient_layers=result.zero_gradient_layers[k]))
        return rows

    def imwrite(self, name: str, image: np.ndarray) -> None:
        with atomic_path(self.out_dir / name) as path:
            if not mmcv.imwrite(image, str(path)):
                raise DetCAMError(f'cannot write {self.out_dir / name}')


def _mask_fields(cam: np.ndarray, mask) -> dict:
    """An instance segmentor's detection: its mask's area, the map's peak and share of energy
    on it, and its outline (COCO-style polygons ``[[x1, y1, x2, y2, ...], ...]``, simplified
    to a pixel; the report draws it)."""
    mask = np.asarray(mask, dtype=bool)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    outline = [cv2.approxPolyDP(c, 1.0, True).reshape(-1).tolist() for c in contours]
    return dict(mask_area=int(mask.sum()), peak_in_mask=pointing_hit_mask(cam, mask),
                energy_in_mask=round(energy_in_mask(cam, mask), 4),
                mask_outline=[points for points in outline if len(points) >= 6])


def top_words(tokens: List[str], attributions: np.ndarray, count: int = 3) -> List[tuple]:
    """The ``count`` tokens with the largest attribution, ``(token, attribution)``, largest
    first; the tokenizer's special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``) left out."""
    order = np.argsort(-np.asarray(attributions), kind='stable')
    words = [(tokens[i], float(attributions[i])) for i in order
             if not re.fullmatch(r'\[[A-Z]+\]', tokens[i])]
    return words[:count]


def panel_slug(name: str) -> str:
    """A panel name as a file-name part: ``gradcam++`` -> ``gradcampp``."""
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', name.replace('+', 'p')).strip('-')


def report_palette(dataset_meta: dict) -> Optional[List[List[int]]]:
    """The box colours (RGB) mmdet's visualizer gives each class, for the report; None where
    the dataset names no classes or its palette does not fit them."""
    classes = dataset_meta.get('classes') or ()
    try:
        return [list(map(int, c)) for c in
                get_palette(dataset_meta.get('palette') or 'random', len(classes))] or None
    except (AssertionError, TypeError, ValueError):
        return None
