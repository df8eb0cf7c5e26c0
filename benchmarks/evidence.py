"""Do the maps point at what decided the detection? Every method scored on evidence known by
construction (``mmdet_cam.shapes.make_evidence_image``: a small cue alone sets each object's
class; a ``tagged`` object's cue lies outside its box).

For fresh evidence scenes (seeds from 100000 on: in neither the train nor the val split) and
each detection scoring >= --score-thr that matches an object of its class (IoU >= 0.5):
  verified  the detector uses the cue: the same scene re-rendered without this object's cue
            drops the detection's tracked score (best IoU x probability of its class among the
            raw candidates) to at most half. Only verified detections are scored below.
  pointing  the map's peak lies on the cue, dilated by 3 pixels
  mass      share of the map's positive mass on the cue (CLEVR-XAI relevance mass)
  rank      share of the map's |cue| highest pixels on the cue (CLEVR-XAI relevance rank)
each for cues inside the box (``in``: cross, ring) and outside it (``out``: tagged), and
``s/box``: seconds per explained detection; ``sanity`` (first --sanity scenes): the mean
Spearman correlation of each map with the map of the same raw candidate once the box head is
randomised (parameter randomisation; a method passes below 0.5). Baselines: ``centre`` (a
Gaussian on the detected box) and ``random`` (smooth random blobs), as in
benchmarks/faithfulness.py.

    python benchmarks/evidence.py --quick          # 12 scenes, 3 methods + baselines: minutes
    nohup python benchmarks/evidence.py > evidence.log 2>&1 &
    python benchmarks/evidence.py --methods layercam --target-layers backbone.stage2 neck

Rows are kept in ``work_dirs/evidence/<settings>.jsonl`` as they finish (a stopped run resumes
at the next method); the table is printed at the end.
"""
import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from mmengine.utils import ProgressBar

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.boxes import tracked_score
from mmdet_cam.engine.candidates import CandidateScorer
from mmdet_cam.errors import DetCAMError
from mmdet_cam.metrics import (
    evidence_mass,
    evidence_pointing,
    parameter_randomisation,
    rank_accuracy,
)
from mmdet_cam.shapes import EVIDENCE_CLASSES, make_evidence_image

from faithfulness import BASELINES, baseline_map  # benchmarks/faithfulness.py
from localization import match  # benchmarks/localization.py

REPO = Path(__file__).parents[1]
FIRST_SEED = 100000
OUTSIDE = EVIDENCE_CLASSES.index('tagged')
METHODS = ['odam', 'hirescam', 'layercam', 'gradcam', 'gradcam++', 'ssgradcam', 'eigencam',
           'drise', 'occlusion', 'relevancy'] + list(BASELINES)
QUICK = ['odam', 'layercam', 'gradcam'] + list(BASELINES)
COLUMNS = ('in', 'pointing_in', 'mass_in', 'rank_in', 'out', 'pointing_out', 'mass_out',
           'rank_out', 's/box', 'sanity')


def scenes(count: int):
    """``count`` fresh scenes: ``(seed, image, objects)``."""
    for seed in range(FIRST_SEED, FIRST_SEED + count):
        image, objects = make_evidence_image(np.random.default_rng(seed))
        yield seed, image, objects


def verified_detections(cam, scorer, count: int) -> list:
    """Per scene, the matched detections whose cue the detector uses:
    ``(seed, image, objects, detections, [(k, object index, score ratio)])``."""
    found, progress = [], ProgressBar(count)
    for seed, image, objects in scenes(count):
        detections = cam.detect(image)
        gt = [(obj['label'], obj['bbox']) for obj in objects]
        original, rows = scorer([image])[0], []
        for k, g in enumerate(match(detections, gt)):
            if g < 0:
                continue
            box, label = detections.bboxes[k].tolist(), int(detections.labels[k])
            without = scorer([make_evidence_image(np.random.default_rng(seed),
                                                  omit_cues=[g])[0]])[0]
            before, after = (tracked_score(c.bboxes, c.scores, c.labels, box, label)
                             for c in (original, without))
            rows.append((k, g, after / max(before, 1e-9)))
        found.append((seed, image, objects, detections, rows))
        progress.update()
    return found


