"""Every detector config shipped with mmdet, explained: which work, which are refused and why.

Each config is built from mmdet's own file with ``init_weights()`` (no download), its test
pipeline shrunk to a small image, every score threshold removed (untrained heads score far
below 0.05), and explained with ``DetCAM`` (GradCAM unless ``--method`` says otherwise, every
neck level) on a shapes image. Each config runs in its own process (forked from this one,
so mmdet is imported once) under a time limit, so one hang or crash cannot stop the sweep.
Results are appended to a JSON-lines file as they come, and a re-run resumes where it stopped.

    python benchmarks/zoo.py --quick                  # one config per folder, a few minutes each
    nohup python benchmarks/zoo.py > zoo.log 2>&1 &   # all configs, then docs/zoo.md
    python benchmarks/zoo.py --rerun crash            # again for the configs that crashed
    python benchmarks/zoo.py --from-table docs/zoo.md --configs grounding glip \
        --rerun skipped --table docs/zoo.md           # some configs again, the table updated

Text-prompted detectors (Grounding DINO, MM-Grounding-DINO, GLIP) get a tiny BERT written to
work_dirs/zoo/tiny_bert (``--language-model DIR``: yours) and their class names as prompt.
    python benchmarks/zoo.py --quick --method drise --method-options num_masks=32 \
        --results work_dirs/zoo_drise/results.jsonl   # the black-box method, same configs
    python benchmarks/zoo.py --target mask --quick --results work_dirs/zoo_mask/results.jsonl \
        --table docs/zoo_masks.md   # instance segmentors' masks (configs named like them)

Status of a config:
  works        finite maps, and at least two detections with non-zero maps that differ
  refused      mmdet-cam declines with a one-line reason (e.g. a head that detaches its scores)
  mmdet fails  mmdet's own inference (or model building) fails for it on this host
  crash        anything else: a bug of ours
  skipped      not a detector, or needs a download / package / data that cannot exist offline

Configs whose model and test pipeline are identical to an earlier config's (schedules,
training-data variants) share its result; the table says which one ran.
"""
import argparse
import copy
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import torch
from mmengine.config import DictAction

from mmdet_cam import DetCAM, build_detector

REPO = Path(__file__).parents[1]
STATUSES = ('works', 'refused', 'mmdet fails', 'crash', 'skipped')
IMAGE = REPO / 'demo' / 'images' / 'shapes_1.jpg'
METHOD = 'gradcam'  # set by --method before the per-config processes are forked
TARGET = 'score'  # set by --target likewise
# with --target mask, the configs whose folder or file name says instance segmentation
INSTANCE_CONFIGS = (r'mask|htc|point[-_]rend|scnet|condinst|boxinst|solo|yolact|rtmdet-ins|'
                    r'queryinst|instance|instaboost')
LANGUAGE_MODEL = ''  # set by main (--language-model, or the tiny BERT) before the forks


def shipped_configs():
    from mmdet_cam.model.detector import mmdet_config_root
    root = mmdet_config_root()
    return root, sorted(p.relative_to(root).as_posix() for p in root.rglob('*.py')
                        if '_base_' not in p.parts and '__pycache__' not in p.parts)


def quick_selection(configs):
    """One config per folder: the one with the shortest name (usually the plain baseline)."""
    by_folder = defaultdict(list)
    for name in configs:
        by_folder[name.split('/')[0]].append(name)
    return sorted(min(names, key=lambda n: (len(n), n)) for names in by_folder.values())


def shrink(cfg, size: int) -> None:
    """A ``size``-pixel test pipeline (0: the config's own) and no score threshold, in place."""
    from mmdet.utils import get_test_pipeline_cfg

    from mmdet_cam.model.detector import keep_all_detections
    keep_all_detections(cfg.model.get('test_cfg'), 100)  # untrained RTMDet: empty boxes
    rpn = cfg.model.get('test_cfg', {}).get('rpn')
    if isinstance(rpn, dict):  # 100 proposals instead of 1000: same mechanisms, a tenth the time
        rpn.update({key: 100 for key in ('max_per_img', 'nms_pre') if key in rpn})
    try:
        pipeline = get_test_pipeline_cfg(cfg) if size else []
    except Exception:
        return
    for transform in pipeline:
        if 'Resize' in transform['type'] and 'scale' in transform:
            transform['scale'] = (size, size)
        if transform['type'].endswith('Pad') and transform.get('size'):
            transform['size'] = (size, size)


