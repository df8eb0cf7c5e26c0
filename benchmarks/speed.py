"""Speed of per-box maps: the engine against pytorch_grad_cam's naive per-box loop and against
one plain forward, measured in one run on the same image.

  engine      DetCAM for N boxes (median of --repeats calls of one DetCAM after an untimed
              first call, as for the images of a folder), everything included
  no replay   the same with ``local_replay=False``: each box back-propagated through the
              whole dense head instead of a window of it around the box's cell
  naive       pytorch_grad_cam's GradCAM.__call__ once per box, with a target returning that
              box's score: a fresh forward and a full backward each time
  forward     mmdet's own inference on the image (``model.predict`` under ``no_grad``), timed
              right before each timed engine call: its column is the median of all of them,
              and engine/forward the median of each call's own ratio, so that a shared
              machine's drift between rows does not move the ratio (it moved it by 10-20%)
  peak RSS    the process's peak resident memory during the engine rows (taken before the
              naive loop runs, whose freed memory can stay with the process)

Models are built from mmdet's shipped configs (init_weights(), seed 0, the configs' own test
pipelines) with score thresholds removed so that untrained models still give N boxes. All use
the same target layers: every level of the neck.

    python benchmarks/speed.py --quick              # YOLOX-s, N = 1 10, a few minutes
    python benchmarks/speed.py                      # all models, N = 1 10 100, CPU (long)
    python benchmarks/speed.py --models retinanet_r50 --n 10 100 --repeats 1
    python benchmarks/speed.py --models yolox_s --n 10 --device cuda:0
    python benchmarks/speed.py --models dino_r50_encoder deformable_detr_r50_encoder --n 1 10
"""
import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAM

from mmdet_cam import DetCAM, build_detector, get_layer, resolve_config
from mmdet_cam.model.detector import keep_all_detections, preprocess
from mmdet_cam.settings import DEFAULT_METHOD
from mmdet_cam.shapes import make_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from library_path import DetectorAsCAMModel, MatchedDetectionTarget  # noqa: E402 (tests/)

DETR_NECK = ['neck.convs.0', 'neck.convs.1', 'neck.convs.2', 'neck.extra_convs.0']
# model -> (config, target layers); `_encoder` rows target the encoder's output memory (mapped
# back onto the feature grids), whose backward skips the encoder: the layer choice for DETR-style
# models. The naive loop's cost does not depend on the layer (pytorch_grad_cam back-propagates
# the whole model every call), so those rows time it at the neck.
MODELS = {
    'retinanet_r50': ('retinanet/retinanet_r50_fpn_1x_coco.py',
                      [f'neck.fpn_convs.{i}' for i in range(5)]),
    'yolox_s': ('yolox/yolox_s_8xb8-300e_coco.py', [f'neck.out_convs.{i}' for i in range(3)]),
    'faster_rcnn_r50': ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                        [f'neck.fpn_convs.{i}' for i in range(4)]),
    'dino_r50': ('dino/dino-4scale_r50_8xb2-12e_coco.py', DETR_NECK),
    'dino_r50_encoder': ('dino/dino-4scale_r50_8xb2-12e_coco.py', ['encoder']),
    'deformable_detr_r50': ('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', DETR_NECK),
    'deformable_detr_r50_encoder': ('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
                                    ['encoder']),
}


def benchmark_config(name: str, max_boxes: int):
    """The shipped config with no score threshold and room for ``max_boxes`` detections."""
    cfg = resolve_config(name)
    keep_all_detections(cfg.model.get('test_cfg'), max_boxes)
    return cfg


class PeakRSS:
    """Peak resident memory of this process (MB) while active: the kernel's high-water mark
    (``VmHWM``), reset on entry (Linux). No sampling thread competes with what is timed."""

    def __enter__(self):
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return self

    def __exit__(self, *exc):
        with open('/proc/self/status') as f:
            kilobytes = next(int(line.split()[1]) for line in f if line.startswith('VmHWM'))
        self.peak = kilobytes / 2**10


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_seconds(model, pipeline, image, device: str = 'cpu'):
    inputs, samples = preprocess(model, pipeline, image)
    with torch.no_grad():
        return timed(lambda: (model.predict(inputs, samples), sync(device)))


def naive_call_seconds(model, inputs, samples, layers, detections, count):
    """Seconds of each of ``count`` GradCAM.__call__ runs, one per detection."""
    wrapped = DetectorAsCAMModel(model, samples)
    seconds = []
    with GradCAM(wrapped, layers) as library:
        for k in range(count):
            target = MatchedDetectionTarget(detections.bboxes[k], detections.labels[k])
            seconds.append(timed(lambda: library(inputs, targets=[target])))
    return seconds


