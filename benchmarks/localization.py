"""Localisation of per-detection maps on the shapes val split.

For every method and target-layer choice, each detection matched to a ground-truth box of the
same class (IoU >= 0.5) scores:
  pointing  the map's peak lies inside the GT box (pointing game),
  energy    share of the map's mass inside the GT box (energy pointing game),
  chance    the GT box's share of the image (what a uniform map gets for energy).

    python benchmarks/localization.py                       # shipped demo model, data/shapes
    python benchmarks/localization.py --num-images 50 --methods gradcam hirescam
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
from mmdet_cam.methods import method_names
from mmdet_cam.metrics import box_area_share, energy_in_box, pointing_hit

REPO = Path(__file__).parents[1]


def load_split(data_root: Path, split: str):
    coco = json.loads((data_root / f'{split}.json').read_text())
    boxes = defaultdict(list)
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        boxes[ann['image_id']].append((ann['category_id'] - 1, [x, y, x + w, y + h]))
    return [(data_root / image['file_name'], boxes[image['id']]) for image in coco['images']]


def match(detections, gt):
    """Index of the matched GT box per detection (same class, best IoU >= 0.5), or -1."""
    if not gt or len(detections) == 0:
        return [-1] * len(detections)
    gt_labels = torch.tensor([label for label, _ in gt])
    gt_boxes = torch.tensor([box for _, box in gt], dtype=torch.float32)
    ious = bbox_overlaps(detections.bboxes, gt_boxes)
    ious[detections.labels[:, None] != gt_labels[None, :]] = 0
    best, index = ious.max(dim=1)
    return [int(i) if b >= 0.5 else -1 for b, i in zip(best, index)]


def evaluate(cam, samples):
    hits, energies, chances, unmatched = [], [], [], 0
    for path, gt in samples:
        result = cam(str(path))
        for k, g in enumerate(match(result.detections, gt)):
            if g < 0:
                unmatched += 1
                continue
            box = gt[g][1]
            hits.append(pointing_hit(result.cams[k], box))
            energies.append(energy_in_box(result.cams[k], box))
            chances.append(box_area_share(result.cams[k].shape, box))
    return dict(matched=len(hits), unmatched=unmatched, pointing=np.mean(hits),
                energy=np.mean(energies), chance=np.mean(chances))


def demo_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with ``--config``, ``--checkpoint`` (default: the shipped demo model) and
    ``--data-root`` (its synthetic dataset)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=str(REPO / 'demo' / 'rtmdet_shapes.py'))
    parser.add_argument('--checkpoint', default=str(REPO / 'demo' / 'rtmdet_shapes.pth'))
    parser.add_argument('--data-root', default=str(REPO / 'data' / 'shapes'),
                        help='made by tools/make_shapes_dataset.py')
    return parser


def main():
    parser = demo_arguments(__doc__)
    parser.add_argument('--split', default='val')
    parser.add_argument('--num-images', type=int, help='first N images only')
    parser.add_argument('--methods', nargs='+', default=None, help='default: all')
    parser.add_argument('--layers', nargs='+', default=['neck', 'backbone'],
                        help='target-layer choices, one per table block (default: neck backbone)')
    parser.add_argument('--score-thr', type=float, default=0.3)
    args = parser.parse_args()

    samples = load_split(Path(args.data_root), args.split)[:args.num_images]
    model = build_detector(args.config, args.checkpoint)
    methods = args.methods or [m for m in method_names() if m not in ('kpca_cam', 'fem')]
    print(f'{len(samples)} {args.split} images, score_thr {args.score_thr}\n')
    print('| layers | method | matched | pointing | energy | chance | s/image |')
    print('|---|---|---:|---:|---:|---:|---:|')
    for layers in args.layers:
        for method in methods:
            cam = DetCAM(model, target_layers=layers, method=method, score_thr=args.score_thr)
            start = time.time()
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                row = evaluate(cam, samples)
            seconds = (time.time() - start) / len(samples)
            print(f"| {layers} | {method} | {row['matched']} | {row['pointing']:.3f} | "
                  f"{row['energy']:.3f} | {row['chance']:.3f} | {seconds:.2f} |", flush=True)


if __name__ == '__main__':
    main()
