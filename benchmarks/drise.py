"""D-RISE: mmdet-cam's ``drise`` against the reference implementation, on the shipped demo model.

The reference is ``DRISE_saliency`` of Microsoft's ``vision-explanation-methods`` (VEM), which
runs the detector once per mask. It is wrapped here to see exactly the detector outputs ours
sees (raw candidates of the masked image, class vectors completed by its own
``expand_class_scores``), so the two differ only in masks (VEM: nearest-neighbour upsampling,
applied to the original image; ours: bilinear with a sub-cell shift, as the paper, applied to
the image at the network's input size) and in batching. For each image and mask
count the tables give

  masks/s        masks per second, ours (batched) and VEM's (one forward per mask), each the
                 median of 3 runs taken in turns with the other's
  speed-up       ours / VEM
  r(ours, VEM)   Pearson correlation per box between our map and VEM's (mean over boxes, and
                 over the two seed pairs), for our default bilinear masks and for
                 ``upsample='nearest'``, VEM's own kind of mask
  r(VEM, VEM')   the same between two VEM runs with different seeds: the ceiling for the above
  r(ours, ours') the same between two of ours
  pointing       share of boxes whose map peaks inside the box, ours and VEM's

then a convergence table on the first image: r(ours, ours') against the number of masks, a
precision table: masks/s in float32 and under bfloat16 autocast (float16 on CUDA), and the
Pearson r per box between the two at the same seed, next to float32's between two seeds, and a
mask table on the instance demo (``demo/rtmdet-ins_shapes.py``): masks/s explaining the boxes and
the masks (``target='mask'``), the latter with the default ``mask_candidate_iou`` (only
candidates whose box meets a detection's have their masks compared) and with every candidate's
mask (``None``), and the r between the two at the same seed.

VEM is a benchmark extra, not a dependency. Its metadata pins ``matplotlib<3.7``, whose wheels
are built for numpy 1 and break ``import mmdet`` under numpy 2, so install it without its
dependencies (only ``pandas`` is needed for the D-RISE module):

    pip install --no-deps vision-explanation-methods pandas
    python benchmarks/drise.py --quick          # 1 image, 300 masks, a few minutes
    python benchmarks/drise.py --tables speed   # throughput only, on an otherwise idle machine
    python benchmarks/drise.py --tables precision   # bfloat16 (CUDA: float16) against float32
    python benchmarks/drise.py --tables mask        # the mask target on the instance demo
    nohup python benchmarks/drise.py > drise.log 2>&1 &   # 2 images, ~45 min on 2 cores
"""
import argparse
import time
import warnings
from pathlib import Path

import cv2
import mmcv
import numpy as np
import torch

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.engine.candidates import CandidateScorer, MaskedCandidates
from mmdet_cam.engine.geometry import to_original_image
from mmdet_cam.methods.drise import DRISE
from mmdet_cam.metrics import pointing_hit
from mmdet_cam.model.detector import num_classes_of

REPO = Path(__file__).parents[1]


class CandidatesForVEM:
    """A VEM ``GeneralObjectDetectionModelWrapper``: RGB float batches in, raw candidates out."""

    def __init__(self, scorer, num_classes):
        from vision_explanation_methods.explanations.common import (
            DetectionRecord,
            expand_class_scores,
        )
        self.scorer, self.num_classes = scorer, num_classes
        self.record, self.expand = DetectionRecord, expand_class_scores

    def predict(self, images: torch.Tensor):
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        bgr = [(i.permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8)
               for i in batch]
        return [self.as_record(c.bboxes, c.scores, c.labels) for c in self.scorer(bgr)]

    def as_record(self, bboxes, scores, labels):
        return self.record(torch.as_tensor(bboxes).float(), torch.ones(len(scores)),
                           self.expand(torch.as_tensor(scores), torch.as_tensor(labels),
                                       self.num_classes))


def vem_maps(wrapper, image, detections, num_masks, seed):
    from vision_explanation_methods.explanations.drise import DRISE_saliency
    torch.manual_seed(seed)
    rgb = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1).float() / 255
    target = wrapper.as_record(detections.bboxes, detections.scores, detections.labels)
    maps = DRISE_saliency(wrapper, rgb, [target], num_masks)[0]
    return np.stack([m['detection'][0].numpy() for m in maps])


