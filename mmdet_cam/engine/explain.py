"""Per-detection CAMs from one forward pass.

``explain`` runs the detector once with the target layers captured as gradient leaves, then
back-propagates each selected detection's own target value (its score, by default) to those
layers only, and hands the stacked per-box gradients to the pytorch_grad_cam method's own
``get_cam_image`` in chunks. The maps it returns live on the padded network input;
``geometry.to_original_image`` maps them onto the original image.

Each detection also gets its *own level*: per target layer, the output (pyramid level) whose
activations contribute most to its value, ``sum |dS/dA * A|``. For dense and RoI heads that is
the only level its gradient reaches; ``fuse='own'`` builds every box's map from its own levels.
"""
import contextlib
import copy
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from mmengine.structures import InstanceData
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from torch import Tensor, nn

from ..errors import (
    DetCAMError,
    NonFiniteGradientWarning,
    UnsupportedModelError,
    ZeroGradientWarning,
)
from ..methods.kinds import MethodKind, method_kind
from ..methods.perturbation import Reruns
from ..model.detector import mmdet_failure
from ..model.layers import predicting_detector
from ..settings import CAMSettings
from .attention import AttentionCapture
from .candidates import RawCandidatesModel, TrackedDetection, TrackedMask
from .capture import (
    DenseHeadOutputs,
    FeatureShapes,
    FinalHeadOutputs,
    LayerCapture,
    TokenEmbeddings,
    batched_grads_for,
    differentiable_inference,
    frozen_parameters,
    grads_for,
)
from .mask_logits import MASK_FIELDS, instance_mask_logits
from .prompt_chunks import chunk_count, graph_only_for
from .replay import DenseReplay, RoIReplay, recording_rois


@dataclass(frozen=True)
class ExplainSpec:
    """What :func:`explain` needs besides the image, resolved once (``DetCAM`` builds it).

    Attributes:
        layers, layer_names: target layers and their names (for messages).
        method: a CAM method instance; only its ``get_cam_image`` is used.
        target: detections -> one differentiable value per detection.
        select: detections -> indices of the detections to explain, in output order.
        reshape: raw layer output -> list of ``[B, C, H, W]`` maps (see ``reshape.py``).
        settings: ``fuse`` (resolved here when None), ``eigen_smooth``, ``batch_size``,
            ``local_replay`` and ``batched_backward`` are read.
    """
    layers: Sequence[nn.Module]
    layer_names: Sequence[str]
    method: BaseCAM
    target: Callable[[InstanceData], Tensor]
    select: Callable[[InstanceData], Tensor]
    reshape: Callable
    settings: CAMSettings = CAMSettings()

    def __post_init__(self):
        if self.settings.fuse is None:  # its default depends on the target (CAMSettings.fuse)
            object.__setattr__(self, 'settings', replace(
                self.settings, fuse='own' if self.reads_masks else 'mean'))

    @property
    def kind(self) -> MethodKind:
        return method_kind(self.method)

    @property
    def reads_masks(self) -> bool:
        """Whether the target explains masks (the mask heads' logits are then recorded)."""
        return getattr(self.target, 'reads_masks', False)

    @property
    def own_levels(self) -> bool:
        """Whether each box's gradients are needed (its own levels, or its map)."""
        return self.kind is MethodKind.GRADIENT or self.settings.fuse == 'own'


@dataclass
class BoxTarget:
    """What a CAM method gets as ``targets`` for each map: the detection's box in
    network-input pixels and its label (the library's own methods ignore it)."""
    bbox: tuple
    label: int


@dataclass
class BoxCAMs:
    """Output of :func:`explain`: the selected detections (detached) and their maps on the
    padded network input, ``maps[i]`` belonging to ``detections[i]``. ``detections.levels``
    is each detection's own level (index among the outputs of the target layer with the most
    outputs), where gradients were computed."""
    detections: InstanceData
    maps: np.ndarray  # float32 (N, H_in, W_in)
    data_sample: object = None
    zero_gradient_layers: List[List[str]] = field(default_factory=list)
    # text-prompted detectors with a gradient method: the prompt's tokens and, per detection,
    # one attribution per token (gradient x embedding at the language model's input)
    tokens: Optional[List[str]] = None
    token_attributions: Optional[np.ndarray] = None  # float32 (N, T)