def sync(device):
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--n', nargs='+', type=int, default=[1, 10, 100])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--naive-max', type=int, default=10,
                        help='time the naive loop on at most this many boxes; larger N are '
                        'extrapolated from its per-box time (marked ~)')
    parser.add_argument('--memory-n', type=int, default=300,
                        help='also report the engine\'s peak memory for this many boxes')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batched-backward', action='store_true',
                        help='engine rows with batched_backward=True (all boxes of an image in '
                        'vmapped backward passes where no local replay applies)')
    parser.add_argument('--single-call', action='store_true',
                        help='for long rows (DETR-style necks, N = 100): one timed engine call '
                        'per N, no warm-up call and no no-replay row (DETR-style heads have no '
                        'replay)')
    parser.add_argument('--engine-only', action='store_true',
                        help='the engine and forward columns only: no no-replay row, no naive '
                        'loop (re-measuring a change)')
    parser.add_argument('--quick', action='store_true',
                        help='YOLOX-s, N = 1 10, one repeat, no memory row')
    args = parser.parse_args()
    if args.quick:
        args.models, args.n, args.repeats, args.memory_n = ['yolox_s'], [1, 10], 1, 0
    warnings.simplefilter('ignore')
    cuda = args.device.startswith('cuda')

    image = make_image(np.random.default_rng(0), 480, 640)[0]
    print(f'machine: {platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} torch threads, device {args.device}, torch '
          f'{torch.__version__}; image 480x640; method {DEFAULT_METHOD} (the default; naive: '
          "pytorch_grad_cam's GradCAM); every neck level (_encoder rows: the encoder memory)"
          f'{"; batched backward" if args.batched_backward else ""}\n')
    print('| model | input | N | engine s | no replay s | naive s | forward s | naive/engine '
          '| no replay/engine | engine/forward | peak RSS MB |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for key in args.models:
        config, names = MODELS[key]
        torch.manual_seed(0)
        model = build_detector(benchmark_config(config, max(args.n + [args.memory_n])),
                               device=args.device)
        layers = [get_layer(model, name) for name in (DETR_NECK if names == ['encoder']
                                                      else names)]
        probe = DetCAM(model, target_layers=names, score_thr=0, topk=max(args.n))
        inputs, samples = preprocess(model, probe.pipeline, image)
        size = 'x'.join(str(s) for s in inputs.shape[-2:])
        detections = probe.detect(image)  # the boxes the engine explains, without maps
        forward_seconds(model, probe.pipeline, image, args.device)  # warm-up
        forwards, ratios = [], {}  # forward seconds; per N, each engine call / its forward
        rows = []
        for n in args.n + ([args.memory_n] if args.memory_n else []):
            runs = {True: [], False: []}
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with PeakRSS() as memory:
                both = n in args.n and not (args.single_call or args.engine_only)
                for replay in (True, False) if both else (True,):
                    cam = DetCAM(model, target_layers=names, score_thr=0, topk=n,
                                 local_replay=replay, batched_backward=args.batched_backward)
                    if n in args.n and not args.single_call:
                        cam(image)  # warm-up, as a folder's first image
                    for _ in range(args.repeats if n in args.n else 1):
                        timed_pair = replay and n in args.n
                        forward = (forward_seconds(model, probe.pipeline, image, args.device)
                                   if timed_pair else None)
                        runs[replay].append(timed(lambda: (cam(image), sync(args.device))))
                        if forward is not None:
                            forwards.append(forward)
                            ratios.setdefault(n, []).append(runs[replay][-1] / forward)
            peak = f'{memory.peak:.0f}'
            if cuda:
                peak += f' (CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f})'
            rows.append((n, statistics.median(runs[True]),
                         statistics.median(runs[False]) if runs[False] else None, peak,
                         n in args.n))
        forward = statistics.median(forwards)
        # after the engine rows: memory the naive loop's backward freed can stay in the process
        naive_calls = naive_call_seconds(model, inputs, samples, layers, detections,
                                         0 if args.engine_only else
                                         min(args.naive_max, max(args.n), len(detections)))
        for n, engine, no_replay, peak, listed in rows:
            if not listed:  # the memory row
                print(f'| {key} | {size} | {n} | {engine:.2f} | | | | | | | {peak} |')
                continue
            naive, naive_text = None, ''
            if n <= len(naive_calls):
                naive = sum(naive_calls[:n])
                naive_text = f'{naive:.2f}'
            elif naive_calls:
                naive = statistics.mean(naive_calls) * n
                naive_text = f'~{naive:.1f}'
            ratio = f'{naive / engine:.1f}' if naive else ''
            no_replay_text, replay_ratio = (('', '') if no_replay is None else
                                            (f'{no_replay:.2f}', f'{no_replay / engine:.1f}'))
            print(f'| {key} | {size} | {n} | {engine:.2f} | {no_replay_text} | {naive_text} | '
                  f'{forward:.2f} | {ratio} | {replay_ratio} | '
                  f'{statistics.median(ratios[n]):.2f} | {peak} |', flush=True)
        del model


if __name__ == '__main__':
    main()
