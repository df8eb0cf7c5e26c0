"""Python API: ``DetCAM`` explains every detection of an image with its own heatmap."""
import contextlib
import copy
import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.structures import InstanceData
from mmengine.config import Config
from torch import nn

from .model.detector import (ConfigLike, build_detector, build_test_pipeline, mmdet_failure,
                             preprocess, read_image)
from .engine.explain import FUSE_MODES, ZeroGradientWarning, explain
from .errors import BadInputError, UnknownNameError
from .engine.geometry import to_original_image
from .model.layers import layer_name, resolve_layers
from .engine.candidates import (CandidateScorer, MaskedCandidates, NamedBoxes, added_proposals,
                                every_candidate)
from .methods import DEFAULT_METHOD, build_cam_method
from .methods.drise import num_classes_of
from .registry import CAM_TARGETS, lookup
from .engine.reshape import build_reshape_transform


@dataclass
class DetCAMResult:
    """Detections of one image and one map per detection.

    Attributes:
        detections: ``bboxes`` (x1, y1, x2, y2 in original-image pixels), ``scores`` and
            ``labels`` as the detector reports them, highest score first; ``levels``: the
            pyramid level each came from (where gradients were computed).
        cams: float32 ``(N, H, W)`` maps in [0, 1] for the ``H x W`` original image,
            ``cams[i]`` explaining ``detections[i]``.
        image: the BGR image the maps belong to.
        zero_gradient_layers: per detection, target layers that got no gradient from it.
    """
    detections: InstanceData
    cams: np.ndarray
    image: np.ndarray
    zero_gradient_layers: List[List[str]]

    def __len__(self) -> int:
        return len(self.detections)


