"""mmdet's test loop with mmdet-cam's hook and metric, on one process or many.

    python tools/test_cam.py configs/rtmdet_shapes_cam.py demo/rtmdet_shapes.pth
    torchrun --nproc_per_node 2 tools/test_cam.py configs/rtmdet_shapes_cam.py \\
        demo/rtmdet_shapes.pth --launcher pytorch

(mmdet's own tools/test.py is not installed with the pip package.) The config decides what
runs: ``custom_hooks`` with ``DetCAMHook`` writes the maps, ``test_evaluator`` with
``CAMLocalizationMetric`` scores them; mmengine's evaluator merges the results of all
processes. The checkpoint loads weights-only, as everywhere in mmdet-cam. ``--triage`` turns on
the hook's triage: detections tagged TP / FP, missed ground-truth boxes explained, and
``<work_dir>/cam/triage.json`` listing the run's false positives and missed objects.
"""
import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
from mmengine.config import Config, DictAction
from mmengine.dist import get_rank
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from mmdet_cam.errors import DetCAMError
from mmdet_cam.model.checkpoint import load_checkpoint


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='test config (e.g. one from configs/)')
    parser.add_argument('checkpoint', help='checkpoint path or URL')
    parser.add_argument('--work-dir', help='where logs, metrics and CAM files go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config settings')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher (as in mmdet tools/test.py)')
    parser.add_argument('--triage', action='store_true',
                        help='tag detections TP/FP and explain missed ground-truth boxes')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow a full (unsafe) unpickle of the checkpoint')
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', '0')
    return args


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.triage:
        hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') == 'DetCAMHook']
        if not hooks:
            raise SystemExit(f'error: {args.config} has no DetCAMHook in custom_hooks')
        for hook in hooks:
            hook['triage'] = True
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or str(
        Path('work_dirs') / Path(args.config).stem)
    cfg.load_from = None  # loaded below, weights-only
    if args.launcher == 'pytorch' and not torch.cuda.is_available():
        # mmengine's pytorch launcher calls torch.cuda.set_device; on a CPU-only host start a
        # gloo group here (Runner then skips init_dist) and let DDP wrap a CPU module.
        torch.distributed.init_process_group(backend='gloo')
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None)
    runner = Runner.from_cfg(cfg)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    load_checkpoint(model, args.checkpoint, trust=args.trust_checkpoint)
    metrics = runner.test()
    if get_rank() == 0:
        path = Path(cfg.work_dir) / 'test_metrics.json'
        path.write_text(json.dumps(metrics, indent=2))
        print(f'metrics written to {path}')
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        # A rank of a CPU (gloo) run has aborted in C++ teardown at interpreter exit after all
        # its work was done ("terminate called without an active exception", SIGABRT; twice in
        # full test-suite runs, never alone). Everything is written: leave without that teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == '__main__':
    try:
        main()
    except DetCAMError as error:  # a user mistake (e.g. resuming into another run's folder)
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