def evaluate(model, method: str, found: list, options: dict, score_thr: float,
             sanity_scenes: int = 0) -> dict:
    """One method's row over the verified detections of ``found`` (``sanity_scenes``: the
    parameter-randomisation check on the first scenes)."""
    figures = {'in': [], 'out': []}
    seconds, boxes = 0.0, 0
    rng = np.random.default_rng(0)
    cam = None if method in BASELINES else DetCAM(
        model, **{'method': method, 'score_thr': score_thr, **options})
    for _, image, objects, detections, rows in found:
        kept = [(k, g) for k, g, ratio in rows if ratio <= 0.5]
        if not kept:
            continue
        if cam is not None:
            start = time.perf_counter()
            result = cam(image)
            seconds += time.perf_counter() - start
            boxes += len(result)
            if len(result) != len(detections) or not np.allclose(
                    result.detections.bboxes.numpy(), detections.bboxes.numpy(), atol=1e-3):
                raise RuntimeError('the explained detections differ from the verified ones')
        for k, g in kept:
            cam_map = (baseline_map(method, image.shape[:2], detections.bboxes[k].tolist(), rng)
                       if cam is None else result.cams[k])
            cue = objects[g]['evidence']
            where = 'out' if objects[g]['label'] == OUTSIDE else 'in'
            figures[where].append((evidence_pointing(cam_map, cue), evidence_mass(cam_map, cue),
                                   rank_accuracy(cam_map, cue)))
    row = {}
    for where, values in figures.items():
        values = np.asarray(values, np.float64).reshape(-1, 3)
        row[where] = len(values)
        for name, column in zip(('pointing', 'mass', 'rank'), values.T if len(values) else
                                [[np.nan]] * 3):
            row[f'{name}_{where}'] = float(np.mean(column))
    row['s/box'] = seconds / boxes if boxes else float('nan')
    correlations = [value for _, image, *_ in found[:sanity_scenes] if cam is not None
                    for value in parameter_randomisation(cam, image,
                                                         head_only=True).head_randomised]
    row['sanity'] = float(np.nanmean(correlations)) if correlations else float('nan')
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=str(REPO / 'demo' / 'rtmdet_evidence.py'))
    parser.add_argument('--checkpoint', default=str(REPO / 'demo' / 'rtmdet_evidence.pth'))
    parser.add_argument('--scenes', type=int, default=60)
    parser.add_argument('--methods', nargs='+', default=None, help=f'default: {METHODS}')
    parser.add_argument('--target-layers', nargs='+', default=None,
                        help='layers of every layer-reading method (default: theirs)')
    parser.add_argument('--score-thr', type=float, default=0.3)
    parser.add_argument('--drise-masks', type=int, default=1000)
    parser.add_argument('--window', type=int, default=16, help="occlusion's window (pixels)")
    parser.add_argument('--sanity', type=int, default=3,
                        help='scenes of the parameter-randomisation check (0: off)')
    parser.add_argument('--quick', action='store_true', help=f'12 scenes, {QUICK}')
    args = parser.parse_args()
    count = 12 if args.quick else args.scenes
    methods = args.methods or (QUICK if args.quick else METHODS)
    warnings.simplefilter('ignore')

    model = build_detector(args.config, args.checkpoint)
    settings = (f'{Path(args.config).stem}.{count}.'
                f'{"-".join(args.target_layers or ["default"])}')
    out = REPO / 'work_dirs' / 'evidence' / f'{settings}.jsonl'
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.is_file():
        done = {row['method']: row for row in map(json.loads, out.read_text().splitlines())}
    probe = DetCAM(model, score_thr=args.score_thr)
    found = verified_detections(probe, CandidateScorer(model, probe.pipeline), count)
    ratios = [ratio for *_, rows in found for _, _, ratio in rows]
    used = np.mean(np.asarray(ratios) <= 0.5) if ratios else float('nan')
    print(f'\n{len(ratios)} matched detections in {count} scenes; the detector uses the cue '
          f'(score at most halved without it) for {used:.0%} of them')
    for method in methods:
        if method in done:
            continue
        options = {}
        if method == 'drise':
            options = dict(method=dict(type='drise', num_masks=args.drise_masks, progress=False))
        elif method == 'occlusion':
            options = dict(method=dict(type='occlusion', window=args.window, progress=False))
        elif args.target_layers and method not in BASELINES:
            options = dict(target_layers=args.target_layers)
        try:
            row = evaluate(model, method, found, options, args.score_thr, args.sanity)
        except DetCAMError as error:
            print(f'{method}: skipped ({error})')
            continue
        done[method] = dict(method=method, **row)
        with out.open('a') as file:
            file.write(json.dumps(done[method]) + '\n')
        print(f'{method}: {row}')
    print(f'\n| method | {" | ".join(COLUMNS)} |\n|---|' + '---:|' * len(COLUMNS))
    for method in methods:
        if method in done:
            row = done[method]
            print(f'| {method} | ' + ' | '.join(
                f'{row[c]:.0f}' if c in ('in', 'out') else f'{row[c]:.3f}' for c in COLUMNS)
                + ' |')


if __name__ == '__main__':
    main()