def signature(root: Path, name: str) -> str:
    """What decides a config's result: its model and test pipeline (and imports)."""
    from mmengine.config import Config
    try:
        cfg = Config.fromfile(str(root / name))
        from mmdet.utils import get_test_pipeline_cfg
        try:
            pipeline = get_test_pipeline_cfg(cfg)
        except Exception:
            pipeline = None
        text = json.dumps([cfg.get('model'), pipeline, cfg.get('custom_imports')],
                          sort_keys=True, default=str)
    except Exception as error:  # a config that does not parse is judged on its own
        text = f'{name}: {error}'
    return hashlib.sha1(text.encode()).hexdigest()


def skip_reason(cfg):
    """Why a config cannot be a fair test here (None: it can)."""
    from mmdet.models.detectors import BaseDetector
    from mmdet.registry import MODELS
    model_type = cfg.model.get('type') if isinstance(cfg.get('model'), dict) else None
    if model_type is None:
        return 'not a model config (settings shared by other configs, e.g. test-time augmentation)'
    cls = MODELS.get(model_type) if isinstance(model_type, str) else None
    if cls is None:
        return f'model type {model_type!r} is not registered in mmdet (project code)'
    if not issubclass(cls, BaseDetector):
        return f'not an image detector: {model_type} ({cls.__mro__[1].__name__})'
    text = json.dumps(cfg.model, default=str)
    has_language_model = bool((cfg.model.get('language_model') or {}).get('name'))
    if not has_language_model and any(key in text for key in ('lang_model_name', 'text_model',
                                                               'bert-base')):
        return ('needs a language model from the Hugging Face hub (text prompts), '
                'not available offline')
    pipeline = json.dumps(cfg.get('test_pipeline') or cfg.get('test_dataloader'), default=str)
    if 'LoadProposals' in pipeline:
        return 'needs precomputed proposals from a dataset file (LoadProposals)'
    return None


class SweepCAM(DetCAM):
    """``DetCAM`` (defaults, no score threshold) that explains the top 4 detections with finite
    boxes, non-empty ones first: untrained models also report degenerate boxes (infinite
    YOLOv3 boxes, empty proposals whose RoI features carry no gradient)."""

    def __init__(self, model, **kwargs):
        super().__init__(model, score_thr=0.0, **kwargs)

    def select(self, pred):
        index = super().select(pred)
        boxes = pred.bboxes.detach()[index]
        index = index[torch.isfinite(boxes).all(dim=1)]
        boxes = pred.bboxes.detach()[index]
        empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        return torch.cat([index[~empty], index[empty]])[:4]


def explain(cfg, size):
    """``(result, note)`` for one config at one test image size."""
    shrink(cfg, size)
    torch.manual_seed(0)
    model = build_detector(cfg)
    result = SweepCAM(model, method=METHOD, target=TARGET)(str(IMAGE))
    if METHOD == 'gradcam' and distinct_maps(result) < 2 and len(result) >= 2:
        # GradCAM's ReLU(sum of channel-weighted activations) is zero everywhere when an
        # untrained head's weights make the sum negative: look at the gradients directly
        hires = SweepCAM(model, method='hirescam', target=TARGET)(str(IMAGE))
        return hires, 'GradCAM maps zero or equal on the untrained model; HiResCAM maps checked'
    return result, ''


def distinct_maps(result) -> int:
    return len({c.tobytes() for c in result.cams if c.max() > 0})


