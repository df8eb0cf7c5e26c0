"""``tools/demo_gradcam.py`` / ``mmdet-cam``: per-detection CAM images for images, folders,
globs and videos. A thin shell: flags -> ``DetCAM`` -> files."""
import argparse
import glob
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import mmcv
import numpy as np
from mmengine.config import DictAction
from mmengine.utils import ProgressBar

from .engine.named_boxes import parse_box_specs, read_boxes_file
from .errors import BadImageError, BadInputError, DetCAMError, InputNotFoundError
from .methods import box_specific_alternative, method_names
from .outputs import build_sinks, describe_run, top_words
from .outputs.atomic import write_json
from .outputs.resume import (
    check_resumable,
    detections_in,
    earlier_summaries,
    run_settings,
    weights_fingerprint,
)
from .settings import FUSE_MODES, PIXEL_EVIDENCE_METHOD, CAMSettings, OutputSettings

CAM, OUTPUT = CAMSettings(), OutputSettings()  # the defaults
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi')

EXAMPLES = """examples:
  # every detection of one image, GradCAM++ on every neck level (the default layers)
  %(prog)s demo/rtmdet_shapes.py demo/rtmdet_shapes.pth demo/images/shapes_1.jpg --method gradcam++
  # black-box D-RISE maps (no gradients), 1000 masks, a fixed seed
  %(prog)s demo/rtmdet_shapes.py demo/rtmdet_shapes.pth demo/images --method drise \\
      --method-options num_masks=1000 seed=0
  # "why a triangle and not a circle?": the evidence for the reported class over circle
  %(prog)s demo/rtmdet_shapes.py demo/rtmdet_shapes.pth demo/images/shapes_1.jpg \\
      --explain-class circle --contrast
  # an mmdet config by name, one FPN level, top 3 boxes, one image per box
  %(prog)s retinanet_r50_fpn_1x_coco retinanet.pth img.jpg --target-layers neck.fpn_convs.0 \\
      --topk 3 --per-box
  # a folder, only persons and cars, maps renormalised inside each box, raw maps saved
  %(prog)s yolox_s_8xb8-300e_coco yolox_s.pth images/ --classes person car --renormalize --save-npy
  # a video, explaining the right edge of each box
  %(prog)s yolox_s_8xb8-300e_coco yolox_s.pth clip.mp4 --target bbox --bbox-coord x2
  # Grounding DINO with your prompt: maps, and each detection's attribution per word
  %(prog)s grounding_dino_swin-t_finetune_16xb2_1x_coco gdino.pth img.jpg --texts 'cat . dog' \\
      --language-model /path/to/bert-base-uncased
  # which layers are there (with output shapes for the image)?
  %(prog)s yolox_s_8xb8-300e_coco none img.jpg --list-layers
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Class-activation heatmaps for each detection of an MMDetection model.',
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file, or the name of a config shipped with '
                        'mmdet (e.g. yolox_s_8xb8-300e_coco)')
    parser.add_argument('checkpoint', help="checkpoint path or URL, or 'none' for an untrained "
                        'model (random weights: for testing only)')
    parser.add_argument('img', help="image file, folder, glob ('imgs/*.jpg') or video "
                        '(.mp4/.avi: written back as a video with the overlay)')
    parser.add_argument('--method', default=CAM.method, metavar='NAME[,NAME...]',
                        help=f'CAM method, any case (default: {CAM.method}): '
                        f'{", ".join(method_names())}'
                        '. eigencam, kpca_cam and fem are not box-specific. Several, comma-'
                        'separated (gradcam++,odam): files per method (<stem>.<method>_...) '
                        'and side-by-side panels in the --html report')
    parser.add_argument('--method-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='options of the method (of each, with several), e.g. '
                        'num_masks=2000 seed=0 for drise')
    parser.add_argument('--target-layers', nargs='+', metavar='LAYER',
                        help="layers to explain at, e.g. 'neck' or 'neck.out_convs[-1]' "
                        'backbone.stage4 (default: every neck level; for DETR-style detectors the '
                        'last encoder layer, the memory the decoder reads)')
    parser.add_argument('--per-layer', action='store_true',
                        help='explain at each target layer alone instead of fusing them: '
                        'files per layer and side-by-side panels in the --html report')
    parser.add_argument('--fuse', choices=FUSE_MODES, default=None,
                        help="how maps of several layers / pyramid levels combine; 'own': "
                        "only each box's own level (default: mean; own for --target mask)")
    parser.add_argument('--target', choices=['score', 'logit', 'bbox', 'mask'],
                        default=CAM.target,
                        help='what is explained: the score, its log-odds, a box coordinate, or '
                        "(instance segmentors) the detection's own mask logits over its mask "
                        f'(default: {CAM.target})')
    parser.add_argument('--bbox-coord', choices=['x1', 'y1', 'x2', 'y2'], default='x1',
                        help='box coordinate explained with --target bbox (default: x1)')
    parser.add_argument('--mask-region', choices=['mask', 'box'], default='mask',
                        help='pixels whose mask logits --target mask sums: the predicted '
                        'mask, or the whole box (default: mask)')
    parser.add_argument('--boxes', nargs='+', metavar='X1,Y1,X2,Y2[:CLASS]',
                        help='explain what the model thought at these boxes (e.g. objects it '
                        'missed), whatever it scored there: the best matching raw candidate of '
                        'each, for CLASS (default: the class it scores highest); one image only')
    parser.add_argument('--boxes-file', metavar='FILE',
                        help='the same for the boxes in a file: COCO annotations (the images '
                        'they name), {"image.jpg": [{"bbox": [x1, y1, x2, y2], "class": name}]} '
                        'or a list of such boxes for one image')
    parser.add_argument('--explain-class', metavar='CLASS',
                        help="explain each detection's score for CLASS instead of its reported "
                        'class (same candidate): "why a truck and not a car?"')
    parser.add_argument('--contrast', action='store_true',
                        help="with --explain-class: explain the reported class's score minus "
                        "CLASS's score of the same candidate, the evidence for one over the other")
    parser.add_argument('--score-thr', type=float, default=CAM.score_thr,
                        help=f'explain detections scoring at least this (default: {CAM.score_thr})')
    parser.add_argument('--topk', type=int, help='explain at most the K highest-scoring boxes')
    parser.add_argument('--classes', nargs='+', metavar='CLASS',
                        help='keep only these classes (names or ids), e.g. --classes person 2')
    parser.add_argument('--texts', nargs='+', metavar='TEXT',
                        help="the prompt of a text-prompted detector (Grounding DINO, GLIP): "
                        "'cat . dog', or entity names as separate words (default: the config's "
                        'class names); JSON and the console then also give each detection\'s '
                        'attribution per token of the prompt')
    parser.add_argument('--language-model', metavar='DIR',
                        help="a text-prompted detector's language model from a local folder "
                        "(e.g. a copy of bert-base-uncased) instead of the config's hub name")
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0 (default: cpu)')
    parser.add_argument('--out-dir', default='outputs/cam',
                        help='where files are written (default: outputs/cam); other files in it '
                        'are left alone')
    parser.add_argument('--renormalize', action='store_true',
                        help='min-max each map inside its own box and zero it outside')
    parser.add_argument('--per-box', action='store_true',
                        help='also write <stem>_box<k>_<class>_<score>.jpg per detection')
    parser.add_argument('--save-npy', action='store_true',
                        help='also write the float maps as <stem>_cams.npy (N, H, W)')
    parser.add_argument('--save-all', action='store_true',
                        help='also write <stem>_original.jpg and <stem>_detection.jpg')
    parser.add_argument('--html', action='store_true',
                        help='also write an offline report, <out-dir>/index.html: point at a box '
                        'to see its map')
    parser.add_argument('--atlas', action='store_true',
                        help='also write the evidence atlas of the run: per class, the mean map '
                        'around its boxes and the share of it inside / outside them '
                        '(<out-dir>/atlas.json, atlas_<class>.jpg; on the --html index)')
    parser.add_argument('--resume', action='store_true',
                        help='continue an interrupted run into the same --out-dir: images whose '
                        'files are complete and were made with the same settings are kept; a '
                        'folder made with other settings is refused')
    parser.add_argument('--list-layers', action='store_true',
                        help="print the model's layers with output shapes for the first image, "
                        'then exit')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config settings, e.g. model.test_cfg.score_thr=0.1')
    parser.add_argument('--alpha', type=float, default=OUTPUT.alpha,
                        help=f'heatmap opacity in the overlay, 0-1 (default: {OUTPUT.alpha})')
    parser.add_argument('--batch-size', type=int, default=CAM.batch_size,
                        help='detections whose gradients are held in memory at once (default: '
                        f'{CAM.batch_size})')
    parser.add_argument('--memory-budget', default=CAM.memory_budget, metavar='SIZE',
                        help='what reading every raw candidate (drise, scorecam, ablationcam, '
                        'occlusion, --boxes, metrics) may hold at once, e.g. 2GB (default: '
                        f'{CAM.memory_budget})')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow a full unpickle of a checkpoint that a weights-only load '
                        'refuses (it can run code from the file: trusted files only)')
    parser.add_argument('--show', action='store_true', help='also show each result in a window')
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # deprecation and drawing notices from the OpenMMLab stack and torch say nothing a user of
    # this tool can act on; mmdet-cam's own warnings (e.g. ZeroGradientWarning) still show
    warnings.filterwarnings('ignore', module=r'(mmdet|mmengine|mmcv|torch)(\.|$)')
    warnings.formatwarning = lambda message, category, *args, **kwargs: (
        f'warning: {message}\n')
    try:
        return run(args)
    except DetCAMError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


def run(args) -> int:
    from .api import DetCAM
    from .model.detector import build_detector, resolve_config
    from .model.prompts import use_language_model
    output = OutputSettings.of(alpha=args.alpha, renormalize=args.renormalize,
                               per_box=args.per_box, save_npy=args.save_npy,
                               save_all=args.save_all, html=args.html, atlas=args.atlas)
    if args.contrast and not args.explain_class:
        raise BadInputError('--contrast needs --explain-class CLASS, the class to contrast with')
    sources = expand_inputs(args.img)
    named = named_boxes(args, sources)
    checkpoint = None if args.checkpoint.lower() == 'none' else args.checkpoint
    if checkpoint and '://' not in checkpoint and not Path(checkpoint).is_file():
        raise InputNotFoundError(f'checkpoint not found: {checkpoint}')
    out_dir = ensure_writable(args.out_dir)
    target = {'bbox': dict(type='bbox', coord=args.bbox_coord),
              'mask': dict(type='mask', region=args.mask_region)}.get(args.target, args.target)
    methods = [name.strip() for name in args.method.split(',')]
    if not all(methods) or len(set(methods)) < len(methods):
        raise BadInputError(f'--method takes method names separated by commas, each once; '
                            f'got {args.method!r}')
    texts = args.texts[0] if args.texts and len(args.texts) == 1 else args.texts
    options = dict(score_thr=args.score_thr, topk=args.topk, classes=args.classes,
                   target=target, fuse=args.fuse, batch_size=args.batch_size, texts=texts,
                   memory_budget=args.memory_budget)
    config = resolve_config(args.config)
    if args.language_model:
        if not Path(args.language_model).is_dir():
            raise InputNotFoundError(f'language model folder not found: {args.language_model}')
        use_language_model(config, args.language_model)
    model = build_detector(config, checkpoint, args.device, args.cfg_options,
                           args.trust_checkpoint, warn_untrained=False)  # a note says it below
    cam = DetCAM(model, target_layers=args.target_layers,
                 method=method_config(methods[0], args.method_options), **options)
    if checkpoint is None:
        print('note: no checkpoint, the model has random weights', file=sys.stderr)
    if args.list_layers:
        return print_layers(cam, sources[0])
    panels = []  # (DetCAM, Sinks) per way each image is explained
    dataset_meta = dict(cam.model.dataset_meta, classes=cam.class_names)
    settings = dict(run_settings(args), weights=weights_fingerprint(model))
    for k, (name, way) in enumerate(explanation_ways(cam, methods, args, options)):
        run_description = dict(describe_run(way, args.explain_class), run_settings=settings)
        panels.append((way, build_sinks(out_dir, dataset_meta, run_description, output,
                                        panel=name, panel_index=k)))
    writers = [sinks.files for _, sinks in panels]
    if args.resume:  # before any work: nothing in a folder made otherwise is overwritten
        check_resumable(writers, [Path(s).stem for s in sources], settings)
    start, failed, detections, most, kept = time.time(), [], 0, 0, 0
    images = [s for s in sources if not is_video(s)]
    progress = ProgressBar(len(images)) if len(images) > 1 else None
    for source in sources:
        what = dict(explain_class=args.explain_class, contrast=args.contrast)
        if named is not None:
            if Path(source).name not in named:
                print(f'\nskipped {source}: no boxes for it in {args.boxes_file}',
                      file=sys.stderr)
                if progress is not None:
                    progress.update()
                continue
            boxes, labels = named[Path(source).name]
            what = dict(boxes=boxes, labels=labels)
        earlier = earlier_summaries(writers, Path(source).stem) if args.resume else None
        if earlier is not None:
            for _, sinks in panels:
                sinks.restore(Path(source).stem)
            count = detections_in(earlier[0])
            detections, most, kept = detections + count, max(most, count), kept + 1
            if progress is not None and not is_video(source):
                progress.update()
            continue
        try:
            count = (explain_video(panels, source, what) if is_video(source)
                     else explain_image(panels, source, args.show, what))
            detections, most = detections + count, max(most, count)
        except (BadImageError, InputNotFoundError) as error:
            if len(sources) == 1:
                raise
            failed.append(source)
            print(f'\nskipped {source}: {error}', file=sys.stderr)
        if progress is not None and not is_video(source):
            progress.update()
    for method in methods:
        alternative = box_specific_alternative(method)
        if most > 1 and alternative:
            print(f'\nnote: {method} maps are not box-specific (one weight per channel, so a '
                  f'box\'s map also marks other objects of those channels); --method '
                  f'{alternative} (the default, chosen by the faithfulness benchmark) keeps '
                  'each map on its own box', file=sys.stderr)
    if detections and any(cam.layers_read for cam, _ in panels):
        print(f'\nnote: maps at target layers show the features that drove each box, which are '
              'not always the pixels that decided it; for "what in the image made this box" use '
              f'--method {PIXEL_EVIDENCE_METHOD} (one forward per window position: slower)',
              file=sys.stderr)
    summary = (f'{len(sources) - len(failed)} of {len(sources)} inputs, {detections} '
               f'detections, {time.time() - start:.1f} s -> {out_dir}')
    print(f'\ndone: {summary}' + (f' ({len(failed)} failed)' if failed else '')
          + (f' ({kept} kept from the earlier run)' if kept else ''))
    # the first panel's report is closed last: its index shows every panel's atlas
    messages = [sinks.close() for _, sinks in reversed(panels)]
    for message in (m for panel in reversed(messages) for m in panel):
        print(message)
    return 1 if failed else 0


def method_config(name: str, options: Optional[dict]):
    """``--method`` and ``--method-options`` as ``DetCAM`` takes them."""
    return dict(type=name, **options) if options else name


def explanation_ways(cam, methods: List[str], args, options: dict) -> List[Tuple]:
    """``(panel name, DetCAM)`` per way each image is explained: per method and,
    with ``--per-layer``, per target layer (``cam``, built for the first method, serves where
    it can; the others share its model). The panel name is None for a single way."""
    from .api import DetCAM
    ways = []
    for method in methods:
        whole = cam if method == methods[0] else DetCAM(
            cam.model, target_layers=args.target_layers,
            method=method_config(method, args.method_options), **options)
        if not args.per_layer or not whole.layers_read:
            ways.append((method, whole))
            continue
        for layer in whole.layer_names:
            ways.append((f'{method} {layer}' if len(methods) > 1 else layer,
                         DetCAM(cam.model, target_layers=[layer],
                                method=method_config(method, args.method_options), **options)))
    if len(ways) == 1:
        return [(None, ways[0][1])]
    return ways


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def expand_inputs(spec: str) -> List[str]:
    """Files named by an image/video path, a folder (its images) or a glob."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir()
                       if p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        if not files:
            raise InputNotFoundError(f'no images or videos in folder {spec}')
        return files
    if path.is_file():
        return [spec]
    if glob.has_magic(spec):
        files = sorted(f for f in glob.glob(spec) if Path(f).is_file())
        if not files:
            raise InputNotFoundError(f'no files match {spec}')
        return files
    raise InputNotFoundError(f'image not found: {spec}')


