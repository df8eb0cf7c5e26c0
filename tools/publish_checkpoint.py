"""Strip a training checkpoint down to weights and dataset metadata, so that it is small and
loads weights-only (no optimizer state, no pickled message hub).

    python tools/publish_checkpoint.py work_dirs/x/epoch_24.pth demo/rtmdet_shapes.pth
"""
import argparse

import mmdet
import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='a checkpoint you trust (it is fully unpickled)')
    parser.add_argument('out')
    args = parser.parse_args()
    checkpoint = torch.load(args.checkpoint, map_location='cpu', weights_only=False)
    meta = checkpoint.get('meta', {})
    published = dict(
        state_dict=checkpoint['state_dict'],
        meta=dict(dataset_meta=meta.get('dataset_meta', {}), epoch=meta.get('epoch'),
                  iter=meta.get('iter'), mmdet_version=mmdet.__version__))
    torch.save(published, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
