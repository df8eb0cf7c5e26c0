"""One image being explained: the :class:`Session` a method's pipeline works with.

A session holds the model, its test pipeline, the image and the explainer's spec (target
layers, reshape transform, settings). For a :class:`~mmdet_cam.engine.request.Request` it
opens a :class:`CapturedForward`: one forward pass with the target layers captured as
gradient leaves, the box heads' raw outputs, RoIs, token embeddings (and, on demand,
attention) recorded, and the request's values read from the differentiable detections. From
there a pipeline (``mmdet_cam.methods.pipelines``) gets per-box gradients and maps through
:meth:`CapturedForward.layer_maps`, and hands back :class:`BoxCAMs` via
:meth:`CapturedForward.result`. The maps live on the padded network input;
``geometry.to_original_image`` maps them onto the original image.

Each detection also gets its *own level*: per target layer, the output (pyramid level) whose
activations contribute most to its value, ``sum |dS/dA * A|``. For dense and RoI heads that is
the only level its gradient reaches; ``fuse='own'`` builds every box's map from its own levels.
"""
import contextlib
import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from mmengine.structures import InstanceData
from torch import Tensor, nn

from ..errors import (
    NonFiniteGradientWarning,
    SaturatedScoreWarning,
    UnsupportedModelError,
    ZeroGradientWarning,
)
from ..model.detector import mmdet_failure, preprocess
from ..model.layers import predicting_detector
from ..settings import CAMSettings
from .attention import AttentionCapture
from .capture import (
    DenseHeadOutputs,
    FeatureShapes,
    FinalHeadOutputs,
    LayerCapture,
    TokenEmbeddings,
    differentiable_inference,
    frozen_parameters,
)
from .deformable import DecoderSamples, DeformableReads
from .every_candidate import every_candidate, scores_of_class
from .gradients import Backward, local_replay
from .layer_maps import BoxTarget, LayerMaps
from .mask_logits import MASK_FIELDS, instance_mask_logits
from .prompt_chunks import chunk_count, graph_only_for
from .proposals import added_proposals
from .replay import recording_rois
from .request import Request
from .reshape import AutoReshape
from .saturation import saturated, saturation_proof_scores
from .targets import ScoreTarget


@dataclass(frozen=True)
class ExplainSpec:
    """How an explainer explains, resolved once (``DetCAM`` builds it); *what* it explains
    comes with each call as a :class:`~mmdet_cam.engine.request.Request`, and the formula with
    the method's pipeline.

    Attributes:
        layers, layer_names: target layers and their names (for messages).
        reshape: raw layer output -> list of ``[B, C, H, W]`` maps (see ``reshape.py``).
        settings: ``fuse`` (resolved: not None), ``eigen_smooth``, ``batch_size``,
            ``local_replay`` and ``batched_backward`` are read.
    """
    layers: Sequence[nn.Module]
    layer_names: Sequence[str]
    reshape: Callable
    settings: CAMSettings = CAMSettings(fuse='mean')


@dataclass
class BoxCAMs:
    """What a pipeline returns: the explained detections (detached) and their maps on the
    padded network input (``data_sample.metainfo`` says how it maps onto the image),
    ``maps[i]`` belonging to ``detections[i]``. ``detections.levels`` is each detection's own
    level (index among the outputs of the target layer with the most outputs), where
    gradients were computed."""
    detections: InstanceData
    maps: Sequence[np.ndarray]  # N float32 (H_in, W_in) maps: an array or a list
    data_sample: object = None
    zero_gradient_layers: List[List[str]] = field(default_factory=list)
    # text-prompted detectors with a gradient method: the prompt's tokens and, per detection,
    # one attribution per token (gradient x embedding at the language model's input)
    tokens: Optional[List[str]] = None
    token_attributions: Optional[np.ndarray] = None  # float32 (N, T)


