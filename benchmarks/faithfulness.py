"""Faithfulness and box-specificity of every method on the shipped demo model.

For each val image (not seen in training) and each detection scoring >= 0.3 that matches a
ground-truth box of its class (IoU >= 0.5), and for each method:
  pointing   the map's peak lies in the GT box
  energy     share of the map's mass in the GT box
  ODI        share of the map's mass on the *other* GT objects (lower: more box-specific)
  deletion   AUC of the detection's tracked score while its most salient pixels are replaced
             by the mean colour (lower: the map found what the detector needs)
  insertion  AUC while they are restored into a blurred image (higher is better)
  OA         insertion - deletion
  ROAD       pytorch_grad_cam's ROADCombined with the tracked score (first --road-images only)
  sanity     Spearman between each map and the map of the same raw candidate once the box head
             is randomised (parameter randomisation, first --sanity-images only; every explained
             detection); a method passes below 0.5
  last       the same once the whole model is randomised
With ``--target mask`` (an instance segmentor, e.g. the instance demo) the maps explain each
detection's mask: pointing and energy are against the ground-truth *mask*, and deletion /
insertion follow the detection's mask among the raw candidates' masks (``mask_tracker``).
Baselines: ``random`` (random blobs at the maps' scale: smooth random maps, seeded) and
``centre`` (a Gaussian centred on the detected box, sigma a quarter of its size); run by
default, and with ``--methods`` only where named (``--methods odam random centre``), so that
runs of different methods with the same settings can go side by side.

The last line names the default method this evidence picks: the best OA among the methods
that are box-specific (ODI below 0.1: less than a tenth of the map on other objects) and pass
the sanity check (below 0.5), random maps excluded.

    python tools/make_shapes_dataset.py data/shapes        # once
    python benchmarks/faithfulness.py --quick               # 8 images, a few minutes
    nohup python benchmarks/faithfulness.py > faithfulness.log 2>&1 &   # 40 images, ~45 min

Prints a markdown table and writes the mean deletion/insertion curves per method to
``docs/faithfulness_curves.png`` (the documented run; others next to their rows). Rows are kept
in ``work_dirs/faithfulness/<settings>.jsonl`` as they finish, and each image's figures in
``<settings>.<method>.images.jsonl``: a run that is stopped resumes at the image where it was.
"""
import json
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
from mmengine.config import DictAction
from mmengine.utils import ProgressBar

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.boxes import box_gaussian
from mmdet_cam.engine.candidates import CandidateScorer
from mmdet_cam.methods import MethodKind, method_names
from mmdet_cam.metrics import (
    auc,
    energy_in_box,
    energy_in_mask,
    mask_tracker,
    object_discrimination,
    parameter_randomisation,
    perturbation_curve,
    pointing_hit,
    pointing_hit_mask,
    road_combined,
    tracker,
)

from localization import demo_arguments, load_split, match  # benchmarks/localization.py

REPO = Path(__file__).parents[1]
BASELINES = ('random', 'centre')
NOT_EXPLAINING = ('randomcam',) + BASELINES
SANITY_PASS = 0.5
BOX_SPECIFIC_ODI = 0.1
COLUMNS = ('boxes', 'pointing', 'energy', 'odi', 'deletion', 'insertion', 'oa', 'road', 'sanity',
           'last', 'seconds')


def baseline_map(kind: str, shape, box, rng) -> np.ndarray:
    h, w = shape
    if kind == 'random':
        coarse = rng.random((5, 5)).astype(np.float32)
        return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return box_gaussian(shape, box)


def evaluate(model, method, samples, scorer, steps, score_thr, road_images, sanity_images,
             partial: Path, seed=0, target_layers=None, target='score', options=None):
    """One method's summary row and mean curves (``options``: the method's own). Each image's
    figures are appended to ``partial`` as it finishes, and images found there are not
    computed again."""
    cam = DetCAM(model, method='gradcam' if method in BASELINES else dict(type=method,
                                                                           **(options or {})),
                 score_thr=score_thr, target_layers=target_layers, target=target)
    images = {}
    if partial.is_file():
        images = {r['index']: r for r in map(json.loads, partial.read_text().splitlines())}
    progress = ProgressBar(len(samples), file=sys.stderr)
    for index, (path, gt) in enumerate(samples):
        progress.update()
        if index not in images:
            images[index] = evaluate_image(
                cam, method, path, gt, scorer, steps, index < road_images,
                np.random.default_rng([seed, index]))
            images[index]['index'] = index
            with partial.open('a') as f:
                f.write(json.dumps(images[index]) + '\n')
    rows = [row for i in range(len(samples)) for row in images[i]['rows']]
    road = [r for i in range(len(samples)) for r in images[i]['road']]
    seconds = sum(images[i]['seconds'] for i in range(len(samples)))
    curves = {mode: [c for i in range(len(samples)) for c in images[i][mode]]
              for mode in ('deletion', 'insertion')}
    summary = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    summary.update(boxes=len(rows), oa=summary['insertion'] - summary['deletion'],
                   seconds=seconds / max(len(rows), 1),
                   road=float(np.mean(road)) if road else float('nan'),
                   **sanity(cam, method, samples[:sanity_images]))
    return summary, {mode: np.mean(c, axis=0).tolist() for mode, c in curves.items()}


