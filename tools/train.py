"""Train a detector with mmengine's Runner (mmdet's tools/train.py is not pip-installed).

    python tools/train.py demo/rtmdet_shapes.py --work-dir work_dirs/rtmdet_shapes [--resume]
"""
import argparse

from mmengine.config import Config, DictAction
from mmengine.runner import Runner


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--resume', action='store_true',
                        help='continue from the latest checkpoint in --work-dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    cfg.work_dir = args.work_dir
    cfg.resume = cfg.resume or args.resume
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    Runner.from_cfg(cfg).train()


if __name__ == '__main__':
    main()
