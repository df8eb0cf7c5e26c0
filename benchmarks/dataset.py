"""A whole validation set: mmdet's own test loop against the same loop with ``DetCAMHook``.

Both runs are mmengine Runners built from the same config (the shapes demo by default, its 200
val images), with the checkpoint loaded weights-only, in this process, one after the other:

  mmdet      the config's test loop as it is (COCO mAP), no hook
  hook       the same loop with ``DetCAMHook`` (default method and layers, ``score_thr``),
             writing every image's maps and overlays as a user's run does

Images per second of each and their ratio; the hook's run also says how many detections it
explained.

    python benchmarks/dataset.py --quick        # 20 images
    python benchmarks/dataset.py                # the 200 val images of data/shapes
    python benchmarks/dataset.py --config demo/dino_shapes.py --checkpoint demo/dino_shapes.pth
"""
import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.runner import Runner

from mmdet_cam.model.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def timed_test(config: str, checkpoint: str, images: int, work_dir: Path, hook=None):
    """Seconds of ``Runner.test()`` on the first ``images`` test images; ``hook``: a
    DetCAMHook config to add."""
    cfg = Config.fromfile(config)
    cfg.work_dir = str(work_dir)
    cfg.load_from = None
    cfg.default_hooks.pop('visualization', None)
    cfg.test_dataloader.dataset.indices = images
    cfg.custom_hooks = [hook] if hook else []
    if hook:
        cfg.custom_imports = dict(imports=['mmdet_cam'], allow_failed_imports=False)
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    load_checkpoint(runner.model, checkpoint)
    start = time.perf_counter()
    runner.test()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=str(REPO / 'demo' / 'rtmdet_shapes.py'))
    parser.add_argument('--checkpoint', default=str(REPO / 'demo' / 'rtmdet_shapes.pth'))
    parser.add_argument('--images', type=int, default=200)
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help="the hook's score threshold (detections explained)")
    parser.add_argument('--quick', action='store_true', help='20 images')
    args = parser.parse_args()
    if args.quick:
        args.images = 20
    logging.getLogger('mmengine').setLevel(logging.WARNING)
    MMLogger.get_instance('mmengine', log_level='WARNING')
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # an untimed pass first: imports, the dataset's annotations, the allocator warm
        timed_test(args.config, args.checkpoint, 2, tmp / 'warm')
        plain = timed_test(args.config, args.checkpoint, args.images, tmp / 'mmdet')
        hook = dict(type='DetCAMHook', out_dir=str(tmp / 'cam'), score_thr=args.score_thr)
        explained = timed_test(args.config, args.checkpoint, args.images, tmp / 'hook', hook)
        records = [json.loads(p.read_text()) for p in (tmp / 'cam').glob('*.json')]
        boxes = sum(len(r['detections']) for r in records
                    if isinstance(r, dict) and isinstance(r.get('detections'), list))
    print(f'machine: {platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} torch threads; {Path(args.config).name}, '
          f'{args.images} test images, hook: default method, score_thr {args.score_thr}\n')
    print('| run | images | s | images/s | detections explained | time against mmdet\'s |')
    print('|---|---:|---:|---:|---:|---:|')
    print(f'| mmdet test loop | {args.images} | {plain:.1f} | '
          f'{args.images / plain:.2f} | | |')
    print(f'| with DetCAMHook | {args.images} | {explained:.1f} | '
          f'{args.images / explained:.2f} | {boxes} | {explained / plain:.2f}x |')


if __name__ == '__main__':
    main()