def pearson(a, b):
    return float(np.mean([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]))


def pointing(maps, detections):
    return float(np.mean([pointing_hit(m, box) for m, box in
                          zip(maps, detections.bboxes.tolist())]))


def throughput(runs: dict, image, detections, masks, rounds) -> dict:
    """Masks per second of each of ``runs`` (name -> function), median over ``rounds`` runs
    taken in turns (so that a change in the machine's load hits all alike)."""
    rates = {name: [] for name in runs}
    for seed in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn(image, detections, masks, seed)
            rates[name].append(masks / (time.perf_counter() - start))
    return {name: float(np.median(rate)) for name, rate in rates.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', nargs='+', default=[
        str(REPO / 'demo' / 'images' / f'shapes_{k}.jpg') for k in (1, 2)])
    parser.add_argument('--masks', type=int, default=1000)
    parser.add_argument('--convergence', type=int, nargs='+',
                        default=[250, 500, 1000, 2000, 4000])
    parser.add_argument('--topk', type=int, default=4, help='boxes explained per image')
    parser.add_argument('--timing-masks', type=int, default=200,
                        help='masks per timed run (3 alternating runs each)')
    parser.add_argument('--upscale', type=int, default=4,
                        help='the speed table also times the first image enlarged this many '
                        'times (a photo-sized input; 1: not)')
    tables = ['speed', 'agreement', 'convergence', 'precision', 'mask']
    parser.add_argument('--tables', nargs='+', default=tables, choices=tables)
    parser.add_argument('--quick', action='store_true', help='1 image, 300 masks')
    args = parser.parse_args()
    if args.quick:
        args.images, args.masks, args.convergence = args.images[:1], 300, [100, 300]
        args.timing_masks = 100

    warnings.simplefilter('ignore')
    torch.set_num_threads(2)
    model = build_detector(str(REPO / 'demo' / 'rtmdet_shapes.py'),
                           str(REPO / 'demo' / 'rtmdet_shapes.pth'))
    base = DetCAM(model, topk=args.topk)
    reduced = 'float16' if torch.cuda.is_available() else 'bfloat16'
    scorers = {dtype: CandidateScorer(model, base.pipeline, dtype=DRISE.DTYPES[dtype])
               for dtype in ('float32', reduced)}
    scorer = scorers['float32']
    num_classes = num_classes_of(model)
    # VEM is needed for the tables that compare with it only
    wrapper = (CandidatesForVEM(scorer, num_classes)
               if {'speed', 'agreement'} & set(args.tables) else None)

    def ours(image, detections, masks, seed, upsample='bilinear', dtype='float32'):
        method = DRISE(num_masks=masks, seed=seed, progress=False, upsample=upsample,
                       dtype=dtype)
        masked = MaskedCandidates(scorers[dtype], image)
        maps = method(masked.size, detections.bboxes.numpy(), detections.scores.numpy(),
                      detections.labels.numpy(), masked, num_classes)
        return to_original_image(maps, masked.sample.metainfo)

    def vem(image, detections, masks, seed):
        return vem_maps(wrapper, image, detections, masks, seed)

    samples = [(Path(path).name, mmcv.imread(path)) for path in args.images]
    samples = [(name, image, base.detect(image)) for name, image in samples]
    print(f'demo model, top {args.topk} boxes per image, 2 CPU threads\n')
    if 'speed' in args.tables:
        print(f'| image | boxes | ours masks/s | VEM masks/s | speed-up |  ({args.timing_masks} '
              'masks, median of 3 alternating runs)')
        print('|---|---:|---:|---:|---:|')
        timed = list(samples)
        if args.upscale > 1:
            name, image, _ = samples[0]
            large = cv2.resize(image, None, fx=args.upscale, fy=args.upscale,
                               interpolation=cv2.INTER_CUBIC)
            timed.append((f'{name} x{args.upscale} ({large.shape[1]}x{large.shape[0]})', large,
                          base.detect(large)))
        for name, image, detections in timed:
            rates = throughput({'ours': ours, 'vem': vem}, image, detections,
                               args.timing_masks, 3)
            mine, theirs = rates['ours'], rates['vem']
            print(f'| {name} | {len(detections)} | {mine:.1f} | {theirs:.1f} | '
                  f'{mine / theirs:.1f} |', flush=True)
    if 'agreement' in args.tables:
        print(f'\n| image | boxes | r(VEM, VEM\') | pointing VEM | upsample | r(ours, VEM) | '
              f'r(ours, ours\') | pointing ours |  ({args.masks} masks)')
        print('|---|---:|---:|---:|---|---:|---:|---:|')
        for name, image, detections in samples:
            reference, reference2 = (vem(image, detections, args.masks, seed) for seed in (0, 1))
            for upsample in ('bilinear', 'nearest'):
                mine, mine2 = (ours(image, detections, args.masks, seed, upsample)
                               for seed in (0, 1))
                print(f'| {name} | {len(detections)} | {pearson(reference, reference2):.2f} | '
                      f'{pointing(reference, detections):.2f} | {upsample} | '
                      f'{np.mean([pearson(mine, reference), pearson(mine2, reference2)]):.2f} | '
                      f'{pearson(mine, mine2):.2f} | {pointing(mine, detections):.2f} |',
                      flush=True)
    if 'convergence' in args.tables:
        name, image, detections = samples[0]
        print(f'\n| masks | r(ours, ours\'), mean over boxes | pointing ours |  ({name})')
        print('|---:|---:|---:|')
        for masks in args.convergence:
            first = ours(image, detections, masks, 0)
            print(f'| {masks} | {pearson(first, ours(image, detections, masks, 1)):.2f} | '
                  f'{pointing(first, detections):.2f} |', flush=True)
    if 'precision' in args.tables:
        print(f'\n| image | boxes | float32 masks/s | {reduced} masks/s | speed-up | '
              f'r({reduced}, float32) | r(float32, float32\') |  ({args.masks} masks; the same '
              f'seed, another for \'; speed: {args.timing_masks} masks, median of 3 alternating '
              'runs)')
        print('|---|---:|---:|---:|---:|---:|---:|')
        for name, image, detections in samples:
            rates = throughput({dtype: (lambda *a, dtype=dtype: ours(*a, dtype=dtype))
                                for dtype in scorers}, image, detections, args.timing_masks, 3)
            full = ours(image, detections, args.masks, 0)
            low = ours(image, detections, args.masks, 0, dtype=reduced)
            other = ours(image, detections, args.masks, 1)
            print(f'| {name} | {len(detections)} | {rates["float32"]:.1f} | '
                  f'{rates[reduced]:.1f} | {rates[reduced] / rates["float32"]:.2f}x | '
                  f'{pearson(low, full):.3f} | {pearson(other, full):.2f} |', flush=True)
    if 'mask' in args.tables:
        mask_table(args, samples)