def ensure_writable(out_dir: str) -> Path:
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise DetCAMError(f'cannot write to output folder {out_dir}: {error.strerror}') from None
    return path


def print_layers(cam, source: str) -> int:
    from .model.detector import preprocess, read_image
    from .model.layers import layer_output_shapes
    image = first_frame(source) if is_video(source) else read_image(source)
    rows = layer_output_shapes(cam.model, *preprocess(cam.model, cam.pipeline, image))
    width = max(len(name) for name, _, _ in rows)
    for name, kind, shape in rows:
        print(f'{name:<{width}}  {kind:<28} {shape}')
    return 0


def first_frame(video: str) -> np.ndarray:
    reader = mmcv.VideoReader(video)
    frame = reader.read()
    if frame is None:
        raise BadImageError(f'cannot read video {video}')
    return frame


def named_boxes(args, sources: List[str]):
    """``{image file name: (boxes, labels)}`` from ``--boxes`` or ``--boxes-file``, or None."""
    if not (args.boxes or args.boxes_file):
        return None
    if args.boxes and args.boxes_file:
        raise BadInputError('give --boxes or --boxes-file, not both')
    if args.explain_class:
        raise BadInputError('--boxes and --explain-class do not go together: give the class '
                            'of each box with it')
    if any(is_video(source) for source in sources):
        raise BadInputError('named boxes are for images, not videos')
    if args.boxes_file:
        return read_boxes_file(args.boxes_file, [Path(s).name for s in sources])
    if len(sources) > 1:
        raise BadInputError('--boxes names boxes of one image; give a single image file '
                            '(or --boxes-file for several)')
    return {Path(sources[0]).name: parse_box_specs(args.boxes)}