def run_one(root: str, name: str, size: int, conn) -> None:
    """Classify one config; sends ``(status, reason, detections)`` through ``conn``."""
    warnings.simplefilter('ignore')
    import logging

    import numpy as np
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    torch.set_num_threads(1)
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    os.chdir(Path(root).parent)  # configs name other configs as 'configs/...' (LD's teacher)

    from mmdet_cam import DetCAMError
    from mmdet_cam.errors import DetectorFailedError

    def send(status, reason='', boxes=0):
        conn.send((status, reason, boxes))

    try:
        cfg = Config.fromfile(os.path.join(root, name))
    except ImportError as error:
        return send('skipped', f'needs a package that is not installed: {one_line(error)}')
    except FileNotFoundError as error:
        return send('mmdet fails', f'the config names a file mmdet does not ship: '
                    f'{one_line(error)}')
    except Exception as error:
        return send('crash', f'config does not parse: {type(error).__name__}: {error}')
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    reason = skip_reason(cfg)
    if reason:
        return send('skipped', reason)
    if (cfg.model.get('language_model') or {}).get('name'):
        from mmdet_cam.model.prompts import use_language_model
        use_language_model(cfg, LANGUAGE_MODEL)  # the prompt: the config's class names
    try:
        try:
            result, note = explain(copy.deepcopy(cfg), size)
        except DetectorFailedError as error:
            if 'run the detector' not in str(error) and 'prepare an image' not in str(error):
                raise
            # mmdet's own inference failed at the small size (SSD, DDOD): the config's own
            result, note = explain(cfg, 0)
            note = f'at the config\'s own input size (mmdet fails at {size} px)'
    except DetectorFailedError as error:
        cause = error.__cause__
        if isinstance(cause, ImportError) or 'not installed' in str(cause):
            return send('skipped', f'needs a package that is not installed: {one_line(cause)}')
        if needs_download(cause):
            return send('skipped', f'needs a download (this host is offline): {one_line(cause)}')
        return send('mmdet fails', one_line(error))
    except DetCAMError as error:
        if TARGET == 'mask' and 'no instance mask head' in str(error):
            return send('skipped', 'not an instance segmentor')
        return send('refused', one_line(error))
    except Exception as error:
        return send('crash', crash_reason(error))
    if len(result) < 2:
        return send('skipped', f'the untrained model gives {len(result)} detection(s) with a '
                    'finite box even without thresholds, too few to compare maps: needs '
                    'trained weights', len(result))
    if not np.isfinite(result.cams).all():
        return send('crash', 'non-finite values in the maps', len(result))
    nonzero = sum(1 for c in result.cams if c.max() > 0)
    distinct = distinct_maps(result)
    if distinct >= 2:
        return send('works', note, len(result))
    boxes = result.detections.bboxes
    if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).all():
        return send('skipped', 'the untrained model\'s detections all have empty boxes, whose '
                    'RoI features carry no gradient: needs trained weights', len(result))
    if bool((result.detections.scores >= 1 - 1e-6).all()):
        return send('skipped', 'the untrained model\'s scores all saturate at 1.0, where the '
                    'sigmoid has no gradient: needs trained weights', len(result))
    return send('crash', f'{len(result)} detections, {nonzero} non-zero maps, '
                f'{distinct} distinct (need at least 2)', len(result))


def needs_download(error) -> bool:
    text = f'{type(error).__name__} {error}'.lower()
    return any(word in text for word in ('urlerror', 'connection', 'download', 'huggingface',
                                         'name resolution', 'http'))


def one_line(error) -> str:
    text = ' '.join(str(error).split())
    return text[:300]


def crash_reason(error) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = next((f for f in reversed(frames) if 'mmdet_cam' in f.filename), frames[-1])
    place = f'{Path(where.filename).name}:{where.lineno}'
    return f'{type(error).__name__}: {one_line(error)[:200]} (at {place})'


def run_with_limit(root: Path, name: str, size: int, limit: float):
    context = multiprocessing.get_context('fork')
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=run_one, args=(str(root), name, size, send))
    start = time.time()
    process.start()
    send.close()
    outcome = None
    if receive.poll(limit):
        try:
            outcome = receive.recv()
        except EOFError:
            outcome = None
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
    elapsed = time.time() - start
    if outcome is None:
        if elapsed >= limit:
            outcome = ('crash', f'no result within the {limit:.0f} s limit', 0)
        else:
            outcome = ('crash', f'the process died (exit code {process.exitcode})', 0)
    status, reason, boxes = outcome
    return dict(config=name, family=name.split('/')[0], status=status, reason=reason,
                detections=boxes, seconds=round(elapsed, 1))