def explain(model: nn.Module,
            inputs: Tensor,
            data_samples: list,
            spec: ExplainSpec,
            candidates: Optional[Callable] = None) -> BoxCAMs:
    """Maps for the detections of one preprocessed image (a batch of size 1).

    Args:
        inputs, data_samples: the output of the model's data preprocessor.
        spec: layers, method, target, selection and settings. ``settings.fuse``: ``'mean'`` or
            ``'max'`` over all layer outputs (pyramid levels count as outputs), or ``'own'``:
            per layer, the detection's own level only (then the mean over layers);
            ``settings.batch_size``: detections whose gradients are held in memory at once;
            ``settings.local_replay``: back-propagate each box through the part of the box
            head it depends on (a window of a dense head's level, or its RoI) instead of the
            whole head (exact, see ``replay.py``).
        candidates: instead of ``spec.target`` and ``spec.select``, ``(pred_instances,
            head_outputs) -> (values, detections)``, where ``head_outputs`` are the raw
            outputs of the box heads (see ``capture.FinalHeadOutputs``): for explaining raw
            candidates that need not be among the reported detections
            (``candidates.FixedCandidates``).
    """
    pristine = copy.deepcopy(data_samples)  # predict() adds its results to data_samples
    try:
        return _explain(model, inputs, data_samples, spec, candidates, pristine[0])
    except DetCAMError:
        raise
    except Exception:
        _check_mmdet_inference(model, inputs, pristine)
        raise


def _check_mmdet_inference(model: nn.Module, inputs: Tensor, data_samples: list) -> None:
    """Raise ``DetectorFailedError`` if mmdet's own ``predict``, without anything of
    mmdet-cam, fails on this input too: then the detector, not the explainer, is at fault.
    (``predict`` is called as mmdet's ``test_step`` calls it, with its default ``rescale=True``;
    semi-supervised wrappers take no ``rescale``.)"""
    with torch.no_grad(), mmdet_failure(getattr(model, 'cfg', None), 'run the detector of'):
        model.predict(inputs, data_samples)


def _explain(model, inputs, data_samples, spec: ExplainSpec, candidates,
             pristine_sample) -> BoxCAMs:
    layer_names, fuse = spec.layer_names, spec.settings.fuse
    detector = predicting_detector(model)
    chunks = _prompt_chunk_graphs(model, inputs, spec, candidates, pristine_sample)
    neck_or_backbone = getattr(detector, 'neck', None)
    if neck_or_backbone is None:
        neck_or_backbone = getattr(detector, 'backbone', None)
    reads_attention = spec.kind is MethodKind.ATTENTION
    # relevancy needs the graph from the features on (the attention is after them), no layers
    layers, names = (([neck_or_backbone], ['neck']) if reads_attention
                     else (spec.layers, layer_names))
    reads_masks = spec.reads_masks
    with frozen_parameters(model), differentiable_inference(model, masks=reads_masks), \
            torch.enable_grad(), LayerCapture(layers, names) as capture, \
            FeatureShapes(neck_or_backbone) as shapes, DenseHeadOutputs(detector) as head, \
            FinalHeadOutputs(detector) as final, recording_rois(detector) as rois, \
            TokenEmbeddings(detector) as tokens, chunks, \
            (AttentionCapture(detector) if reads_attention else contextlib.nullcontext()) \
            as attention, \
            (instance_mask_logits(detector) if reads_masks else contextlib.nullcontext()):
        data_sample = model.predict(inputs, data_samples)[0]
        pred = data_sample.pred_instances
        if candidates is None:
            keep = spec.select(pred)
            values = spec.target(pred)[keep]
            detections = pred[keep]
        else:
            values, detections = candidates(pred, final.tensors)
        detections = _detached(detections, drop=MASK_FIELDS)
        height, width = inputs.shape[-2:]
        if not len(detections):
            return BoxCAMs(detections, np.zeros((0, height, width), np.float32), data_sample,
                           tokens=tokens.tokens or None)
        if attention is not None:
            maps = _relevancy_maps(spec.method, attention.records, values, shapes.shapes, inputs)
            return BoxCAMs(detections, maps, data_sample, [[] for _ in range(len(detections))])
        if not capture.activations:
            raise UnsupportedModelError(
                f'the target layers {list(layer_names)} were not called in the forward pass')
        own_levels = spec.own_levels
        perturbs = spec.kind is MethodKind.PERTURBATION
        if own_levels and not values.requires_grad:
            raise UnsupportedModelError(
                f'the detections of {type(model).__name__} carry no gradient to '
                f'{list(layer_names)}: its head detaches its predictions in a way mmdet-cam '
                'cannot undo, so exact per-detection maps are not possible for it; '
                '--method drise needs no gradients')

        scale = np.tile(np.asarray(data_sample.metainfo.get('scale_factor', (1, 1))[:2]), 2)
        boxes = [BoxTarget(tuple(box * scale), int(label)) for box, label in
                 zip(detections.bboxes.cpu().numpy(), detections.labels.tolist())]
        # a mask's value also depends on what the box head's outputs and RoIs do not carry
        # (the mask branch): its gradients come from the plain backward
        replay = (_replay(detector, head, rois, capture) if spec.settings.local_replay
                  and own_levels and not tokens.embeddings and not reads_masks else None)
        backward = _Backward(capture.activations, () if reads_masks else head.tensors, replay,
                             tokens.embeddings, spec.settings.batched_backward)
        layer_maps = _LayerMaps(spec, capture, shapes.shapes, inputs, boxes, backward)
        maps, zero_layers, own = [], [], []
        step = spec.settings.batch_size
        for start in range(0, len(detections) if own_levels or not perturbs else 0, step):
            chunk = range(start, min(start + step, len(detections)))
            fused, zero, own_outputs = layer_maps.for_boxes(values, chunk, fuse)
            if not perturbs:
                maps.append(fused)
            zero_layers.extend(zero)
            own.append(own_outputs)
    if perturbs:  # re-runs the detector, so after the capture hooks are gone
        zero_layers = zero_layers or [[] for _ in range(len(detections))]
        per_output = layer_maps.perturbed(
            RawCandidatesModel(model, pristine_sample, masks=reads_masks), detections)
        maps = [_fuse(per_output, fuse, np.concatenate(own) if own_levels else None)]
    maps = np.concatenate(maps)
    if own_levels:
        detections.levels = torch.as_tensor(layer_maps.level_index(np.concatenate(own)))
    _warn_zero_gradients(zero_layers, detections, layer_names)
    _warn_non_finite(layer_maps.non_finite, detections)
    attributions = backward.token_attributions
    return BoxCAMs(detections, maps, data_sample, zero_layers, tokens.tokens or None,
                   np.stack([attributions[i] for i in range(len(detections))])
                   if own_levels and attributions else None)