class Session:
    """One image (BGR array) to explain with ``model`` (``pipeline``: its test pipeline;
    ``config``: for messages naming the detector) as ``spec`` says."""

    def __init__(self, model: nn.Module, pipeline, config, spec: ExplainSpec,
                 image: np.ndarray):
        self.model, self.pipeline, self.config, self.spec = model, pipeline, config, spec
        self.image = image
        self.detector = predicting_detector(model)
        self._inputs = None

    @property
    def settings(self) -> CAMSettings:
        return self.spec.settings

    def inputs(self):
        """``(inputs, data_samples)``: the image through the test pipeline and the model's
        data preprocessor (a fresh copy of the data samples each time: ``predict`` adds its
        results to them)."""
        if self._inputs is None:
            with mmdet_failure(self.config, 'prepare an image for'):
                self._inputs = preprocess(self.model, self.pipeline, self.image)
        inputs, samples = self._inputs
        return inputs, copy.deepcopy(samples)

    def detect(self, select: Callable[[InstanceData], Tensor]) -> InstanceData:
        """The detections ``select`` keeps from a plain, no-gradient run of the model;
        original-image pixels, on CPU."""
        inputs, samples = self.inputs()
        with torch.no_grad(), mmdet_failure(self.config, 'run the detector of'):
            pred = self.model.predict(inputs, samples)[0].pred_instances
        return pred[select(pred)].cpu()

    def forward(self, request: Request, attention: bool = False) -> 'CapturedForward':
        """The captured forward for ``request`` (a context manager); with ``attention``, the
        attention probabilities of a transformer instead of target layers."""
        return CapturedForward(self, request, attention)

    def check_detector(self) -> None:
        """Raise ``DetectorFailedError`` if mmdet's own ``predict``, without anything of
        mmdet-cam, fails on this input too: then the detector, not the explainer, is at fault.
        (``predict`` is called as mmdet's ``test_step`` calls it, with its default
        ``rescale=True``; semi-supervised wrappers take no ``rescale``.)"""
        inputs, samples = self.inputs()
        with torch.no_grad(), mmdet_failure(self.config, 'run the detector of'):
            self.model.predict(inputs, samples)


