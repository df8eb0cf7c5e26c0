"""Write the synthetic shapes dataset (COCO format): python tools/make_shapes_dataset.py DIR

``--kind evidence``: the evidence scenes (classes set by a small cue; ``mmdet_cam.shapes``)."""
import argparse
from pathlib import Path

from mmdet_cam.shapes import write_split


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('out_dir', nargs='?', default='data/shapes')
    parser.add_argument('--train', type=int, default=1000, help='training images')
    parser.add_argument('--val', type=int, default=200, help='validation images')
    parser.add_argument('--seed', type=int, default=0,
                        help='the val split uses seed + 1, so the splits never share images')
    parser.add_argument('--kind', choices=('shapes', 'evidence'), default='shapes',
                        help='shapes (the demo data) or evidence (cues decide the class)')
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    for split, count, seed in (('train', args.train, args.seed), ('val', args.val, args.seed + 1)):
        print(f'{split}: {count} images -> {write_split(out_dir, split, count, seed, args.kind)}')


if __name__ == '__main__':
    main()
