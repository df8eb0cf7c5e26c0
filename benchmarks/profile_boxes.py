"""Where the time of N boxes' maps goes: one DetCAM call profiled, after an untimed one.

Two views of the same call (the models and image of ``benchmarks/speed.py``):
  functions   cProfile's cumulative seconds of the engine's steps (mmdet_cam functions, and
              torch's backward) as a share of the call: the table to read before optimising
  operators   torch.profiler's operators by their own CPU time (what the steps spend it on)

    python benchmarks/profile_boxes.py --quick                    # YOLOX-s, N = 10
    python benchmarks/profile_boxes.py --model faster_rcnn_r50 --n 100
    python benchmarks/profile_boxes.py --model dino_r50_encoder --n 100 --device cuda:0

Figures are seconds on this machine; on a shared CPU only the shares are worth comparing.
"""
import argparse
import cProfile
import pstats
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.shapes import make_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import MODELS, benchmark_config  # noqa: E402 (benchmarks/)

# the engine's steps, by the file and function cProfile names them
STEPS = (
    ('preprocess (test pipeline)', 'model/detector.py', 'preprocess'),
    ('forward with the graph kept', 'engine/session.py', '__enter__'),
    ('gradients of every box', 'engine/layer_maps.py', 'gradients'),
    ('  of which torch.autograd.grad', 'torch/autograd/__init__.py', 'grad'),
    ('  of which local replay of the head', 'engine/replay.py', None),
    ('maps from the gradients', 'engine/layer_maps.py', 'maps'),
    ('  of which the CAM formula (pytorch_grad_cam)', 'pytorch_grad_cam/', None),
    ('onto the original image', 'engine/geometry.py', 'to_original_image'),
)


def step_seconds(stats: pstats.Stats) -> dict:
    """Cumulative seconds per step: for each step, the largest cumulative time among the
    functions that match it (a step's functions call each other: their times nest)."""
    found = {}
    for (path, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        for name, file_part, function_name in STEPS:
            if file_part in path and (function_name is None or function == function_name):
                found[name] = max(found.get(name, 0.0), cumulative)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='faster_rcnn_r50', choices=list(MODELS))
    parser.add_argument('--n', type=int, default=100, help='boxes explained')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--method', default='gradcam')
    parser.add_argument('--operators', type=int, default=15, help='operator rows to print')
    parser.add_argument('--quick', action='store_true', help='YOLOX-s, N = 10')
    args = parser.parse_args()
    if args.quick:
        args.model, args.n = 'yolox_s', 10
    warnings.simplefilter('ignore')
    torch.manual_seed(0)

    config, layers = MODELS[args.model]
    model = build_detector(benchmark_config(config, args.n), None, device=args.device,
                           warn_untrained=False)
    image = make_image(np.random.default_rng(0), 480, 640)[0]
    cam = DetCAM(model, target_layers=layers, score_thr=0, topk=args.n, method=args.method)
    cam(image)  # untimed: first-call costs are not a box's

    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    result = cam(image)
    profile.disable()
    total = time.perf_counter() - start
    steps = step_seconds(pstats.Stats(profile))
    print(f'{args.model}, {len(result)} boxes, {args.device}: one call {total:.2f} s '
          f'({total / max(len(result), 1) * 1000:.1f} ms per box; cProfile overhead included)\n')
    print('| step | seconds | share of the call |')
    print('|---|---:|---:|')
    for name, _, _ in STEPS:
        if name in steps:
            print(f'| {name} | {steps[name]:.3f} | {steps[name] / total:.0%} |')

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        cam(image)
    print(f'\noperators by own CPU time (torch.profiler, top {args.operators}):\n')
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=args.operators))


if __name__ == '__main__':
    main()