def evaluate_image(cam, method, path, gt, scorer, steps, with_road, rng) -> dict:
    """Figures of every matched detection of one image, its curves and ROAD values."""
    start = time.time()
    result = cam(str(path))
    seconds = time.time() - start if method not in BASELINES else 0.0
    image = result.image
    out = dict(rows=[], road=[], deletion=[], insertion=[], seconds=seconds)
    for k, g in enumerate(match(result.detections, gt)):
        if g < 0:
            continue
        detected = result.detections.bboxes[k].tolist()
        saliency = (baseline_map(method, image.shape[:2], detected, rng)
                    if method in BASELINES else result.cams[k])
        label, box, gt_mask = gt[g]
        others = [obj[1] for i, obj in enumerate(gt) if i != g]
        if cam.request().reads_masks:
            score_fn = mask_tracker(scorer, result.detections.masks[k].numpy(), label)
            gt_mask = gt_mask()
            pointing, energy = pointing_hit_mask(saliency, gt_mask), energy_in_mask(saliency,
                                                                                   gt_mask)
        else:
            score_fn = tracker(scorer, detected, label)
            pointing, energy = pointing_hit(saliency, box), energy_in_box(saliency, box)
        deletion = perturbation_curve(image, saliency, score_fn, 'deletion', steps)
        insertion = perturbation_curve(image, saliency, score_fn, 'insertion', steps)
        out['deletion'].append(list(map(float, deletion)))
        out['insertion'].append(list(map(float, insertion)))
        if with_road:
            out['road'].append(float(road_combined(image, saliency, score_fn)))
        out['rows'].append(dict(pointing=float(pointing), energy=float(energy),
                                odi=float(object_discrimination(saliency, box, others)),
                                deletion=float(auc(deletion)), insertion=float(auc(insertion))))
    return out


def sanity(cam, method, samples) -> dict:
    """Mean Spearman once the box head, and once everything, is randomised (NaN for the
    baselines, whose maps do not come from the model, and for D-RISE, which would need all of
    its masks again at every randomisation step); maps that turn flat are counted apart. NaN
    for the mask target too: a detection is held fixed as a linear function of the box head's
    raw outputs (``FixedCandidates``), which its mask's value is not."""
    if (method in BASELINES or cam.kind is MethodKind.BLACK_BOX or cam.request().reads_masks
            or not samples):
        return dict(sanity=float('nan'), last=float('nan'))
    head, last = [], []
    for path, _ in samples:
        result = parameter_randomisation(cam, str(path))
        if len(result.detections):
            head += result.head_randomised.tolist()
            last += result.correlation[-1].tolist()
    # a map that turns flat has no rank correlation (NaN): left out of the mean, and counted
    return dict(sanity=float(np.nanmean(head)), last=float(np.nanmean(last)),
                sanity_flat=int(np.isnan(head).sum()), sanity_maps=len(head))


def default_by_evidence(rows: dict) -> str:
    """The best OA among box-specific methods that pass the sanity check."""
    eligible = {m: r for m, r in rows.items() if m not in NOT_EXPLAINING
                and r['odi'] < BOX_SPECIFIC_ODI and r['sanity'] < SANITY_PASS}
    return max(eligible, key=lambda m: eligible[m]['oa']) if eligible else ''


def method_options(options: dict, method: str) -> dict:
    """The options of ``--method-options`` that apply to ``method``: unprefixed ones and
    those named ``method.key``."""
    return {key.split('.', 1)[-1]: value for key, value in options.items()
            if '.' not in key or key.startswith(f'{method}.')}


def table_row(method: str, row: dict) -> str:
    cells = [str(row['boxes'])] + [f'{row[c]:.3f}' if np.isfinite(row[c]) else '-'
                                   for c in COLUMNS[1:]]
    return f"| {method} | {' | '.join(cells)} |"