def write_table(results: dict, configs, path: Path, size: int) -> None:
    rows = [results[name] for name in configs if name in results]
    counts = Counter(r['status'] for r in rows)
    own = counts['works'] + counts['refused'] + counts['crash']
    share = counts['works'] / own if own else 0.0
    lines = [
        '# The mmdet config zoo, explained' + (': instance masks' if TARGET == 'mask' else ''),
        '',
        f'Every detector config shipped with mmdet {mmdet_version()} (`mmdet/.mim/configs`), built '
        'with `init_weights()` (untrained, no download), test pipeline shrunk to '
        f'{size} px (a config\'s own size where mmdet fails at that size), score thresholds, '
        'minimum box sizes and corner-pairing distances removed (`keep_all_detections`), '
        'RPNs cut to 100 proposals, explained with `DetCAM` and the method '
        f'{method_description()} (default target layers){target_description()} for the top 4 '
        'detections with finite '
        'boxes, non-empty ones first, on '
        '`demo/images/shapes_1.jpg`. Text-prompted detectors (Grounding DINO, '
        'MM-Grounding-DINO, GLIP) load a tiny untrained BERT (`tests/tiny_language_model.py`) '
        'instead of their hub language model and take their class names as prompt. Written '
        'by `python benchmarks/zoo.py` on a 2-core CPU machine, each config in its own process '
        'with a time limit.',
        '',
        f'**{len(rows)} configs**: ' + ', '.join(f'{counts[s]} {s}' for s in STATUSES) + '. '
        f'Of the {own} configs whose own mmdet inference works here and that are image '
        f'detectors, **{share:.1%} produce maps** ({counts["works"]}), {counts["refused"]} are '
        f'refused with a reason, {counts["crash"]} crash.',
        '',
        '*works*: finite maps, at least two detections with non-zero maps that differ. '
        '*refused*: mmdet-cam declines with the reason given. *mmdet fails*: mmdet itself '
        'cannot build or run the model on this host (CPU only). *skipped*: not an image '
        'detector, needs a download or a package that is not installed, or the untrained '
        'model gives no usable detections (trained weights needed). A reason '
        '"same model and test pipeline as X" means what it says: the result is that of X, which '
        'is shown there. Time: seconds for build + explanation on one CPU thread.',
        '',
        '| config | family | status | reason | time s |',
        '|---|---|---|---|---:|',
    ]
    for r in rows:
        reason = r['reason'].replace('|', '\\|')
        if r.get('same_as'):
            reason = f'same model and test pipeline as `{r["same_as"]}`'
        lines.append(f'| `{r["config"]}` | {r["family"]} | {r["status"]} | {reason} | '
                     f'{r["seconds"]} |')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + '\n')


def target_description() -> str:
    if TARGET == 'mask':
        return (', target `mask` (each detection\'s own mask logits over its predicted mask; '
                'configs without an instance mask head are skipped)')
    return ''


def method_description() -> str:
    if METHOD == 'gradcam':
        return ('`gradcam` (HiResCAM where GradCAM\'s maps of the untrained model are zero or '
                'equal)')
    return f'`{METHOD}`'


def mmdet_version() -> str:
    import mmdet
    return mmdet.__version__


def tiny_language_model() -> Path:
    """The tests' tiny BERT (tests/tiny_language_model.py), written once to work_dirs/zoo."""
    sys.path.insert(0, str(REPO / 'tests'))
    from tiny_language_model import write_tiny_bert
    return write_tiny_bert(REPO / 'work_dirs' / 'zoo' / 'tiny_bert')


def load_results(path: Path) -> dict:
    results = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                results[row['config']] = row
    return results


