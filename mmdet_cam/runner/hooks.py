"""``DetCAMHook``: per-detection CAMs for the images of mmdet's own test loop.

    custom_imports = dict(imports=['mmdet_cam'], allow_failed_imports=False)
    custom_hooks = [dict(type='DetCAMHook', method='gradcam++', interval=1)]

Before each test batch the hook explains the batch's images with ``DetCAM`` (its own forward
pass with gradients: the loop's forward runs under ``no_grad``), writes the overlay and JSON
of each image to ``<work_dir>/<out_dir>/`` and attaches the maps to the batch's data samples
(``cams``, ``cam_detections``) so that ``CAMLocalizationMetric`` can score them. With
``faithfulness_steps`` it also measures each map's deletion and insertion AUC on the detector
(``2 * (steps + 1)`` extra forwards per detection, so off by default) for
``CAMFaithfulnessMetric`` (``cam_faithfulness``). mmdet's own predictions and metrics are not
touched. In distributed runs every process explains its own shard of the test set.
"""
from pathlib import Path
from typing import Optional, Sequence, Union

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..api import DetCAM
from ..engine.candidates import CandidateScorer
from ..methods import DEFAULT_METHOD
from ..metrics import detection_faithfulness, tracker
from ..outputs import ResultWriter


@HOOKS.register_module()
class DetCAMHook(Hook):
    """Explain the test images.

    Args:
        method, target_layers, target, score_thr, topk, classes, fuse: as for ``DetCAM``.
        interval: explain every ``interval``-th test batch (1: every image).
        out_dir: folder for the files, relative to the runner's ``work_dir``.
        alpha, renormalize, per_box, save_npy: as for the CLI.
        faithfulness_steps: perturbation steps of each deletion / insertion curve; 0: off.
    """

    priority = 'NORMAL'

    def __init__(self,
                 method: Union[str, dict] = DEFAULT_METHOD,
                 target_layers: Optional[Union[str, Sequence[str]]] = None,
                 target: Union[str, dict] = 'score',
                 score_thr: float = 0.3,
                 topk: Optional[int] = None,
                 classes: Optional[Sequence[Union[int, str]]] = None,
                 fuse: str = 'mean',
                 interval: int = 1,
                 out_dir: str = 'cam',
                 alpha: float = 0.5,
                 renormalize: bool = False,
                 per_box: bool = False,
                 save_npy: bool = False,
                 faithfulness_steps: int = 0):
        self.cam_args = dict(method=method, target_layers=target_layers, target=target,
                             score_thr=score_thr, topk=topk, classes=classes, fuse=fuse)
        self.interval = interval
        self.out_dir = out_dir
        self.writer_args = dict(alpha=alpha, renormalize=renormalize, per_box=per_box,
                                save_npy=save_npy)
        self.faithfulness_steps = faithfulness_steps
        self.cam: Optional[DetCAM] = None
        self.writer: Optional[ResultWriter] = None
        self.scorer: Optional[CandidateScorer] = None

    def before_test(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        dataset_meta = dict(runner.test_dataloader.dataset.metainfo)
        if not getattr(model, 'dataset_meta', None):  # class names for `classes=` and labels
            model.dataset_meta = dataset_meta
        self.cam = DetCAM(model, config=runner.cfg, **self.cam_args)
        out_dir = Path(runner.work_dir) / self.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        settings = dict(method=self.cam_args['method'], target=self.cam_args['target'],
                        target_layers=self.cam.layer_names, fuse=self.cam_args['fuse'])
        self.writer = ResultWriter(out_dir, dataset_meta, settings, **self.writer_args)
        if self.faithfulness_steps > 0:
            self.scorer = CandidateScorer(model, self.cam.pipeline)

    def before_test_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self.every_n_inner_iters(batch_idx, self.interval):
            return
        for sample in data_batch['data_samples']:
            result = self.cam(sample.img_path)
            self.writer.write_image(result, Path(sample.img_path).stem, sample.img_path)
            sample.cams = result.cams
            sample.cam_detections = result.detections
            if self.scorer is not None:
                sample.cam_faithfulness = [self.faithfulness(result, k)
                                           for k in range(len(result))]

    def faithfulness(self, result, k: int) -> dict:
        """Deletion / insertion AUCs and OA of detection ``k``'s map."""
        score_fn = tracker(self.scorer, result.detections.bboxes[k].tolist(),
                           int(result.detections.labels[k]))
        return detection_faithfulness(result.image, result.cams[k], score_fn,
                                      self.faithfulness_steps)
