"""``DetCAMHook``: per-detection CAMs for the images of mmdet's own test loop.

    custom_imports = dict(imports=['mmdet_cam'], allow_failed_imports=False)
    custom_hooks = [dict(type='DetCAMHook', method='gradcam++', interval=1)]

Before each test batch the hook explains the batch's images with ``DetCAM`` (its own forward
pass with gradients: the loop's forward runs under ``no_grad``), writes the overlay and JSON
of each image to ``<work_dir>/<out_dir>/`` and attaches the maps to the batch's data samples
(``cams``, ``cam_detections``) so that ``CAMLocalizationMetric`` can score them. With
``faithfulness_steps`` it also measures each map's deletion and insertion AUC on the detector
(``2 * (steps + 1)`` extra forwards per detection, so off by default) for
``CAMFaithfulnessMetric`` (``cam_faithfulness``). With ``triage`` it tags each explained
detection true or false positive against the image's ground truth (mmdet's own matching),
explains every missed ground-truth box through the model's best raw candidate for it
(``<stem>_missed_cam.jpg``, ``missed`` in the image's JSON), and writes ``triage.json``: the
false positives and missed objects of the whole run, gathered from every process. mmdet's own
predictions and metrics are not touched. In distributed runs every process explains its own
shard of the test set.
"""
import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from mmdet.registry import HOOKS
from mmengine.dist import all_gather_object, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.structures import InstanceData

from ..api import DetCAM
from ..engine.candidates import CandidateScorer
from ..engine.mask_logits import check_candidate_masks
from ..engine.memory import memory_budget
from ..errors import BadInputError, UnknownNameError
from ..metrics import detection_faithfulness, mask_tracker, tracker, triage
from ..model.layers import predicting_detector
from ..outputs import Sinks, build_sinks, describe_run
from ..outputs.atomic import atomic_path, write_json
from ..outputs.resume import (
    check_resumable,
    earlier_summaries,
    recorded,
    weights_fingerprint,
)
from ..outputs.visualizer import VisualizerSink, remote_backends
from ..settings import CAMSettings, OutputSettings


