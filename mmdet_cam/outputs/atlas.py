"""The atlas sink: per class, where its detections' maps lie relative to their boxes, averaged
over every image of the run (``mmdet_cam.metrics.atlas``). Each image's part (its detections'
box frames and mass shares) is kept in ``<stem>.atlas.npz``, so that a resumed run rebuilds
the atlas from the images an earlier run explained. At the end of the run it writes
``atlas.json`` and one picture per class, ``atlas_<class>.jpg``; in a distributed run the
processes' atlases are gathered and the main process writes them."""
import re
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import mmcv
import numpy as np
from mmdet.visualization.palette import get_palette
from mmengine.dist import all_gather_object, barrier, is_main_process

from ..errors import InputNotFoundError
from ..metrics.atlas import SHARES, ClassAtlas, box_frame, frame_box, mass_shares
from ..visualization import class_name, heatmap
from .atomic import atomic_path, write_json
from .sink import Sink

ATLAS_SIZE, ATLAS_MARGIN = 96, 1.0  # frame pixels; box sizes of context on each side
PICTURE_SIZE = 288  # the pictures' side: the box frame enlarged 3x, readable at a glance


class AtlasSink(Sink):
    """Gathers each detection's map in its box frame, per class, and writes the atlas.

    Args:
        out_dir: existing, writable folder.
        dataset_meta: ``classes`` (every class is listed, with 0 detections if none was
            explained) and ``palette`` (the box outline's colour).
        run: the run's description (:func:`~mmdet_cam.outputs.run.describe_run`), recorded
            in ``atlas.json``.
        name: the atlas's file stem (``atlas``; one per panel in multi-panel runs).
    """

    def __init__(self, out_dir, dataset_meta: dict, run: dict, name: str = 'atlas'):
        self.out_dir, self.run, self.name = Path(out_dir), run, name
        self.class_names = list(dataset_meta.get('classes') or ())
        self.palette = dataset_meta.get('palette') or 'random'
        self.classes: Dict[int, ClassAtlas] = {}
        self.images = 0
        self.video: List[dict] = []  # the frames of the video being explained

    def part_path(self, stem: str) -> Path:
        return self.out_dir / f'{stem}.{self.name}.npz'

    def add(self, result, stem: str, source: Optional[str] = None,
            extra: Optional[dict] = None) -> None:
        part = image_part(result)
        with atomic_path(self.part_path(stem)) as path:
            np.savez_compressed(path, **part)
        self.take(part)

    def add_frame(self, result) -> None:
        part = image_part(result)
        self.video.append(part)
        self.take(part)

    def end_video(self, stem: str) -> None:
        """The video's frames as one part (``images``: how many frames), as an image's."""
        part = {key: np.concatenate([frame[key] for frame in self.video])
                for key in ('labels', 'frames', 'valid', 'shares')} if self.video else {}
        with atomic_path(self.part_path(stem)) as path:
            np.savez_compressed(path, images=len(self.video), **part)
        self.video = []

    def restore(self, stem: str) -> None:
        path = self.part_path(stem)
        if not path.is_file():
            raise InputNotFoundError(f'--resume: {path} is missing (the atlas part of an '
                                     f'image explained earlier); run without --resume')
        with np.load(path) as part:
            self.take(dict(part))

    def take(self, part: dict) -> None:
        """One image's detections (:func:`image_part`; a video's frames, ``images`` of them)
        into their classes' atlases."""
        self.images += int(part.get('images', 1))
        if 'labels' not in part:  # a video without frames
            return
        for label, frame, valid, shares in zip(part['labels'], part['frames'], part['valid'],
                                               part['shares']):
            atlas = self.classes.setdefault(int(label), ClassAtlas(ATLAS_SIZE))
            atlas.add_part(frame.astype(np.float32), valid,
                           None if np.isnan(shares[0]) else dict(zip(SHARES, shares.tolist())))

    def close(self) -> Optional[str]:
        parts = all_gather_object((self.images, self.classes))
        barrier()
        if not is_main_process():
            return None
        images, classes = 0, {}
        for count, part in parts:
            images += count
            for label, atlas in part.items():
                classes.setdefault(label, ClassAtlas(ATLAS_SIZE)).merge(atlas)
        return self.write(images, classes)

    def class_name(self, label: int) -> str:
        return class_name(self.class_names, label)

    def write(self, images: int, classes: Dict[int, ClassAtlas]) -> str:
        """Write ``<name>.json`` and the pictures; returns the line to tell the user."""
        labels = sorted(set(range(len(self.class_names))) | set(classes))
        palette = get_palette(self.palette, max(labels, default=0) + 1)
        entries = {}
        for label in labels:
            atlas = classes.get(label, ClassAtlas(ATLAS_SIZE))
            name = self.class_name(label)
            entry = atlas.summary()
            entry['picture'] = None
            if atlas.detections:
                entry['picture'] = f'{self.name}_{file_safe(name)}.jpg'
                with atomic_path(self.out_dir / entry['picture']) as path:
                    mmcv.imwrite(atlas_picture(atlas, name, palette[label]), str(path))
            entries[name] = entry
        detections = sum(atlas.detections for atlas in classes.values())
        record = dict(self.run, images=images, detections=detections,
                      frame=dict(size=ATLAS_SIZE, margin=ATLAS_MARGIN,
                                 box=list(frame_box(ATLAS_SIZE, ATLAS_MARGIN))),
                      classes=entries)
        path = self.out_dir / f'{self.name}.json'
        write_json(path, record)
        if not detections:
            return f'atlas: no detection in {images} image(s), nothing to average ({path})'
        return f'atlas: {detections} detections of {len(classes)} class(es) -> {path}'


