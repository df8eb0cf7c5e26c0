"""Localisation of per-detection maps on the shapes val split.

For every method and target-layer choice, each detection matched to a ground-truth box of the
same class (IoU >= 0.5) scores:
  pointing  the map's peak lies inside the GT box (pointing game),
  energy    share of the map's mass inside the GT box (energy pointing game),
  chance    the GT box's share of the image (what a uniform map gets for energy).
With ``--target mask`` (an instance segmentor, e.g. the instance demo) the maps explain each
detection's mask, and the same figures are also given against the ground-truth *masks*.

    python benchmarks/localization.py                       # shipped demo model, data/shapes
    python benchmarks/localization.py --num-images 50 --methods gradcam hirescam
    python benchmarks/localization.py --config demo/rtmdet-ins_shapes.py \
        --checkpoint demo/rtmdet-ins_shapes.pth --target mask --layers neck
"""
import argparse
import json
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from mmdet.structures.bbox import bbox_overlaps

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.methods import build_cam_method, method_kind, method_names
from mmdet_cam.metrics import (
    box_area_share,
    energy_in_box,
    energy_in_mask,
    pointing_hit,
    pointing_hit_mask,
)

REPO = Path(__file__).parents[1]


def load_split(data_root: Path, split: str):
    """``[(image path, [(label, box, mask)])]``; ``mask``: a function that decodes the object's
    COCO segmentation (polygons or RLE) into a boolean array."""
    from pycocotools import mask as mask_utils
    coco = json.loads((data_root / f'{split}.json').read_text())
    sizes = {image['id']: (image['height'], image['width']) for image in coco['images']}
    objects = defaultdict(list)
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        height, width = sizes[ann['image_id']]

        def mask(segmentation=ann['segmentation'], height=height, width=width):
            if isinstance(segmentation, list):  # polygons
                segmentation = mask_utils.merge(
                    mask_utils.frPyObjects(segmentation, height, width))
            return mask_utils.decode(segmentation).astype(bool)
        objects[ann['image_id']].append((ann['category_id'] - 1, [x, y, x + w, y + h], mask))
    return [(data_root / image['file_name'], objects[image['id']])
            for image in coco['images']]


def match(detections, gt):
    """Index of the matched GT box per detection (same class, best IoU >= 0.5), or -1."""
    if not gt or len(detections) == 0:
        return [-1] * len(detections)
    gt_labels = torch.tensor([obj[0] for obj in gt])
    gt_boxes = torch.tensor([obj[1] for obj in gt], dtype=torch.float32)
    ious = bbox_overlaps(detections.bboxes, gt_boxes)
    ious[detections.labels[:, None] != gt_labels[None, :]] = 0
    best, index = ious.max(dim=1)
    return [int(i) if b >= 0.5 else -1 for b, i in zip(best, index)]


def evaluate(cam, samples, masks: bool = False):
    """Means over matched detections (``masks``: also against the GT masks)."""
    rows, unmatched = defaultdict(list), 0
    for path, gt in samples:
        result = cam(str(path))
        for k, g in enumerate(match(result.detections, gt)):
            if g < 0:
                unmatched += 1
                continue
            cam_k, (_, box, mask) = result.cams[k], gt[g]
            rows['pointing'].append(pointing_hit(cam_k, box))
            rows['energy'].append(energy_in_box(cam_k, box))
            rows['chance'].append(box_area_share(cam_k.shape, box))
            if masks:
                mask = mask()
                rows['pointing_mask'].append(pointing_hit_mask(cam_k, mask))
                rows['energy_mask'].append(energy_in_mask(cam_k, mask))
                rows['chance_mask'].append(mask.mean())
    return dict(matched=len(rows['pointing']), unmatched=unmatched,
                **{key: np.mean(values) for key, values in rows.items()})


def demo_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with ``--config``, ``--checkpoint`` (default: the shipped demo model) and
    ``--data-root`` (its synthetic dataset)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=str(REPO / 'demo' / 'rtmdet_shapes.py'))
    parser.add_argument('--checkpoint', default=str(REPO / 'demo' / 'rtmdet_shapes.pth'))
    parser.add_argument('--data-root', default=str(REPO / 'data' / 'shapes'),
                        help='made by tools/make_shapes_dataset.py')
    parser.add_argument('--device', default='cpu', help="e.g. cuda:0 (default: cpu)")
    return parser


def main():
    parser = demo_arguments(__doc__)
    parser.add_argument('--split', default='val')
    parser.add_argument('--num-images', type=int, help='first N images only')
    parser.add_argument('--methods', nargs='+', default=None, help='default: all')
    parser.add_argument('--layers', nargs='+', default=['neck', 'backbone'],
                        help='target-layer choices, one per table block (default: neck backbone)')
    parser.add_argument('--score-thr', type=float, default=0.3)
    parser.add_argument('--target', choices=['score', 'mask'], default='score',
                        help="what the maps explain; 'mask': each detection's mask (instance "
                        'segmentors), scored against the GT masks too')
    args = parser.parse_args()
    masks = args.target == 'mask'

    samples = load_split(Path(args.data_root), args.split)[:args.num_images]
    model = build_detector(args.config, args.checkpoint, device=args.device)
    methods = args.methods or [  # methods that re-run the detector: 20-45 s per image with
        # masks (every candidate's mask per re-run); name them with --methods
        m for m in method_names() if m not in ('kpca_cam', 'fem')
        and not (masks and method_kind(build_cam_method(m, model)).reruns_detector)]
    print(f'{len(samples)} {args.split} images, score_thr {args.score_thr}, '
          f'target {args.target}\n')
    mask_columns = ' pointing (mask) | energy (mask) | chance (mask) |' if masks else ''
    print(f'| layers | method | matched | pointing | energy | chance |{mask_columns} s/image |')
    print('|---|---|---:|---:|---:|---:|' + '---:|' * (4 if masks else 1))
    for layers in args.layers:
        for method in methods:
            cam = DetCAM(model, target_layers=layers, method=method, score_thr=args.score_thr,
                         target=args.target)
            start = time.time()
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                row = evaluate(cam, samples, masks)
            seconds = (time.time() - start) / len(samples)
            figures = ['pointing', 'energy', 'chance'] + (
                ['pointing_mask', 'energy_mask', 'chance_mask'] if masks else [])
            print(f"| {layers} | {method} | {row['matched']} | "
                  + ' | '.join(f'{row[key]:.3f}' for key in figures)
                  + f' | {seconds:.2f} |', flush=True)


if __name__ == '__main__':
    main()
