"""Python API: ``DetCAM`` explains every detection of an image with its own heatmap."""
import copy
import dataclasses
import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData
from torch import nn

from .engine.geometry import to_original_image
from .engine.memory import memory_budget
from .engine.request import Detections, NamedBoxes, Request, default_fuse
from .engine.reshape import build_reshape_transform
from .engine.session import ExplainSpec, Session
from .errors import BadInputError, UnknownNameError, ZeroGradientWarning
from .methods import MethodKind, build_pipeline
from .model.detector import (
    ConfigLike,
    build_detector,
    build_test_pipeline,
    read_image,
)
from .model.layers import layer_name, predicting_detector, resolve_layers
from .model.prompts import PromptedPipeline, build_prompt, entities
from .patching import PATCH_LOCK
from .registry import CAM_TARGETS, lookup
from .settings import CAMSettings


@dataclass
class DetCAMResult:
    """Detections of one image and one map per detection.

    Attributes:
        detections: ``bboxes`` (x1, y1, x2, y2 in original-image pixels), ``scores`` and
            ``labels`` as the detector reports them, highest score first; ``levels``: the
            pyramid level each came from (where gradients were computed). CPU tensors,
            whatever the model's device.
        cams: float32 ``(N, H, W)`` maps in [0, 1] for the ``H x W`` original image,
            ``cams[i]`` explaining ``detections[i]``.
        image: the BGR image the maps belong to.
        zero_gradient_layers: per detection, target layers that got no gradient from it.
        tokens: for a text-prompted detector, the prompt's tokens as its tokenizer spells
            them (``[CLS]``, separators and padding included); else None.
        token_attributions: float32 ``(N, T)``: per detection, each token's signed share in
            its value (gradient x token embedding at the language model's input, summed over
            the embedding; from the same backward as its map). None for detectors without
            text and for methods that use no gradients.
        dataset_meta: the model's ``classes`` and ``palette``, for drawing.

    In a Jupyter notebook a result shows itself: the overlay of every map with the boxes,
    then one thumbnail per detection with its class and score (``_repr_html_``; plain
    ``_repr_png_``: the overlay alone).
    """
    detections: InstanceData
    cams: np.ndarray
    image: np.ndarray
    zero_gradient_layers: List[List[str]]
    tokens: Optional[List[str]] = None
    token_attributions: Optional[np.ndarray] = None
    dataset_meta: Optional[dict] = None

    def __len__(self) -> int:
        return len(self.detections)

    def _repr_png_(self) -> bytes:
        from .visualization.notebook import result_png
        return result_png(self)

    def _repr_html_(self) -> str:
        from .visualization.notebook import result_html
        return result_html(self)


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
        settings: a :class:`~mmdet_cam.settings.CAMSettings`; ``**options`` change single
            fields of it (or of the defaults): ``method``, ``target_layers``, ``target``,
            ``score_thr``, ``topk``, ``classes``, ``fuse``, ``eigen_smooth``,
            ``reshape_transform``, ``batch_size``, ``local_replay``, ``batched_backward`` (see
            ``CAMSettings``).
            Methods by kind: gradcam, gradcam++, xgradcam, eigengradcam are channel-pooled (a
            box's map also marks other objects of the same channels); hirescam, layercam,
            gradcamelementwise, odam, ssgradcam, ssgradcam++, gcame are box-specific;
            eigencam, kpca_cam, fem are gradient-free (the same map for every detection);
            randomcam is a baseline; scorecam and ablationcam re-run the detector per
            channel; drise is black-box (``dict(type='drise', num_masks=..., seed=...)``).
        device: where to build the model (an already built model stays where it is).
        cfg_options: config overrides when building from a config.
        trust_checkpoint: allow a full (unsafe) unpickle of a checkpoint a weights-only load
            refuses.
        config: the config whose test pipeline prepares images, for a built model without
            ``model.cfg``.

    Threads: a call may come from any thread, and calls from several threads (on one
    ``DetCAM`` or several) give the same maps as one after the other, because they *are* run
    one after the other: during a call mmdet-cam swaps functions of mmdet's and mmcv's modules
    and methods of the model's heads (``mmdet_cam.patching``), which every thread shares, so
    each call holds one process-wide lock. Torch itself is never patched (its interceptions
    are per thread). Not safe: running mmdet's own inference in another thread while a call
    is in progress, since that thread sees the swapped mmdet functions.

    Example:
        >>> cam = DetCAM('demo/rtmdet_shapes.py', 'demo/rtmdet_shapes.pth',
        ...              method='hirescam', score_thr=0.5)  # doctest: +SKIP
        >>> result = cam('demo/images/shapes_1.jpg')  # doctest: +SKIP
        >>> result.cams.shape  # one map per detection  # doctest: +SKIP
    """

    def __init__(self,
                 model_or_config: Union[nn.Module, ConfigLike],
                 checkpoint: Optional[str] = None,
                 settings: Optional[CAMSettings] = None,
                 *,
                 device: str = 'cpu',
                 cfg_options: Optional[dict] = None,
                 trust_checkpoint: bool = False,
                 config: Optional[Config] = None,
                 **options):
        settings = CAMSettings.of(settings, **options)
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
        layers = resolve_layers(self.model, settings.target_layers)
        self.method_pipeline = build_pipeline(settings.method, self.model)
        self.target = _build_target(settings.target)
        if settings.fuse is None:  # its default depends on the target (CAMSettings.fuse)
            settings = dataclasses.replace(settings, fuse=default_fuse(self.target))
        self.spec = ExplainSpec(layers, [layer_name(self.model, layer) for layer in layers],
                                build_reshape_transform(settings.reshape_transform), settings)
        self.settings = settings
        # a target the method cannot explain for this model is refused before any image
        self.method_pipeline.check(self.request(), predicting_detector(self.model))
        self.config = config
        self.base_pipeline = build_test_pipeline(config)
        self._prompted(settings.texts)

    def _prompted(self, texts) -> None:
        """Set the prompt (a text-prompted detector's; None otherwise), the pipeline that
        carries it, the class names (the prompt's entities, or the dataset's) and the ids of
        the classes to explain."""
        dataset_meta = getattr(self.model, 'dataset_meta', None) or {}
        self.prompt = build_prompt(self.model, texts, dataset_meta.get('classes', ()))
        if self.prompt is None:
            self.pipeline = self.base_pipeline
            self.class_names = list(dataset_meta.get('classes', []))
        else:
            self.pipeline = PromptedPipeline(self.base_pipeline, self.prompt)
            self.class_names = entities(self.model, self.prompt)
        classes = self.settings.classes
        self.class_ids = None if classes is None else self._class_ids(classes)

    def with_texts(self, texts) -> 'DetCAM':
        """The same explainer with another prompt (a text-prompted detector's)."""
        other = copy.copy(self)
        other._prompted(texts)
        return other

    @property
    def layers(self) -> List[nn.Module]:
        return list(self.spec.layers)

    @property
    def layer_names(self) -> List[str]:
        return list(self.spec.layer_names)

    @property
    def layers_read(self) -> List[str]:
        """The target layers the method reads (none for attention and black-box methods)."""
        return self.layer_names if self.method_pipeline.uses_layers else []

    @property
    def method(self):
        return self.method_pipeline.method

    @property
    def kind(self) -> MethodKind:
        return self.method_pipeline.kind

    def __call__(self, img: Union[str, Path, np.ndarray],
                 candidates=None,
                 boxes=None, labels=None, explain_class=None,
                 contrast: bool = False, texts=None) -> DetCAMResult:
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
            candidates: explain the raw candidates this box choice picks instead (see
                ``mmdet_cam.engine.request``, e.g. ``FixedCandidates``).
            texts: for a text-prompted detector, this call's prompt instead of the
                explainer's (``'cat . dog'`` or a list of entity names); class names in
                ``labels`` and ``explain_class`` are its entities.
        """
        image = read_image(img)
        cam = self if texts is None else self.with_texts(texts)
        with PATCH_LOCK, memory_budget(cam.settings.memory_budget):
            result = cam._call(image, candidates, boxes, labels, explain_class, contrast)
        result.dataset_meta = dict(getattr(cam.model, 'dataset_meta', None) or {},
                                   classes=cam.class_names)
        return result

    def _call(self, image, candidates, boxes, labels, explain_class, contrast) -> DetCAMResult:
        session, reported = self._session(image), None  # one preprocessing for both runs
        if explain_class is not None:
            reported = session.detect(self.select)
            if not len(reported):
                return DetCAMResult(reported, np.zeros((0,) + image.shape[:2], np.float32),
                                    image, [])
        request = self.request(candidates, boxes, labels, explain_class, contrast, image,
                               reported)
        if reported is None:
            return self._explain(session, request)
        label = request.boxes.versus[0] if contrast else request.boxes.labels[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            result = self._explain(session, request)
        for warning in caught:
            # with contrast, a detection of that class against itself: zero value, zero map
            expected = (contrast and isinstance(warning.message, ZeroGradientWarning)
                        and warning.message.label == label)
            if not expected:
                warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                       warning.lineno)
        result.detections.reported_labels = reported.labels
        result.detections.reported_scores = reported.scores
        return result

    def request(self, candidates=None, boxes=None, labels=None, explain_class=None,
                contrast: bool = False, image: Optional[np.ndarray] = None,
                reported: Optional[InstanceData] = None) -> Request:
        """The :class:`~mmdet_cam.engine.request.Request` of a call (arguments as for
        ``__call__``; ``reported``: the image's detections, for ``explain_class``): which
        boxes, and this explainer's target as the value of each. A combination that cannot
        be honoured is refused here, with one line."""
        if contrast and explain_class is None:
            raise BadInputError('contrast needs explain_class: the class to contrast with')
        if explain_class is not None:
            label = self._class_ids([explain_class])[0]
            others = [label] * len(reported)
            choice = (NamedBoxes(reported.bboxes, reported.labels.tolist(), True, versus=others)
                      if contrast else NamedBoxes(reported.bboxes, others, by_iou=True))
        elif boxes is not None:
            choice = NamedBoxes(self._checked_boxes(boxes, image.shape[:2]),
                                self._named_labels(labels, len(boxes)), as_proposals=True)
        else:
            choice = candidates or Detections(self.select)
        request = Request(choice, self.target)
        self.method_pipeline.refuse(request)
        return request

    def _explain(self, session: Session, request: Request) -> DetCAMResult:
        """Maps for the boxes ``request`` asks for in the session's image, by the method's
        pipeline."""
        out = self.method_pipeline(session, request)
        cams = to_original_image(out.maps, out.data_sample.metainfo)
        return DetCAMResult(out.detections.cpu(), cams, session.image, out.zero_gradient_layers,
                            out.tokens, out.token_attributions)

    def detect(self, image: np.ndarray) -> InstanceData:
        """The detections this explainer keeps (``score_thr``, ``topk``, ``classes``) from a
        plain, no-gradient run of the model on a BGR image; original-image pixels, on CPU."""
        with PATCH_LOCK:
            return self._session(image).detect(self.select)

    def _session(self, image: np.ndarray) -> Session:
        return Session(self.model, self.pipeline, self.config, self.spec, image)

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
        other.spec = dataclasses.replace(self.spec, layers=resolve_layers(model, self.layer_names))
        return other

    def select(self, pred: InstanceData) -> torch.Tensor:
        """Indices of the detections to explain, highest score first."""
        scores = pred.scores.detach()
        keep = scores >= self.settings.score_thr
        if self.class_ids is not None:
            keep &= torch.isin(pred.labels, torch.as_tensor(self.class_ids, device=scores.device))
        index = keep.nonzero().flatten()
        index = index[scores[index].argsort(descending=True, stable=True)]
        topk = self.settings.topk
        return index if topk is None else index[:topk]

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