def plot(curves: dict, path: Path, steps: int) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax in axes:
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # a colour per method
    x = np.linspace(0, 1, steps + 1)
    for method, by_mode in curves.items():
        style = '--' if method in BASELINES else '-'
        for ax, mode in zip(axes, ('deletion', 'insertion')):
            ax.plot(x, by_mode[mode], style, label=method, linewidth=1.4)
    for ax, mode in zip(axes, ('deletion', 'insertion')):
        ax.set_title(f'{mode} (mean tracked score)')
        ax.set_xlabel('share of pixels ' + ('removed' if mode == 'deletion' else 'restored'))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    parser = demo_arguments(__doc__)
    parser.add_argument('--num-images', type=int, default=40)
    parser.add_argument('--quick', action='store_true',
                        help='8 images, 10 steps, ROAD on 1 image, sanity on 2')
    parser.add_argument('--steps', type=int, default=20, help='perturbation steps per curve')
    parser.add_argument('--methods', nargs='+',
                        help='default: every registered method and the baselines')
    parser.add_argument('--score-thr', type=float, default=0.3)
    parser.add_argument('--road-images', type=int, default=2)
    parser.add_argument('--sanity-images', type=int, default=8)
    parser.add_argument('--target-layers', nargs='+', metavar='NAME',
                        help="layers the maps are made at (default: DetCAM's for the model)")
    parser.add_argument('--target', choices=['score', 'mask'], default='score',
                        help="what the maps explain; 'mask': each detection's mask (instance "
                        'segmentors), pointing and energy against the GT masks')
    parser.add_argument('--method-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        default={}, help="options of the methods (not the baselines): "
                        "'key=value' for every method, 'method.key=value' for one, e.g. "
                        "occlusion.baseline=mean; their rows are named 'method[key=value]'")
    parser.add_argument('--plot', help='default: docs/faithfulness_curves.png for the documented '
                        'run of the shipped demo (40 images, 20 steps), '
                        'work_dirs/faithfulness/<settings>.png for others')
    args = parser.parse_args()
    if args.quick:
        args.num_images, args.steps, args.road_images, args.sanity_images = 8, 10, 1, 2

    warnings.simplefilter('ignore')
    samples = load_split(Path(args.data_root), 'val')[:args.num_images]
    model = build_detector(args.config, args.checkpoint, device=args.device)
    scorer = CandidateScorer(model, DetCAM(model).pipeline, masks=args.target == 'mask')
    methods = args.methods or ([m for m in method_names() if m not in ('kpca_cam', 'fem')]
                               + list(BASELINES))
    settings = (f'n{len(samples)}_s{args.steps}_t{args.score_thr}_r{args.road_images}'
                f'_y{args.sanity_images}')
    shipped_demo = (Path(args.config).stem == 'rtmdet_shapes' and not args.target_layers
                    and args.target == 'score')
    if not shipped_demo:  # other models, layers and targets keep their own rows and plot
        settings = '_'.join([Path(args.config).stem, *(args.target_layers or []),
                             *(['mask'] if args.target == 'mask' else []), settings])
    store = REPO / 'work_dirs' / 'faithfulness' / f'{settings}.jsonl'
    # only the documented run (the shipped demo, 40 images, 20 steps) redraws the docs' plot
    documented = shipped_demo and len(samples) == 40 and args.steps == 20
    args.plot = args.plot or str(REPO / 'docs' / 'faithfulness_curves.png' if documented
                                 else store.with_suffix('.png'))
    done = {}
    if store.is_file():
        done = {r['method']: r for r in map(json.loads, store.read_text().splitlines())}
    store.parent.mkdir(parents=True, exist_ok=True)
    print(f'{len(samples)} val images, target {args.target}, score_thr {args.score_thr}, '
          f'{args.steps} steps, ROAD '
          f'on {args.road_images}, sanity on {args.sanity_images} (rows kept in {store})\n')
    print('| method | boxes | pointing | energy | ODI | deletion | insertion | OA | ROAD | '
          'sanity | last | s/box |')
    print('|---|' + '---:|' * len(COLUMNS))
    for method in methods:
        options = {} if method in BASELINES else method_options(args.method_options, method)
        name = method + (f"[{','.join(f'{k}={v}' for k, v in options.items())}]"
                         if options else '')
        if name not in done:
            partial = store.with_name(f'{settings}.{name}.images.jsonl')
            row, curve = evaluate(model, method, samples, scorer, args.steps, args.score_thr,
                                  args.road_images, args.sanity_images, partial,
                                  target_layers=args.target_layers, target=args.target,
                                  options=options)
            done[name] = dict(method=name, row=row, curves=curve)
            with store.open('a') as f:
                f.write(json.dumps(done[name]) + '\n')
        print(table_row(name, done[name]['row']), flush=True)
    # the plot and the pick cover every method measured with these settings, not only this run's
    everything = {method: done[method] for method in sorted(done, key=lambda m: m in BASELINES)}
    plot({m: d['curves'] for m, d in everything.items()}, Path(args.plot), args.steps)
    print(f'\ncurves -> {args.plot}')
    best = default_by_evidence({m: d['row'] for m, d in everything.items()})
    print(f'default by this evidence: {best or "none qualifies"}')


if __name__ == '__main__':
    main()