class CapturedForward:
    """One forward pass with gradients for a request, as a context manager: on entry the
    detector has run, ``values`` holds one differentiable value per explained box and
    ``detections`` the boxes (detached); the recorders stay active until exit.

    Attributes:
        data_sample: the forward's data sample (its ``pred_instances`` and ``metainfo``).
        pristine_sample: the data sample before the forward (for re-runs of the detector).
        inputs: the network input.
        values, detections: as above.
        capture, shapes, head, final, rois, tokens, deformable, attention: the recorders
            (``capture.py``, ``replay.py``, ``deformable.py``, ``attention.py``);
            ``attention`` is None unless asked for.
    """

    def __init__(self, session: Session, request: Request, attention: bool = False):
        self.session, self.request, self.reads_attention = session, request, attention
        self._stack = contextlib.ExitStack()
        self.backward: Optional[Backward] = None  # made by layer_maps()
        self.maps_of: Optional[LayerMaps] = None

    def __enter__(self) -> 'CapturedForward':
        session, request, stack = self.session, self.request, self._stack
        model, detector, spec = session.model, session.detector, session.spec
        self.inputs, data_samples = session.inputs()
        self.pristine_sample = copy.deepcopy(data_samples[0])
        chunks = _prompt_chunk_graphs(model, self.inputs, request, self.pristine_sample)
        neck_or_backbone = getattr(detector, 'neck', None)
        if neck_or_backbone is None:
            neck_or_backbone = getattr(detector, 'backbone', None)
        # attention needs the graph from the features on (it is after them), no layers
        layers, self.layer_names = (([neck_or_backbone], ['neck']) if self.reads_attention
                                    else (spec.layers, spec.layer_names))
        reads_masks = request.reads_masks
        try:
            stack.enter_context(_candidates_of(model, request, self.pristine_sample))
            stack.enter_context(frozen_parameters(model))
            stack.enter_context(differentiable_inference(model, masks=reads_masks))
            stack.enter_context(saturation_proof_scores(detector))
            stack.enter_context(torch.enable_grad())
            self.capture = stack.enter_context(LayerCapture(layers, self.layer_names))
            self.shapes = stack.enter_context(FeatureShapes(neck_or_backbone))
            self.head = stack.enter_context(DenseHeadOutputs(detector))
            self.final = stack.enter_context(FinalHeadOutputs(detector))
            self.rois = stack.enter_context(recording_rois(detector))
            self.tokens = stack.enter_context(TokenEmbeddings(detector))
            self.deformable = stack.enter_context(DeformableReads(detector))
            stack.enter_context(chunks)
            self.attention = (stack.enter_context(AttentionCapture(detector))
                              if self.reads_attention else None)
            if reads_masks:
                stack.enter_context(instance_mask_logits(detector))
            self.data_sample = model.predict(self.inputs, data_samples)[0]
            values, detections = request.values(self.data_sample.pred_instances,
                                                self.final.tensors)
        except BaseException:
            stack.close()
            raise
        self.values, self.detections = values, _detached(detections, drop=MASK_FIELDS)
        if isinstance(request.target, ScoreTarget):
            _warn_saturated(self.detections)
        return self

    def __exit__(self, *exc_info):
        return self._stack.__exit__(*exc_info)

    def nothing(self) -> BoxCAMs:
        """The result for a forward with no box to explain."""
        height, width = self.inputs.shape[-2:]
        return BoxCAMs(self.detections, np.zeros((0, height, width), np.float32),
                       self.data_sample, tokens=self.tokens.tokens or None)

    def layer_maps(self, method, gradients: bool = True) -> LayerMaps:
        """The :class:`LayerMaps` of ``method`` on this forward's target layers; with
        ``gradients``, per-box gradients through the cheapest exact backward there is."""
        settings = self.session.settings
        if not self.capture.activations:
            raise UnsupportedModelError(f'the target layers {list(self.layer_names)} were not '
                                        'called in the forward pass')
        if gradients and not self.values.requires_grad:
            raise UnsupportedModelError(
                f'the detections of {type(self.session.model).__name__} carry no gradient to '
                f'{list(self.layer_names)}: its head detaches its predictions in a way '
                'mmdet-cam cannot undo, so exact per-detection maps are not possible for it; '
                '--method drise needs no gradients')
        scale = np.tile(np.asarray(self.data_sample.metainfo.get('scale_factor',
                                                                 (1, 1))[:2]), 2)
        boxes = [BoxTarget(tuple(box * scale), int(label)) for box, label in
                 zip(self.detections.bboxes.cpu().numpy(), self.detections.labels.tolist())]
        reads_masks = self.request.reads_masks
        # a mask's value also depends on what the box head's outputs and RoIs do not carry
        # (the mask branch): its gradients come from the plain backward
        replay = None
        if settings.local_replay and gradients and not self.tokens.embeddings and not reads_masks:
            replay = local_replay(self.session.detector, self.head, self.rois, self.capture)
            if replay is None and isinstance(self.session.spec.reshape, AutoReshape):
                replay = DecoderSamples.of(self.session.detector, self.deformable,
                                           self.capture, method)
        self.backward = Backward(self.capture.activations,
                                 () if reads_masks else self.head.tensors, replay,
                                 self.tokens.embeddings, settings.batched_backward)
        self.maps_of = LayerMaps(method, self.capture, self.session.spec.reshape,
                                 self.shapes.shapes, self.inputs, boxes, self.backward,
                                 settings.eigen_smooth)
        return self.maps_of

    def box_gradients(self, maps_of: Optional[Callable] = None):
        """Every explained box's gradients (:meth:`LayerMaps.gradients`), in runs of
        ``settings.batch_size`` boxes (gradients held at once), and with ``maps_of`` (a run's
        ``BoxGradients`` -> one item per box, e.g. its map) their maps: ``(maps or None,
        zero_layers, own)`` for all boxes, in order (call :meth:`layer_maps` first)."""
        count, step = len(self.detections), self.session.settings.batch_size
        maps, zero, own = [], [], []
        for start in range(0, count, step):
            grads = self.maps_of.gradients(self.values, range(start, min(start + step, count)))
            if maps_of is not None:
                maps.extend(maps_of(grads))
            zero += grads.zero_layers
            own.append(grads.own)
        return (maps if maps_of is not None else None), zero, np.concatenate(own)

    def result(self, maps: np.ndarray, zero_layers: List[List[str]],
               own: Optional[np.ndarray] = None) -> BoxCAMs:
        """:class:`BoxCAMs` of ``maps`` (``(N, H_in, W_in)``); ``zero_layers``: per box, the
        target layers it gave no gradient; ``own``: ``[N, layers]`` each box's own outputs
        (None without gradients). Warns about boxes without gradient or with NaN/inf ones."""
        detections = self.detections
        if own is not None:
            detections.levels = torch.as_tensor(self.maps_of.level_index(own))
        _warn_zero_gradients(zero_layers, detections, self.layer_names)
        if self.maps_of is not None:
            _warn_non_finite(self.maps_of.non_finite, detections)
        attributions = self.backward.token_attributions if own is not None else None
        return BoxCAMs(detections, maps, self.data_sample, zero_layers,
                       self.tokens.tokens or None,
                       np.stack([attributions[i] for i in range(len(detections))])
                       if attributions else None)


