"""Strip a training checkpoint down to weights and dataset metadata, so that it is small and
loads weights-only (no optimizer state, no pickled message hub).

    python tools/publish_checkpoint.py work_dirs/x/epoch_24.pth demo/rtmdet_shapes.pth
    python tools/publish_checkpoint.py work_dirs/y/epoch_18.pth demo/dino_shapes.pth --half

``--half`` stores floating-point weights as float16 (half the size); loading converts them back
to the model's float32.
"""
import argparse

import mmdet
import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='a checkpoint you trust (it is fully unpickled)')
    parser.add_argument('out')
    parser.add_argument('--half', action='store_true', help='float16 weights (half the size)')
    args = parser.parse_args()
    checkpoint = torch.load(args.checkpoint, map_location='cpu', weights_only=False)
    meta = checkpoint.get('meta', {})
    state_dict = checkpoint['state_dict']
    if args.half:
        state_dict = {key: value.half() if value.is_floating_point() else value
                      for key, value in state_dict.items()}
    published = dict(
        state_dict=state_dict,
        meta=dict(dataset_meta=meta.get('dataset_meta', {}), epoch=meta.get('epoch'),
                  iter=meta.get('iter'), mmdet_version=mmdet.__version__))
    torch.save(published, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