def _relevancy_maps(method, records, values: Tensor, feature_shapes, inputs: Tensor) -> np.ndarray:
    """Per box, ``method``'s relevancy map on the network input from the box's gradients at
    the captured attention probabilities (``attention.AttentionCapture``)."""
    if not records:
        raise UnsupportedModelError('no attention over image tokens was recorded in the forward')
    if not values.requires_grad:
        raise UnsupportedModelError('the detections carry no gradient to the attention')
    shapes = torch.as_tensor(feature_shapes)
    tokens = int((shapes[:, 0] * shapes[:, 1]).sum())
    in_graph = [i for i, record in enumerate(records) if record.probs.requires_grad]
    maps = []
    for value in values:
        found = torch.autograd.grad(value, [records[i].probs for i in in_graph],
                                    retain_graph=True, allow_unused=True)
        grads = [None] * len(records)
        for i, grad in zip(in_graph, found):
            grads[i] = grad
        relevancy = method.token_map(records, grads, tokens)
        maps.append(method.image_map(relevancy, shapes, tuple(inputs.shape[-2:])))
    return np.stack(maps)


def _prompt_chunk_graphs(model, inputs, spec: ExplainSpec, candidates, pristine_sample):
    """For a prompt cut into chunks, a context that keeps the graph of only the chunks whose
    labels are explained (see ``prompt_chunks.py``): those of ``candidates.explained_labels``,
    or of the detections ``spec.select`` picks in a first forward without gradients."""
    detector = predicting_detector(model)
    if chunk_count(detector, pristine_sample) <= 1:
        return contextlib.nullcontext()
    if candidates is not None:
        labels = getattr(candidates, 'explained_labels', None)
    else:
        with torch.no_grad(), differentiable_inference(model):
            pred = model.predict(inputs, copy.deepcopy([pristine_sample]))[0].pred_instances
        labels = pred.labels[spec.select(pred)].tolist()
    return contextlib.nullcontext() if labels is None else graph_only_for(detector, labels)


