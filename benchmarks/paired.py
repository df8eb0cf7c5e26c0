"""Paired per-detection differences between two runs of ``benchmarks/faithfulness.py`` on the
same images (e.g. one method at two target layers, or two methods), with 95% bootstrap
intervals over the detections.

    python benchmarks/paired.py \\
        work_dirs/faithfulness/dino_shapes_n40_s20_t0.3_r2_y8.odam.images.jsonl \\
        work_dirs/faithfulness/dino_shapes_encoder_n40_s20_t0.3_r2_y8.odam.images.jsonl

Both files must hold the same images with the same matched detections (same model, score
threshold and images: the target layers and the method change the maps, not the detections).
"""
import argparse
import json
from pathlib import Path

import numpy as np

KEYS = ('oa', 'deletion', 'insertion', 'pointing', 'energy', 'odi')


def per_detection(path: Path) -> dict:
    images = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        images[record['index']] = record['rows']
    rows = [row for index in sorted(images) for row in images[index]]
    values = {key: np.array([r['insertion'] - r['deletion'] if key == 'oa' else r[key]
                             for r in rows]) for key in KEYS}
    return dict(images=sorted(images), counts=[len(images[i]) for i in sorted(images)], **values)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('first', type=Path, help="a run's <settings>.<method>.images.jsonl")
    parser.add_argument('second', type=Path)
    parser.add_argument('--resamples', type=int, default=5000)
    args = parser.parse_args()
    a, b = per_detection(args.first), per_detection(args.second)
    if a['images'] != b['images'] or a['counts'] != b['counts']:
        raise SystemExit('error: the two runs do not cover the same images and detections')
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(a['oa']), (args.resamples, len(a['oa'])))
    print(f'{len(a["oa"])} detections on {len(a["images"])} images; second - first\n')
    print('| measure | first | second | difference | 95% interval |')
    print('|---|---:|---:|---:|---|')
    for key in KEYS:
        difference = b[key] - a[key]
        low, high = np.percentile(difference[draws].mean(axis=1), [2.5, 97.5])
        print(f'| {key} | {a[key].mean():.3f} | {b[key].mean():.3f} | {difference.mean():+.3f} '
              f'| [{low:+.3f}, {high:+.3f}] |')


if __name__ == '__main__':
    main()