def _candidates_of(model, request: Request, data_sample):
    """What the forward reports for ``request``: every raw candidate (no score threshold, no
    NMS) where it explains boxes that need not be among the reported detections, each
    candidate's score for the one class asked (not only its top class's), and named boxes as
    RoIs of a two-stage detector."""
    stack = contextlib.ExitStack()
    if request.every_candidate:
        stack.enter_context(every_candidate(model))
    if request.one_label is not None:
        stack.enter_context(scores_of_class(model, request.one_label))
    if request.proposals is not None:
        scale = np.tile(data_sample.metainfo.get('scale_factor', (1, 1))[:2], 2)
        stack.enter_context(added_proposals(
            model, request.proposals * torch.as_tensor(scale).float()))
    return stack


def _prompt_chunk_graphs(model, inputs, request: Request, pristine_sample):
    """For a prompt cut into chunks, a context that keeps the graph of only the chunks whose
    labels are explained (``request.explained_labels``, from a first forward without
    gradients where the explained boxes are among the reported detections; see
    ``prompt_chunks.py``)."""
    detector = predicting_detector(model)
    if chunk_count(detector, pristine_sample) <= 1:
        return contextlib.nullcontext()

    def predict():
        with torch.no_grad(), differentiable_inference(model):
            return model.predict(inputs, copy.deepcopy([pristine_sample]))[0].pred_instances
    labels = request.explained_labels(predict)
    return contextlib.nullcontext() if labels is None else graph_only_for(detector, labels)


def _detached(pred: InstanceData, drop=()) -> InstanceData:
    out = InstanceData(metainfo=pred.metainfo)
    for key, value in pred.items():
        if key not in drop:
            out[key] = value.detach() if isinstance(value, Tensor) else value
    return out


def _warn_non_finite(boxes: List[int], detections) -> None:
    if boxes:
        labels = [int(detections.labels[i]) for i in boxes]
        warnings.warn(NonFiniteGradientWarning(
            f'{len(boxes)} detection(s) ({", ".join(map(str, boxes))}; labels '
            f'{", ".join(map(str, labels))}) got NaN/inf gradients from the detector\'s '
            'post-processing; those values were set to 0, so their maps may be incomplete',
            boxes), stacklevel=3)


def _warn_saturated(detections) -> None:
    boxes = torch.nonzero(saturated(detections.scores))[:, 0].tolist()
    if boxes:
        warnings.warn(SaturatedScoreWarning(
            f'{len(boxes)} detection(s) ({", ".join(map(str, boxes))}) have a saturated score '
            "(1.0 to 4 decimals, so it has almost no gradient): their maps explain the score's "
            "log-odds (target='logit'), which has the class logit's gradient", boxes),
            stacklevel=3)


def _warn_zero_gradients(zero_layers, detections, layer_names):
    for i, layers in enumerate(zero_layers):
        if not layers:
            continue
        box = ', '.join(f'{v:.0f}' for v in detections.bboxes[i].tolist())
        what = ('so its map is all zero' if len(layers) == len(set(layer_names))
                else 'so those layers add nothing to its map')
        label = int(detections.labels[i])
        warnings.warn(ZeroGradientWarning(
            f'detection {i} (label {label}, box [{box}]) has no gradient '
            f'at {", ".join(layers)} (it comes from another pyramid level or branch), {what}. '
            'Target all levels (e.g. the whole neck) to cover every detection.',
            detection=i, label=label, layers=layers), stacklevel=3)