def mask_table(args, samples):
    """D-RISE explaining the instance demo's boxes and masks."""
    model = build_detector(str(REPO / 'demo' / 'rtmdet-ins_shapes.py'),
                           str(REPO / 'demo' / 'rtmdet-ins_shapes.pth'))

    def run(target, iou='default'):
        options = {} if iou == 'default' else dict(mask_candidate_iou=iou)

        def maps(image, detections, masks, seed):
            cam = DetCAM(model, topk=args.topk, target=target, method=dict(
                type='drise', num_masks=masks, seed=seed, progress=False, **options))
            return cam(image).cams
        return maps

    runs = {'box': run('score'), 'mask': run('mask'), 'every': run('mask', None)}
    print(f'\n| image | boxes | box target masks/s | mask target masks/s | every candidate\'s mask '
          f'masks/s | r(mask, every) | r(every, every\') |  (instance demo; {args.masks} masks, '
          f'the same seed, another for \'; speed: {args.timing_masks} masks, median of 3 '
          'alternating runs)')
    print('|---|---:|---:|---:|---:|---:|---:|')
    for name, image, _ in samples:
        rates = throughput(runs, image, None, args.timing_masks, 3)
        near, every = runs['mask'](image, None, args.masks, 0), runs['every'](image, None,
                                                                               args.masks, 0)
        other = runs['every'](image, None, args.masks, 1)
        print(f'| {name} | {len(near)} | {rates["box"]:.1f} | {rates["mask"]:.1f} | '
              f'{rates["every"]:.1f} | {pearson(near, every):.3f} | {pearson(other, every):.2f} |',
              flush=True)


if __name__ == '__main__':
    main()
