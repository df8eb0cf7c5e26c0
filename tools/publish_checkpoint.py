"""Strip a training checkpoint down to weights and dataset metadata, so that it is small and
loads weights-only (no optimizer state, no pickled message hub).

    python tools/publish_checkpoint.py work_dirs/x/epoch_24.pth demo/rtmdet_shapes.pth
    python tools/publish_checkpoint.py work_dirs/y/epoch_18.pth demo/dino_shapes.pth --half
    python tools/publish_checkpoint.py demo/dino_shapes.pth work_dirs/start.pth \
        --take backbone.=demo/rtmdet_evidence.pth

``--take PREFIX=CHECKPOINT`` replaces every weight whose name starts with PREFIX by the same-named
weight of another checkpoint (a start for fine-tuning that combines two trained models).

``--half`` stores floating-point weights as float16 (half the size); loading converts them back
to the model's float32.
"""
import argparse

import mmdet
import torch


def take_weights(state_dict, prefix, path):
    """``state_dict`` with its weights named ``prefix...`` replaced by checkpoint ``path``'s."""
    other = torch.load(path, map_location='cpu', weights_only=False)['state_dict']
    taken = {key: value for key, value in other.items() if key.startswith(prefix)}
    replaced = [key for key in state_dict if key.startswith(prefix)]
    if not taken or sorted(taken) != sorted(replaced):
        raise SystemExit(f'error: the weights named {prefix}* differ between the checkpoints '
                         f'({len(replaced)} here, {len(taken)} in {path})')
    mismatched = [key for key in taken if taken[key].shape != state_dict[key].shape]
    if mismatched:
        raise SystemExit(f'error: {len(mismatched)} weights differ in shape, e.g. {mismatched[0]}')
    state_dict = dict(state_dict)
    state_dict.update({key: value.to(state_dict[key].dtype) for key, value in taken.items()})
    print(f'took {len(taken)} weights named {prefix}* from {path}')
    return state_dict


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='a checkpoint you trust (it is fully unpickled)')
    parser.add_argument('out')
    parser.add_argument('--half', action='store_true', help='float16 weights (half the size)')
    parser.add_argument('--take', action='append', default=[], metavar='PREFIX=CHECKPOINT',
                        help="weights named PREFIX... from another checkpoint ('backbone.=a.pth')")
    args = parser.parse_args()
    checkpoint = torch.load(args.checkpoint, map_location='cpu', weights_only=False)
    meta = checkpoint.get('meta', {})
    state_dict = checkpoint['state_dict']
    for take in args.take:
        prefix, _, path = take.partition('=')
        state_dict = take_weights(state_dict, prefix, path)
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