def load_table(path: Path) -> dict:
    """Results as a table written by :func:`write_table` gives them (to update some rows)."""
    results = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in re.split(r'(?<!\\)\|', line)[1:-1]]
        if len(cells) != 5 or not cells[0].startswith('`'):
            continue
        config, family, status, reason, seconds = cells
        row = dict(config=config.strip('`'), family=family, status=status,
                   reason=reason.replace('\\|', '|'), seconds=float(seconds))
        same = re.fullmatch(r'same model and test pipeline as `(.+)`', reason)
        if same:
            row['same_as'] = same.group(1)
        results[row['config']] = row
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='one config per folder')
    parser.add_argument('--configs', nargs='+', metavar='REGEX',
                        help='only configs whose path matches one of these')
    parser.add_argument('--size', type=int, default=256, help='test image side (default 256)')
    parser.add_argument('--limit', type=float, default=300, help='seconds per config')
    parser.add_argument('--jobs', type=int, default=max(1, (os.cpu_count() or 1)),
                        help='configs run at once (default: one per CPU core)')
    parser.add_argument('--results', default='work_dirs/zoo/results.jsonl',
                        help='JSON lines, appended as configs finish; read to resume')
    parser.add_argument('--rerun', nargs='+', choices=STATUSES, default=[],
                        help='run configs with these statuses again')
    parser.add_argument('--method', default='gradcam', help='CAM method (default gradcam)')
    parser.add_argument('--target', choices=['score', 'mask'], default='score',
                        help="what is explained; 'mask': instance segmentors' masks")
    parser.add_argument('--method-options', nargs='+', action=DictAction, default={},
                        metavar='KEY=VALUE', help='options of the method, e.g. num_masks=32')
    parser.add_argument('--table', help='markdown table to write (default: docs/zoo.md for '
                        'a full run, work_dirs/zoo/zoo_quick.md for --quick or --configs)')
    parser.add_argument('--from-table', metavar='PATH',
                        help='take the results of configs not in --results from this table '
                        '(e.g. docs/zoo.md): update some rows without running all')
    parser.add_argument('--language-model', metavar='DIR',
                        help='the language model of text-prompted detectors (default: a tiny '
                        'BERT written to work_dirs/zoo/tiny_bert)')
    args = parser.parse_args(argv)

    warnings.simplefilter('ignore')
    global METHOD, LANGUAGE_MODEL, TARGET
    TARGET = args.target
    METHOD = dict(type=args.method, **args.method_options) if args.method_options else \
        args.method
    LANGUAGE_MODEL = args.language_model or str(tiny_language_model())
    import mmdet.models  # noqa: F401  (imported once here, inherited by every forked process)
    root, configs = shipped_configs()
    if TARGET == 'mask':
        configs = [c for c in configs if any(re.search(INSTANCE_CONFIGS, part)
                                             for part in (c.split('/')[0], c.split('/')[-1]))]
    if args.quick:
        configs = quick_selection(configs)
    listed = configs  # the table lists every one of these that has a result
    if args.configs:
        configs = [c for c in configs if any(re.search(p, c) for p in args.configs)]
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results = load_results(results_path)
    if args.from_table:
        results = {**load_table(Path(args.from_table)), **results}
    signatures_path = results_path.with_name('signatures.json')
    signatures = json.loads(signatures_path.read_text()) if signatures_path.is_file() else {}

    todo = [c for c in configs if c not in results or results[c]['status'] in args.rerun]
    print(f'{len(configs)} configs, {len(configs) - len(todo)} already done, '
          f'{len(todo)} to run', flush=True)
    ran_by_signature = {signatures[c]: c for c in configs
                        if c in results and c in signatures and not results[c].get('same_as')
                        and c not in todo}
    pending = []  # the first config of each signature runs for real, the others share it
    for name in todo:
        if name not in signatures:
            signatures[name] = signature(root, name)
        pending.append(name)
    signatures_path.write_text(json.dumps(signatures, indent=0))

    done = []

    def record(row):
        results[row['config']] = row
        done.append(row['config'])
        with results_path.open('a') as f:
            f.write(json.dumps(row) + '\n')
        print(f'[{len(done)}/{len(todo)}] {row["status"]:<11} {row["seconds"]:>6} s  '
              f'{row["config"]}  {row["reason"][:120]}', flush=True)

    from concurrent.futures import ThreadPoolExecutor, as_completed
    leaders = []
    for name in pending:
        sig = signatures[name]
        if sig in ran_by_signature and ran_by_signature[sig] != name:
            continue
        ran_by_signature.setdefault(sig, name)
        if ran_by_signature[sig] == name:
            leaders.append(name)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_with_limit, root, name, args.size, args.limit)
                   for name in leaders]
        for future in as_completed(futures):
            record(future.result())
    for name in pending:
        leader = ran_by_signature[signatures[name]]
        if leader != name and leader in results:
            row = dict(results[leader], config=name, family=name.split('/')[0],
                       same_as=leader, seconds=0.0)
            record(row)

    table = Path(args.table or ('work_dirs/zoo/zoo_quick.md' if args.quick or args.configs
                                else REPO / 'docs' / 'zoo.md'))
    write_table(results, listed, table, args.size)
    counts = Counter(results[c]['status'] for c in configs if c in results)
    print('\n' + ', '.join(f'{counts[s]} {s}' for s in STATUSES) + f' -> {table}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