def explain_image(panels, source: str, show: bool, what: dict) -> int:
    """Explain one image with each panel's ``DetCAM`` and write its files (``what``:
    ``boxes``, ``labels`` and ``explain_class`` as for ``DetCAM.__call__``); returns the
    number of detections."""
    for cam, sinks in panels:
        result = cam(source, **what)
        sinks.add(result, Path(source).stem, source)
        writer = sinks.files
        if result.token_attributions is not None:
            print_top_words(result, writer, source)
        if show:
            try:
                mmcv.imshow(writer.render(result), writer.file_stem(Path(source).stem),
                            wait_time=0)
            except cv2.error:
                raise DetCAMError('--show needs a display; the files were written') from None
    return len(result)


def print_top_words(result, writer, source: str) -> None:
    """Per detection of a text-prompted detector: the words of the prompt that raised its
    value most (``+``) and their attributions."""
    print(f'\n{Path(source).name}: the prompt\'s words that raised each detection most')
    for k, (label, score) in enumerate(zip(result.detections.labels.tolist(),
                                           result.detections.scores.tolist())):
        words = ', '.join(f'{word} {value:+.3g}' for word, value in
                          top_words(result.tokens, result.token_attributions[k]))
        print(f'  {k} {writer.class_name(label)} {score:.2f}: {words}')