class DetCAM:
    """Per-detection class-activation maps for an mmdet 3.x detector.

    One forward pass per image; then each detection's own target value (its score by
    default) is back-propagated to the target layers only, and a pytorch_grad_cam formula
    turns activations and that detection's gradients into its map.

    Args:
        model_or_config: a built mmdet detector (with ``model.cfg``, as from
            ``init_detector``), a config path, or the name of a config shipped with mmdet
            (``'yolox_s_8xb8-300e_coco'``).
        checkpoint: path or URL, or None for an untrained model (``init_weights()``).
        target_layers: layer names (``'neck'``, ``'neck.out_convs[-1]'``) or modules; None
            picks every neck level (every detection gets a non-zero map). A layer that
            outputs a tuple (a whole FPN) gives one map per element.
        method: a ``CAM_METHODS`` name, any case: gradcam, gradcam++, xgradcam, eigengradcam
            (channel-pooled: a box's map also marks other objects of the same channels);
            hirescam, layercam, gradcamelementwise, odam, ssgradcam, ssgradcam++, gcame
            (box-specific); eigencam, kpca_cam, fem (gradient-free: the same map for every
            detection); randomcam (a baseline); drise (black-box: the detector on randomly
            masked images, ``dict(type='drise', num_masks=..., seed=...)``).
        device: where to build the model (an already built model stays where it is).
        score_thr: explain detections scoring at least this much.
        topk: explain at most this many (highest scores).
        classes: keep only these class ids or names.
        target: ``'score'``, ``'logit'``, ``'bbox'`` (a ``CAM_TARGETS`` name, a config dict
            such as ``dict(type='bbox', coord='x2')``, or a callable ``pred_instances ->
            values``).
        fuse: ``'mean'`` or ``'max'`` over layers and pyramid levels, or ``'own'``: each
            detection's own level only (``detections.levels``).
        eigen_smooth: pytorch_grad_cam's first-principal-component smoothing.
        reshape_transform: ``'auto'`` (token sequences -> maps) or a callable.
        batch_size: detections whose gradients are kept in memory at once.
        local_replay: back-propagate each detection through the part of the box head it
            depends on (a window of a dense head's level, or its RoI) instead of the whole
            head (same maps, checked against the full backward once per level or head;
            False: always the full backward).
        cfg_options: config overrides when building from a config.
        trust_checkpoint: allow a full (unsafe) unpickle of a checkpoint a weights-only load
            refuses.
        config: the config whose test pipeline prepares images, for a built model without
            ``model.cfg``.
    """

    def __init__(self,
                 model_or_config: Union[nn.Module, ConfigLike],
                 checkpoint: Optional[str] = None,
                 target_layers=None,
                 method=DEFAULT_METHOD,
                 device: str = 'cpu',
                 score_thr: float = 0.3,
                 topk: Optional[int] = None,
                 classes: Optional[Sequence[Union[int, str]]] = None,
                 target: Union[str, dict, Callable] = 'score',
                 fuse: str = 'mean',
                 eigen_smooth: bool = False,
                 reshape_transform: Union[str, Callable] = 'auto',
                 batch_size: int = 16,
                 local_replay: bool = True,
                 cfg_options: Optional[dict] = None,
                 trust_checkpoint: bool = False,
                 config: Optional[Config] = None):
        if isinstance(model_or_config, nn.Module):
            self.model = model_or_config.eval()
        else:
            self.model = build_detector(model_or_config, checkpoint, device, cfg_options,
                                        trust_checkpoint)
        config = config or getattr(self.model, 'cfg', None)
        if config is None:
            raise UnknownNameError(
                'the model has no .cfg: build it with mmdet.apis.init_detector or '
                'mmdet_cam.build_detector, or pass config=, so its test pipeline is known')
        if fuse not in FUSE_MODES:
            raise UnknownNameError(f"fuse must be one of {', '.join(FUSE_MODES)}, got {fuse!r}")
        self.layers = resolve_layers(self.model, target_layers)
        self.layer_names = [layer_name(self.model, layer) for layer in self.layers]
        self.method = build_cam_method(method, self.model)
        self.target = _build_target(target)
        self.reshape = build_reshape_transform(reshape_transform)
        self.config = config
        self.pipeline = build_test_pipeline(config)
        dataset_meta = getattr(self.model, 'dataset_meta', None) or {}
        self.class_names = list(dataset_meta.get('classes', []))
        self.score_thr, self.topk = score_thr, topk
        self.class_ids = None if classes is None else self._class_ids(classes)
        self.fuse, self.eigen_smooth, self.batch_size = fuse, eigen_smooth, batch_size
        self.local_replay = local_replay

    def __call__(self, img: Union[str, Path, np.ndarray],
                 candidates: Optional[Callable] = None,
                 boxes=None, labels=None, explain_class=None,
                 contrast: bool = False) -> DetCAMResult:
        """Maps for every kept detection of ``img`` (a path or an HxWx3 BGR uint8 array).

        Args:
            boxes: instead, explain what the model thought at these boxes (``[N, 4]``
                x1, y1, x2, y2 in original-image pixels, e.g. ground-truth boxes of missed
                objects): the raw candidate (no score threshold, no NMS) that best matches each,
                by IoU x probability of its class. ``detections.named_bboxes`` and
                ``detections.ious`` give each box and its candidate's IoU with it.
            labels: the class (id or name) of each box; None, or None for a box: the class
                the best matching candidate scores highest.
            explain_class: explain, for each kept detection, the same candidate's score for
                this class (id or name) instead of its reported one: "why a truck and not a
                car?" is the reported map next to this one. ``detections.reported_labels``
                and ``.reported_scores`` keep what was reported.
            contrast: with ``explain_class``, explain the reported class's score *minus*
                ``explain_class``'s score of the same candidate instead: where the evidence
                for the reported class outweighs that for the other (``detections.versus_labels``
                and ``.versus_scores`` give the other class and its score).
            candidates: explain these raw candidates instead (see
                ``mmdet_cam.engine.explain.explain``).
        """
        image = read_image(img)
        if explain_class is not None:
            return self._other_class(image, self._class_ids([explain_class])[0], contrast)
        if contrast:
            raise BadInputError('contrast needs explain_class: the class to contrast with')
        if boxes is not None:
            candidates = NamedBoxes(self._checked_boxes(boxes, image.shape[:2]),
                                    self._named_labels(labels, len(boxes)))
            return self._explain(image, candidates, every=True, as_proposals=True)
        return self._explain(image, candidates)

    def _explain(self, image: np.ndarray, candidates=None, every: bool = False,
                 as_proposals: bool = False) -> DetCAMResult:
        """Maps for the kept detections, or for ``candidates`` (of every candidate of the
        model when ``every``: no score threshold, no NMS; ``as_proposals``: the named boxes of
        ``candidates`` are RoIs of a two-stage detector too)."""
        if getattr(self.method, 'perturbs_inputs', False):
            if candidates is not None:
                raise BadInputError('drise explains the reported detections only')
            return self._black_box(image)
        with mmdet_failure(self.config, 'prepare an image for'):
            inputs, data_samples = preprocess(self.model, self.pipeline, image)
        with contextlib.ExitStack() as stack:
            if every:
                stack.enter_context(every_candidate(self.model))
            if as_proposals:
                scale = np.tile(data_samples[0].metainfo.get('scale_factor', (1, 1))[:2], 2)
                stack.enter_context(added_proposals(
                    self.model, candidates.bboxes * torch.as_tensor(scale).float()))
            out = explain(self.model, inputs, data_samples, self.layers, self.layer_names,
                          self.method, self.target, self.select, self.reshape, self.fuse,
                          self.eigen_smooth, self.batch_size, candidates,
                          self.local_replay)
        cams = to_original_image(out.maps, out.data_sample.metainfo)
        return DetCAMResult(out.detections, cams, image, out.zero_gradient_layers)

    def _other_class(self, image: np.ndarray, label: int, contrast: bool) -> DetCAMResult:
        reported = self.detect(image)
        if not len(reported):
            return DetCAMResult(reported, np.zeros((0,) + image.shape[:2], np.float32), image,
                                [])
        others = [label] * len(reported)
        same = (NamedBoxes(reported.bboxes, reported.labels.tolist(), True, versus=others)
                if contrast else NamedBoxes(reported.bboxes, others, by_iou=True))
        with warnings.catch_warnings():
            if contrast:  # a detection of that class against itself: zero value, zero map
                warnings.filterwarnings('ignore', f'detection \\d+ \\(label {label},',
                                        ZeroGradientWarning)
            result = self._explain(image, same, every=True)
        result.detections.reported_labels = reported.labels
        result.detections.reported_scores = reported.scores
        return result

    def detect(self, image: np.ndarray) -> InstanceData:
        """The detections this explainer keeps (``score_thr``, ``topk``, ``classes``) from a
        plain, no-gradient run of the model on a BGR image; original-image pixels, on CPU."""
        with mmdet_failure(self.config, 'prepare an image for'):
            inputs, data_samples = preprocess(self.model, self.pipeline, image)
        with torch.no_grad(), mmdet_failure(self.config, 'run the detector of'):
            pred = self.model.predict(inputs, data_samples)[0].pred_instances
        return pred[self.select(pred)].cpu()

    def _black_box(self, image: np.ndarray) -> DetCAMResult:
        """Maps of a method that perturbs the image (D-RISE) for the kept detections."""
        detections = self.detect(image)
        scorer = CandidateScorer(self.model, self.pipeline, getattr(self.method, 'batch_size', 8))
        masked = MaskedCandidates(scorer, image)
        maps = self.method(masked.size, detections.bboxes.numpy(), detections.scores.numpy(),
                           detections.labels.numpy(), masked, num_classes_of(self.model))
        cams = to_original_image(maps, masked.sample.metainfo)
        return DetCAMResult(detections, cams, image, [[] for _ in range(len(detections))])

    @staticmethod
    def _checked_boxes(boxes, size) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes):
            raise BadInputError(f'boxes must be N x 4 (x1, y1, x2, y2), got shape {boxes.shape}')
        height, width = size
        for box in boxes:
            x1, y1, x2, y2 = box
            if not (x2 > x1 and y2 > y1):
                raise BadInputError(f'box {box.tolist()} is empty or reversed (need x2 > x1, '
                                    'y2 > y1)')
            if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                raise BadInputError(f'box {box.tolist()} is outside the {width}x{height} image')
        return boxes

    def _named_labels(self, labels, count: int) -> List[Optional[int]]:
        if labels is None:
            return [None] * count
        if isinstance(labels, (str, int)) or len(labels) != count:
            raise BadInputError(f'give one label per box ({count}), got {labels!r}')
        return [None if label is None else self._class_ids([label])[0] for label in labels]

    def with_model(self, model: nn.Module) -> 'DetCAM':
        """The same settings for another model of the same architecture (e.g. a copy with
        changed weights); its target layers are found by name."""
        other = copy.copy(self)
        other.model = model
        other.layers = resolve_layers(model, self.layer_names)
        return other

    def select(self, pred: InstanceData) -> torch.Tensor:
        """Indices of the detections to explain, highest score first."""
        scores = pred.scores.detach()
        keep = scores >= self.score_thr
        if self.class_ids is not None:
            keep &= torch.isin(pred.labels, torch.as_tensor(self.class_ids, device=scores.device))
        index = keep.nonzero().flatten()
        index = index[scores[index].argsort(descending=True, stable=True)]
        return index if self.topk is None else index[:self.topk]

    def _class_ids(self, classes) -> List[int]:
        ids = []
        for c in classes:
            if isinstance(c, str) and not c.isdigit():
                if c not in self.class_names:
                    close = difflib.get_close_matches(c, self.class_names, n=3, cutoff=0.5)
                    hint = f' Did you mean {", ".join(close)}?' if close else ''
                    raise UnknownNameError(f'unknown class {c!r}.{hint} The model knows '
                                           f'{", ".join(self.class_names)}')
                ids.append(self.class_names.index(c))
            else:
                ids.append(int(c))
        return ids


def _build_target(target):
    if callable(target):
        return target
    cfg = dict(type=target) if isinstance(target, str) else dict(target)
    return lookup(CAM_TARGETS, cfg.pop('type'))(**cfg)