def image_part(result) -> dict:
    """One image's share of the atlas, as arrays: per detection its ``labels``, box
    ``frames`` (float16: what is kept and what is summed, so a resumed run sums the same
    numbers), their ``valid`` pixels and mass ``shares`` (``SHARES`` order; NaN for a flat
    map)."""
    frames, valid, shares = [], [], []
    for cam, box in zip(result.cams, result.detections.bboxes.tolist()):
        frame, seen = box_frame(cam, box, ATLAS_SIZE, ATLAS_MARGIN)
        frames.append(frame)
        valid.append(seen)
        share = mass_shares(cam, box, ATLAS_MARGIN)
        shares.append([share[key] for key in SHARES] if share else [np.nan] * len(SHARES))
    size = (len(frames), ATLAS_SIZE, ATLAS_SIZE)
    return dict(labels=np.asarray(result.detections.labels.tolist(), np.int64),
                frames=np.asarray(frames, np.float16).reshape(size),
                valid=np.asarray(valid, bool).reshape(size),
                shares=np.asarray(shares, np.float64).reshape(-1, len(SHARES)))


def atlas_picture(atlas: ClassAtlas, name: str, colour) -> np.ndarray:
    """The class's mean map in the box frame (scaled to its maximum) with the box outline in
    the class colour, and a caption: the class, its count and its mass inside the box."""
    mean = atlas.mean_map()
    peak = float(mean.max())
    picture = heatmap(mean / peak if peak > 0 else mean)
    picture = cv2.resize(picture, (PICTURE_SIZE, PICTURE_SIZE), interpolation=cv2.INTER_LINEAR)
    scale = PICTURE_SIZE / atlas.size
    x1, y1, x2, y2 = (round(v * scale) for v in frame_box(atlas.size, ATLAS_MARGIN))
    bgr = tuple(int(c) for c in colour[::-1])
    cv2.rectangle(picture, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), 4, cv2.LINE_AA)
    cv2.rectangle(picture, (x1, y1), (x2 - 1, y2 - 1), bgr, 2, cv2.LINE_AA)
    summary = atlas.summary()
    inside = ('no map' if summary['inside'] is None
              else f"{summary['inside']:.0%} in box")
    caption = np.full((44, PICTURE_SIZE, 3), 255, np.uint8)
    cv2.putText(caption, name[:24], (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, bgr, 2,
                cv2.LINE_AA)
    cv2.putText(caption, f'n={summary["detections"]}  {inside}', (6, 38),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (40, 40, 40), 1, cv2.LINE_AA)
    return np.concatenate([picture, caption])


def file_safe(name: str) -> str:
    """A class name as part of a file name."""
    return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'class'