def explain_video(panels, source: str, what: dict) -> int:
    """Write ``<stem>_cam.mp4`` (same frame rate) and ``<stem>.json`` with every frame's boxes
    per panel (``what``: ``explain_class`` and ``contrast`` as for ``DetCAM.__call__``); with
    ``--html`` also each frame's report images, ``<stem>_f<index>_...``."""
    reader = mmcv.VideoReader(source)
    if reader.frame_cnt == 0 or reader.width == 0:
        raise BadImageError(f'cannot read video {source}')
    stem = Path(source).stem
    videos = [cv2.VideoWriter(str(sinks.files.out_dir / f'{sinks.files.file_stem(stem)}_cam.mp4'),
                              cv2.VideoWriter_fourcc(*'mp4v'), reader.fps,
                              (reader.width, reader.height)) for _, sinks in panels]
    frames, count = [[] for _ in panels], 0
    progress = ProgressBar(reader.frame_cnt)
    try:
        for index, frame in enumerate(reader):
            for (cam, sinks), video, described in zip(panels, videos, frames):
                result, writer = cam(frame, **what), sinks.files
                sinks.add_frame(result)  # the atlas
                video.write(writer.render(result))
                if writer.html:
                    writer.write_report_images(result, stem, index)
                described.append(dict(frame=index, detections=writer.describe(result)))
            count += len(result)
            progress.update()
    finally:
        for video in videos:
            video.release()
    for (_, sinks), described in zip(panels, frames):
        sinks.end_video(stem)
        writer = sinks.files
        summary = dict(video=source, fps=reader.fps, image_size=[reader.height, reader.width],
                       **writer.settings, **writer.panel_fields(stem), frames=described,
                       **(dict(palette=writer.palette) if writer.palette else {}))
        write_json(writer.json_path(stem), summary)
    return count


if __name__ == '__main__':
    sys.exit(main())