@HOOKS.register_module()
class DetCAMHook(Hook):
    """Explain the test images.

    Args:
        interval: explain every ``interval``-th test batch (1: every image).
        out_dir: folder for the files, relative to the runner's ``work_dir``.
        faithfulness_steps: perturbation steps of each deletion / insertion curve; 0: off.
        triage: tag detections TP / FP and explain the missed ground-truth boxes.
        triage_iou: IoU at which a detection matches a ground-truth box (as mmdet's mAP).
        resume: continue a stopped test run into the same folder: images whose files are
            complete and were made with the same settings (``run_settings`` in their JSON) are
            not explained again; what the metrics need of them (maps, detections,
            faithfulness) is kept per image in ``<stem>.maps.npz``. A folder made with other
            settings is refused before the first image.
        **settings: what to explain, as for ``DetCAM`` (the fields of
            :class:`~mmdet_cam.settings.CAMSettings`: ``method``, ``target_layers``,
            ``target``, ``score_thr``, ``topk``, ``classes``, ``fuse``, ...), and how to
            write it, as for the CLI (the fields of :class:`~mmdet_cam.settings.OutputSettings`:
            ``alpha``, ``renormalize``, ``per_box``, ``save_npy``, ``html``: the report of the
            explained test images, ``<out_dir>/index.html``, with the triage tags and missed
            objects when ``triage`` is on; ``atlas``: the per-class evidence atlas of the run,
            ``<out_dir>/atlas.json``).

    Where the config's ``visualizer`` has backends other than ``LocalVisBackend``
    (``TensorboardVisBackend``, ``WandbVisBackend``, ``MLflowVisBackend``, ...), each overlay is
    also sent to them as ``cam/<method>/<image stem>``, and the atlas pictures at the end as
    ``cam/<method>/atlas/<class>``; the files are written as without them.
    """

    priority = 'NORMAL'

    def __init__(self,
                 interval: int = 1,
                 out_dir: str = 'cam',
                 faithfulness_steps: int = 0,
                 triage: bool = False,
                 triage_iou: float = 0.5,
                 resume: bool = False,
                 **settings):
        cam_options, rest = CAMSettings.split(settings)
        output_options, unknown = OutputSettings.split(rest)
        if unknown:
            raise UnknownNameError(
                f"DetCAMHook got unknown option(s) {', '.join(sorted(unknown))}; it takes "
                'interval, out_dir, faithfulness_steps, triage, triage_iou, resume and the '
                'fields of '
                f"CAMSettings ({', '.join(CAMSettings.names())}) and OutputSettings "
                f"({', '.join(OutputSettings.names())})")
        self.settings = CAMSettings.of(**cam_options)
        self.output = OutputSettings.of(**output_options)
        self.interval = interval
        self.out_dir = out_dir
        self.faithfulness_steps = faithfulness_steps
        self.cam: Optional[DetCAM] = None
        self.sinks: Optional[Sinks] = None
        self.scorer: Optional[CandidateScorer] = None
        self.triage, self.triage_iou = triage, triage_iou
        self.resume = resume
        self.ground_truth: dict = {}  # image path -> (boxes, labels, ignored)
        self.errors: list = []  # the run's false positives and missed objects
        self.said_missed = False  # whether the log said why missed objects are not explained
        self.request = None  # what is explained of each test image's detections

    def before_test(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        dataset_meta = dict(runner.test_dataloader.dataset.metainfo)
        if not getattr(model, 'dataset_meta', None):  # class names for `classes=` and labels
            model.dataset_meta = dataset_meta
        self.cam = DetCAM(model, settings=self.settings, config=runner.cfg)
        out_dir = Path(runner.work_dir) / self.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        settings = dict(self.run_settings(), weights=weights_fingerprint(model))
        self.sinks = build_sinks(out_dir, dataset_meta,
                                 dict(describe_run(self.cam), run_settings=settings), self.output)
        if self.resume:  # before the first image: nothing made otherwise is overwritten
            dataset = runner.test_dataloader.dataset
            check_resumable([self.sinks.files], [Path(dataset.get_data_info(i)['img_path']).stem
                                                 for i in range(len(dataset))], settings)
        backends = remote_backends(runner.visualizer)
        if backends:  # TensorBoard, W&B, ... of the config's vis_backends: the overlays too
            self.sinks.append(VisualizerSink(backends, self.sinks.files.render,
                                             self.cam.method_pipeline.name, out_dir))
        self.request = self.cam.request()
        if self.faithfulness_steps > 0:
            if self.request.reads_masks:  # refused before the first image, not at it
                check_candidate_masks(predicting_detector(self.cam.model), 'mask faithfulness')
            self.scorer = CandidateScorer(model, self.cam.pipeline,
                                          masks=self.request.reads_masks)
        if self.triage:
            self.ground_truth = ground_truth(runner.test_dataloader.dataset)
            self.errors = []
            self.said_missed = False

    def before_test_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self.every_n_inner_iters(batch_idx, self.interval):
            return
        for sample in data_batch['data_samples']:
            stem = Path(sample.img_path).stem
            if self.resume and self.restore(sample, stem):
                continue
            result = self.cam(sample.img_path)
            if self.scorer is not None:  # also in the image's JSON and report
                sample.cam_faithfulness = [self.faithfulness(result, k)
                                           for k in range(len(result))]
                result.detections.faithfulness = sample.cam_faithfulness
            # after the figures: the run's list of errors holds each row as the JSON does
            extra = self.tag_and_explain_missed(result, stem, sample.img_path) \
                if self.triage else None
            sample.cams = result.cams
            sample.cam_detections = result.detections
            if self.resume:  # before the JSON, which the files sink writes last
                self.keep(sample, stem)
            self.sinks.add(result, stem, sample.img_path, extra)

    def run_settings(self) -> dict:
        """What decides an explained image's files and figures, as its JSON records it (a
        resumed run keeps an image only where they are the same; with the model's
        ``weights_fingerprint``)."""
        settings = dict(dataclasses.asdict(self.settings), **dataclasses.asdict(self.output),
                        interval=self.interval, faithfulness_steps=self.faithfulness_steps,
                        triage=self.triage, triage_iou=self.triage_iou)
        return json.loads(json.dumps(settings, default=recorded))

    def maps_path(self, stem: str) -> Path:
        return self.sinks.files.out_dir / f'{stem}.maps.npz'

    def keep(self, sample, stem: str) -> None:
        """What the metrics read of an explained image, for a resumed run."""
        detections = sample.cam_detections
        faithfulness = json.dumps(sample.get('cam_faithfulness'))
        with atomic_path(self.maps_path(stem)) as path:
            np.savez_compressed(path, cams=sample.cams, bboxes=detections.bboxes.numpy(),
                                scores=detections.scores.numpy(),
                                labels=detections.labels.numpy(),
                                faithfulness=np.array(faithfulness))

    def restore(self, sample, stem: str) -> bool:
        """Give ``sample`` what an earlier run of the same settings kept of it, and the sinks
        its files; False where that run did not finish the image."""
        earlier = earlier_summaries([self.sinks.files], stem)
        if earlier is None or not self.maps_path(stem).is_file():
            return False
        with np.load(self.maps_path(stem)) as kept:
            sample.cams = kept['cams']
            sample.cam_detections = InstanceData(
                bboxes=torch.from_numpy(kept['bboxes']), scores=torch.from_numpy(kept['scores']),
                labels=torch.from_numpy(kept['labels']))
            faithfulness = json.loads(str(kept['faithfulness']))
        if faithfulness is not None:
            sample.cam_faithfulness = faithfulness
        if self.triage:  # the image's false positives and missed objects, as it listed them
            summary = earlier[0]
            self.errors += ([dict(image=sample.img_path, **row) for row in summary['detections']
                             if row.get('tag') == 'FP']
                            + [dict(image=sample.img_path, **row)
                               for row in summary.get('missed', [])])
        self.sinks.restore(stem)
        return True

    def tag_and_explain_missed(self, result, stem: str, path: str) -> dict:
        """Tags ``result``'s detections (``tags``), explains the missed ground-truth boxes
        and returns them for the image's JSON."""
        boxes, labels, ignored = self.ground_truth.get(path, _NO_OBJECTS)
        if self.cam.class_ids is not None:  # objects of classes not explained do not count
            kept = np.isin(labels, self.cam.class_ids)
            boxes, labels, ignored = boxes[kept], labels[kept], ignored[kept]
        detections = result.detections
        tags, missed = triage(detections.bboxes.numpy(), detections.scores.numpy(),
                              detections.labels.numpy(), boxes, labels, ignored,
                              self.triage_iou)
        detections.tags = tags
        height, width = result.image.shape[:2]
        named = np.clip(boxes[missed], 0, [width, height, width, height])  # annotation rounding
        explainable = (named[:, 2] > named[:, 0]) & (named[:, 3] > named[:, 1])
        rows = []
        found = self.explain_missed(result.image, named[explainable],
                                    labels[missed][explainable]) if explainable.any() else None
        if found is None:
            explainable[:] = False
        else:
            found.detections.tags = ['FN'] * len(found)
            self.sinks.files.imwrite(f'{stem}_missed_cam.jpg', self.sinks.files.render(found))
            rows = self.sinks.files.describe(found)
        rows += [dict(index=len(rows) + k, tag='FN', named_bbox=[round(v, 2) for v in box],
                      class_name=self.sinks.files.class_name(int(label)))  # listed, not explained
                 for k, (box, label) in enumerate(zip(named[~explainable].tolist(),
                                                      labels[missed][~explainable]))]
        self.errors += [dict(image=path, **row) for row in self.sinks.files.describe(result)
                        if row['tag'] == 'FP'] + [dict(image=path, **row) for row in rows]
        return dict(missed=rows)

    def explain_missed(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        """The maps of missed objects' boxes, or None where the method cannot explain named
        boxes (said once in the log, with why: the boxes are then listed, not explained)."""
        try:
            return self.cam(image, boxes=boxes, labels=labels.tolist())
        except BadInputError as error:
            if not self.said_missed:
                print_log(f'DetCAMHook: missed objects are listed, not explained: {error}',
                          logger='current', level=logging.WARNING)
                self.said_missed = True
            return None

    def after_test(self, runner) -> None:
        if self.triage:
            self.write_triage(runner)
        for message in self.sinks.close():  # every process has written its images
            print_log(f'DetCAMHook: {message}', logger='current')

    def write_triage(self, runner) -> None:
        errors = sorted((e for part in all_gather_object(self.errors) for e in part),
                        key=lambda e: (e['image'], e['tag'], e['index']))
        if is_main_process():
            summary = dict(iou_thr=self.triage_iou, score_thr=self.settings.score_thr,
                           false_positives=[e for e in errors if e['tag'] == 'FP'],
                           missed=[e for e in errors if e['tag'] == 'FN'])
            write_json(Path(runner.work_dir) / self.out_dir / 'triage.json', summary)

    def faithfulness(self, result, k: int) -> dict:
        """Deletion / insertion AUCs and OA of detection ``k``'s map (its mask followed by mask
        IoU when the masks are explained, else its box by box IoU)."""
        label = int(result.detections.labels[k])
        score_fn = (mask_tracker(self.scorer, result.detections.masks[k].numpy(), label)
                    if self.request.reads_masks else
                    tracker(self.scorer, result.detections.bboxes[k].tolist(), label))
        with memory_budget(self.settings.memory_budget):
            return detection_faithfulness(result.image, result.cams[k], score_fn,
                                          self.faithfulness_steps)


_NO_OBJECTS = (np.zeros((0, 4), np.float32), np.zeros(0, int), np.zeros(0, bool))


def ground_truth(dataset) -> dict:
    """Image path -> ``(boxes, labels, ignored)`` of an mmdet dataset's annotations, in
    original-image pixels (as mmdet's metrics read them)."""
    table = {}
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        instances = info.get('instances', [])
        table[info['img_path']] = (
            np.array([i['bbox'] for i in instances], np.float32).reshape(-1, 4),
            np.array([i['bbox_label'] for i in instances], int),
            np.array([bool(i.get('ignore_flag', 0)) for i in instances], bool))
    return table