class _Backward:
    """Each box's gradients at the target layers' outputs, from the forward's graph: through
    a replay of the part of the box head it depends on (``replay``), or a backward that stops
    at the head's outputs first (``head_outputs``, see :func:`grads_for`). With ``tokens``
    (a text-prompted detector's token embeddings, a gradient leaf) the same backward also
    gives each box's token attributions: gradient x embedding, summed over the embedding
    (``tokens``: one leaf per pass of the prompt through the language model)."""

    # boxes per batched backward: the batch's gradients of the target layers' outputs take at
    # most this many bytes (the backward's intermediate gradients are batched alike)
    BATCHED_BYTES = 256 * 2 ** 20

    def __init__(self, activations: List[Tensor], head_outputs=(), replay=None,
                 tokens: Sequence[Tensor] = (), batched: bool = False):
        self.activations, self.head_outputs, self.replay = activations, head_outputs, replay
        self.tokens = list(tokens)
        self.token_attributions: dict = {}  # box index -> float32 [T]
        # with ``batched``, one backward pass for many boxes until the graph turns out to have
        # an op without a batched backward; each box's gradient is its own either way
        self.batched = batched

    def __call__(self, values: Tensor, boxes: range) -> List[List[Tensor]]:
        """Per box of ``boxes``, one gradient per activation (zeros where it has none)."""
        if self.replay is not None:
            return self.replay.activation_grads(values, boxes, self.activations)
        if self.batched and not self.tokens and len(boxes) > 1:
            grads = self._batched(values, boxes)
            if grads is not None:
                return grads
        count = len(self.activations)
        grads = []
        for i in boxes:
            box_grads = grads_for(values[i], self.activations + self.tokens, self.head_outputs)
            if self.tokens:
                self.token_attributions[i] = np.concatenate([
                    (torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0) * leaf)[0]
                    .sum(-1).detach().cpu().numpy().astype(np.float32)
                    for grad, leaf in zip(box_grads[count:], self.tokens)])
            grads.append(box_grads[:count])
        return grads

    def _batched(self, values: Tensor, boxes: range) -> Optional[List[List[Tensor]]]:
        per_box = sum(a.numel() * a.element_size() for a in self.activations)
        step = max(1, self.BATCHED_BYTES // max(per_box, 1))
        grads = []
        try:
            with warnings.catch_warnings():  # vmap's notes on ops it batches by a loop
                warnings.simplefilter('ignore', UserWarning)
                for first in range(boxes.start, boxes.stop, step):
                    chunk = list(range(first, min(first + step, boxes.stop)))
                    grads += batched_grads_for(values[chunk], self.activations,
                                               self.head_outputs)
        except (RuntimeError, NotImplementedError):
            self.batched = False
            return None
        return grads


class _LayerMaps:
    """Turns captured activations plus per-box gradients into per-output, input-sized maps."""

    def __init__(self, spec: ExplainSpec, capture: LayerCapture, feature_shapes, inputs: Tensor,
                 boxes: Sequence[BoxTarget], backward: '_Backward'):
        self.capture, self.reshape, self.shapes = capture, spec.reshape, feature_shapes
        self.backward, self.boxes = backward, list(boxes)
        self.method, self.inputs = spec.method, inputs
        self.eigen_smooth = spec.settings.eigen_smooth
        self.size = (inputs.shape[-1], inputs.shape[-2])  # (width, height)
        # [(owner layer index, activation [1, C, H, W] as numpy)] after the reshape transform
        self.outputs = [(owner, piece.detach().cpu().numpy())
                        for owner, act in zip(capture.owners, capture.activations)
                        for piece in self.reshape(act, feature_shapes)]
        self.own_levels, self.kind = spec.own_levels, spec.kind
        owners = np.array([owner for owner, _ in self.outputs])
        self.owner_outputs = [np.flatnonzero(owners == o) for o in sorted(set(owners))]
        self._zero_maps_zero = {}
        self.non_finite: List[int] = []  # boxes whose gradient had NaN/inf (set to 0)
        if self.kind is MethodKind.ACTIVATION:  # not box-specific
            self._shared = [self._cam(i, np.zeros_like(a)) for i, (_, a) in
                            enumerate(self.outputs)]

    def for_boxes(self, values: Tensor, boxes: range, fuse: str):
        """The ``fuse``d maps ``(K, H_in, W_in)`` of ``boxes`` (None for a method that scores
        perturbations: those come from :meth:`perturbed`); per box the layers with no
        gradient from it; and ``[K, layers]`` the index of each box's own output per target
        layer (None without gradients)."""
        if not self.own_levels:  # activation-only method, no gradients needed
            return (np.repeat(_fuse(self._shared, fuse), len(boxes), axis=0),
                    [[]] * len(boxes), None)
        grads = self.backward(values, boxes)
        per_box = [self._finite(i, g) for i, g in zip(boxes, grads)]
        # per box, per output: [1, C, H, W] (the reshape transform's pieces of each activation)
        pieces = [[piece.cpu() for g in box_grads for piece in self.reshape(g, self.shapes)]
                  for box_grads in per_box]
        reached = [[bool(piece.any()) for piece in box_pieces] for box_pieces in pieces]
        zero = [self._layers_without_gradient(box_reached) for box_reached in reached]
        # a box usually reaches one pyramid level: the others' all-zero rows are skipped
        rows = [np.array([k for k in range(len(boxes)) if reached[k][index]], int)
                for index in range(len(self.outputs))]
        own = self._own_outputs(pieces, rows)
        if self.kind is MethodKind.PERTURBATION:
            return None, zero, own  # the maps are made after the forward pass, by perturbed()
        if self.kind is MethodKind.ACTIVATION:  # here with fuse='own': each box its own levels
            return (_fuse([np.repeat(m, len(boxes), axis=0) for m in self._shared], fuse, own),
                    zero, own)
        fusion = _Fusion(fuse, len(boxes), self.size, len(self.outputs), own)
        targets = [self.boxes[i] for i in boxes] if self.boxes else None
        for index in range(len(self.outputs)):
            kept = (rows[index] if self._zero_gradient_gives_zero_map(index)
                    else np.arange(len(boxes)))
            for chunk in _chunks(kept, pieces[0][index][0].numel()):
                grad = torch.cat([pieces[k][index] for k in chunk]).numpy()
                fusion.add(index, chunk, self._cam(
                    index, grad, None if targets is None else [targets[k] for k in chunk]))
        return fusion.result(), zero, own

    def perturbed(self, candidates_model, detections: InstanceData) -> List[np.ndarray]:
        """Maps ``[(N, H_in, W_in)]`` per layer output of a method that scores re-runs of the
        detector (``MethodKind.PERTURBATION``: ScoreCAM, AblationCAM), for all ``detections``
        at once (or their masks: ``detections.masks``, when ``candidates_model``, the
        ``RawCandidatesModel`` it re-runs, gives candidates with masks)."""
        if candidates_model.masks:  # the mask target
            tracked = [TrackedMask(mask, label) for mask, label in
                       zip(detections.masks.cpu().numpy(), detections.labels.tolist())]
        else:
            tracked = [TrackedDetection(box, label) for box, label in
                       zip(detections.bboxes.tolist(), detections.labels.tolist())]
        maps = []
        for index, (owner, act) in enumerate(self.outputs):
            output_index = sum(o == owner for o, _ in self.outputs[:index])
            no_gradient = np.zeros((len(tracked),) + act.shape[1:], act.dtype)
            maps.append(self._cam(index, no_gradient,
                                  Reruns(tracked, candidates_model, output_index)))
        return maps

    def _own_outputs(self, pieces: List[List[Tensor]], rows: List[np.ndarray]) -> np.ndarray:
        """``[K, layers]``: per box and target layer, the output with the largest
        ``sum |grad * activation|`` (``pieces[k][output]``: box ``k``'s gradient there;
        ``rows``: per output, the boxes with a gradient there)."""
        energy = np.zeros((len(pieces), len(self.outputs)), np.float64)
        for index, (_, activation) in enumerate(self.outputs):
            if len(rows[index]):
                weight = torch.from_numpy(activation).abs().flatten()
                for k in rows[index]:
                    grad = pieces[k][index]
                    energy[k, index] = float(grad.abs().flatten() @ weight.to(grad))
        return np.stack([outputs[energy[:, outputs].argmax(axis=1)]
                         for outputs in self.owner_outputs], axis=1)

    def level_index(self, own: np.ndarray) -> np.ndarray:
        """Each box's own level: its own output's index within the target layer with the
        most outputs (the pyramid)."""
        widest = max(range(len(self.owner_outputs)), key=lambda o: len(self.owner_outputs[o]))
        return own[:, widest] - self.owner_outputs[widest][0]

    def _finite(self, box: int, grads: List[Tensor]) -> List[Tensor]:
        # a finite sum has no NaN or inf in it (one reduction, no mask); else look closer
        if all(bool(torch.isfinite(g.sum())) or bool(torch.isfinite(g).all()) for g in grads):
            return grads
        self.non_finite.append(box)
        return [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]

    def _layers_without_gradient(self, reached: List[bool]) -> List[str]:
        """The target layers none of whose outputs got a gradient (``reached``: per output)."""
        owners = {self.outputs[index][0] for index, hit in enumerate(reached) if hit}
        return [self.capture.names[i] for i in sorted(set(self.capture.owners) - owners)]

    def _cam(self, index: int, grad: np.ndarray, targets=None) -> np.ndarray:
        """The method's maps for one layer output, ReLU'd and resized to the input
        (``targets``: one :class:`BoxTarget` per row of ``grad``)."""
        owner, act = self.outputs[index]
        cam = self.method.get_cam_image(self.inputs, self.capture.layers[owner], targets,
                                        np.broadcast_to(act, grad.shape), grad,
                                        self.eigen_smooth)
        return scale_cam_image(np.maximum(cam, 0), self.size)

    def _zero_gradient_gives_zero_map(self, index: int) -> bool:
        """Checked once per output by running the method on a zero gradient (true for the
        gradient methods, false e.g. for RandomCAM's random weights)."""
        if index not in self._zero_maps_zero:
            zero = np.zeros_like(self.outputs[index][1])
            self._zero_maps_zero[index] = not self._cam(index, zero).any()
        return self._zero_maps_zero[index]


def _replay(detector: nn.Module, dense: DenseHeadOutputs, rois: dict, capture: LayerCapture):
    """A replay of the part of the box head each detection depends on, where one applies: a
    one-stage dense head whose outputs and input were recorded, or a standard RoI head;
    and no target layer lies inside that head."""
    if dense.tensors and dense.features:
        replay = DenseReplay(dense.module, dense.features, dense.tensors)
    elif rois:
        replay = RoIReplay(detector.roi_head, rois)
    else:
        return None
    inside = {id(m) for m in replay.head.modules()}
    if any(id(layer) in inside for layer in capture.layers):
        return None
    return replay if replay.usable else None


def _fuse(per_output: List[np.ndarray], how: str, own=None) -> np.ndarray:
    """pytorch_grad_cam's multi-layer aggregation (ReLU, mean or max, min-max per map) of
    ``[(K, H, W)]`` maps per output; ``'own'``: the mean over each box's own outputs (``own``:
    ``[K, layers]`` indices)."""
    fusion = _Fusion(how, len(per_output[0]), per_output[0].shape[:0:-1], len(per_output), own)
    for index, maps in enumerate(per_output):
        fusion.add(index, np.arange(len(maps)), maps.copy())
    return fusion.result()


class _Fusion:
    """:func:`_fuse` one output at a time, for some boxes at a time, into one buffer: the
    same sums in the same order as over the stacked maps (an output that adds nothing to a
    box adds an exact zero there), without holding a map per output per box."""

    def __init__(self, how: str, count: int, size, outputs: int, own=None):
        self.how, self.outputs, self.own = how, outputs, own
        self.total = np.zeros((count, size[1], size[0]), np.float32)

    def add(self, index: int, rows: np.ndarray, maps: np.ndarray) -> None:
        """Output ``index``'s maps of boxes ``rows`` (overwritten: ReLU in place)."""
        np.maximum(maps, 0, out=maps)
        if self.how == 'own':
            mine = (self.own[rows] == index).any(axis=1)
            rows, maps = rows[mine], maps[mine]
        if self.how == 'max':
            self.total[rows] = np.maximum(self.total[rows], maps)
        else:
            self.total[rows] += maps

    def result(self) -> np.ndarray:
        if self.how == 'mean':
            self.total /= self.outputs
        elif self.how == 'own':
            self.total /= self.own.shape[1]
        return scale_cam_image(self.total)


def _chunks(rows: np.ndarray, size: int, budget: int = 2 ** 22) -> List[np.ndarray]:
    """``rows`` in runs whose gradients (``size`` values each) hold at most ``budget``
    values: temporaries of that size are reused by the allocator, larger ones are fresh
    memory every time (page faults cost more than the formula on a large level)."""
    step = max(1, budget // max(size, 1))
    return [rows[start:start + step] for start in range(0, len(rows), step)]


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
