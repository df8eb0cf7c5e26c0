"""ScoreCAM and AblationCAM per detection: mmdet-cam's shared forwards against the library
called once per detection, on the shipped demo model.

pytorch_grad_cam's ``ScoreCAM`` / ``AblationCAM`` re-run the model once per channel *for each
target*, so N detections cost N x C forwards; ``scorecam`` / ``ablationcam`` here score all N
detections from the same C forwards (and AblationCAM re-runs only what follows the layer when
it is the whole neck). Both give the same maps (tests/test_perturbation.py). The table gives
seconds per image for N detections, from one run:

  ours s      DetCAM(method=...) for the top N detections
  library s   the library class's own ``__call__`` once per detection (same layer, same
              targets: each detection's tracked score among the raw candidates)
  speed-up    library / ours
  neck s      ours with the default layer (the whole neck: 3 levels), which the library's
              AblationLayer cannot replace (it returns one tensor, the neck a tuple)

    python benchmarks/perturbation.py --quick     # N = 1, 4 (about a minute)
    python benchmarks/perturbation.py             # N = 1, 4, 8
"""
import argparse
import time
import warnings
from pathlib import Path

import mmcv
import torch
from pytorch_grad_cam import AblationCAM, ScoreCAM

from mmdet_cam import DetCAM, build_detector, get_layer
from mmdet_cam.engine.candidates import RawCandidatesModel, TrackedDetection
from mmdet_cam.model.detector import preprocess

REPO = Path(__file__).parents[1]
LAYER = 'neck.out_convs.0'  # a [B, C, H, W] tensor: what the library's AblationLayer needs
METHODS = {'scorecam': (dict(type='scorecam'), ScoreCAM),
           'ablationcam': (dict(type='ablationcam', ablation='library'), AblationCAM)}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def library_per_box(model, pipeline, image, detections, library_class):
    inputs, data_samples = preprocess(model, pipeline, image)
    wrapped = RawCandidatesModel(model, data_samples[0])
    for box, label in zip(detections.bboxes, detections.labels):
        with library_class(wrapped, [get_layer(model, LAYER)]) as library:
            library(inputs, targets=[TrackedDetection(box, label)])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image', default=str(REPO / 'demo' / 'images' / 'shapes_1.jpg'))
    parser.add_argument('--boxes', type=int, nargs='+', default=[1, 4, 8])
    parser.add_argument('--quick', action='store_true', help='N = 1, 4')
    args = parser.parse_args()
    if args.quick:
        args.boxes = [1, 4]

    warnings.simplefilter('ignore')
    torch.set_num_threads(2)
    model = build_detector(str(REPO / 'demo' / 'rtmdet_shapes.py'),
                           str(REPO / 'demo' / 'rtmdet_shapes.pth'))
    image = mmcv.imread(args.image)
    print(f'demo model, {Path(args.image).name}, layer {LAYER}, 2 CPU threads\n')
    print('| method | boxes | ours s | library s | speed-up | neck s |')
    print('|---|---:|---:|---:|---:|---:|')
    for name, (method, library_class) in METHODS.items():
        for count in args.boxes:
            cam = DetCAM(model, method=method, target_layers=LAYER, topk=count)
            result, ours = timed(lambda: cam(image))
            _, library = timed(lambda: library_per_box(model, cam.pipeline, image,
                                                       result.detections, library_class))
            _, neck = timed(lambda: DetCAM(model, method=method, topk=count)(image))
            print(f'| {name} | {len(result)} | {ours:.1f} | {library:.1f} | '
                  f'{library / ours:.1f} | {neck:.1f} |', flush=True)


if __name__ == '__main__':
    main()
