"""D-RISE: mmdet-cam's ``drise`` against the reference implementation, on the shipped demo model.

The reference is ``DRISE_saliency`` of Microsoft's ``vision-explanation-methods`` (VEM), which
runs the detector once per mask. It is wrapped here to see exactly the detector outputs ours
sees (raw candidates of the masked image, class vectors completed by its own
``expand_class_scores``), so the two differ only in masks (VEM: nearest-neighbour upsampling;
ours: bilinear with a sub-cell shift, as the paper) and in batching. For each image and mask
count the table gives

  masks/s        masks per second, ours (batched) and VEM's (one forward per mask)
  speed-up       ours / VEM
  r(ours, VEM)   Pearson correlation per box between our map and VEM's (mean over boxes)
  r(VEM, VEM')   the same between two VEM runs with different seeds: the ceiling for the above
  r(ours, ours') the same between two of ours
  pointing       share of boxes whose map peaks inside the box, ours and VEM's

then a convergence table on the first image: r(ours, ours') against the number of masks.

VEM is a benchmark extra, not a dependency. Its metadata pins ``matplotlib<3.7``, whose wheels
are built for numpy 1 and break ``import mmdet`` under numpy 2, so install it without its
dependencies (only ``pandas`` is needed for the D-RISE module):

    pip install --no-deps vision-explanation-methods pandas
    python benchmarks/drise.py --quick          # 1 image, 300 masks, a few minutes
    nohup python benchmarks/drise.py > drise.log 2>&1 &   # 2 images, ~45 min on 2 cores
"""
import argparse
import time
import warnings
from pathlib import Path

import mmcv
import numpy as np
import torch

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.engine.candidates import CandidateScorer
from mmdet_cam.methods.drise import DRISE, num_classes_of
from mmdet_cam.metrics import pointing_hit

REPO = Path(__file__).parents[1]


class CandidatesForVEM:
    """A VEM ``GeneralObjectDetectionModelWrapper``: RGB float batches in, raw candidates out."""

    def __init__(self, scorer, num_classes):
        from vision_explanation_methods.explanations.common import (DetectionRecord,
                                                                    expand_class_scores)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', nargs='+', default=[
        str(REPO / 'demo' / 'images' / f'shapes_{k}.jpg') for k in (1, 2)])
    parser.add_argument('--masks', type=int, default=1000)
    parser.add_argument('--convergence', type=int, nargs='+',
                        default=[250, 500, 1000, 2000, 4000])
    parser.add_argument('--topk', type=int, default=4, help='boxes explained per image')
    parser.add_argument('--quick', action='store_true', help='1 image, 300 masks')
    args = parser.parse_args()
    if args.quick:
        args.images, args.masks, args.convergence = args.images[:1], 300, [100, 300]

    warnings.simplefilter('ignore')
    torch.set_num_threads(2)
    model = build_detector(str(REPO / 'demo' / 'rtmdet_shapes.py'),
                           str(REPO / 'demo' / 'rtmdet_shapes.pth'))
    base = DetCAM(model, topk=args.topk)
    scorer = CandidateScorer(model, base.pipeline)
    wrapper = CandidatesForVEM(scorer, num_classes_of(model))

    def ours(image, detections, masks, seed):
        method = DRISE(num_masks=masks, seed=seed, progress=False)
        return method(image, detections.bboxes.numpy(), detections.scores.numpy(),
                      detections.labels.numpy(), scorer, wrapper.num_classes)

    print(f'{args.masks} masks, top {args.topk} boxes per image, 2 CPU threads\n')
    print('| image | boxes | ours masks/s | VEM masks/s | speed-up | r(ours, VEM) | '
          'r(VEM, VEM\') | r(ours, ours\') | pointing ours | pointing VEM |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    samples = []
    for path in args.images:
        image = mmcv.imread(path)
        detections = base.detect(image)
        start = time.time()
        mine = ours(image, detections, args.masks, 0)
        ours_rate = args.masks / (time.time() - start)
        start = time.time()
        reference = vem_maps(wrapper, image, detections, args.masks, 0)
        vem_rate = args.masks / (time.time() - start)
        reference2 = vem_maps(wrapper, image, detections, args.masks, 1)
        mine2 = ours(image, detections, args.masks, 1)
        samples.append((image, detections))
        print(f'| {Path(path).name} | {len(detections)} | {ours_rate:.1f} | {vem_rate:.1f} | '
              f'{ours_rate / vem_rate:.1f} | {pearson(mine, reference):.2f} | '
              f'{pearson(reference, reference2):.2f} | {pearson(mine, mine2):.2f} | '
              f'{pointing(mine, detections):.2f} | {pointing(reference, detections):.2f} |',
              flush=True)

    print('\n| masks | r(ours, ours\'), mean over boxes | pointing ours |')
    print('|---:|---:|---:|')
    for masks in args.convergence:
        r, hits = [], []
        for image, detections in samples[:1]:
            first = ours(image, detections, masks, 0)
            r.append(pearson(first, ours(image, detections, masks, 1)))
            hits.append(pointing(first, detections))
        print(f'| {masks} | {np.mean(r):.2f} | {np.mean(hits):.2f} |', flush=True)


if __name__ == '__main__':
    main()
