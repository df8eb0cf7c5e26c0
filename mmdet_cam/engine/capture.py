"""One forward pass that keeps what per-detection gradients need.

* :func:`differentiable_inference` undoes mmdet's inference-time ``detach`` of head outputs
  (also inside heads that detach their own outputs), so a reported score stays connected to
  the exact prediction that produced it (NMS only gathers), keeps square roots in
  post-processing from turning gradients into NaN, and keeps mask branches, which no box
  score depends on, out of the graph.
* :func:`frozen_parameters` stops autograd from tracking weights: only activations need
  gradients, so the backward pass of each detection touches the head alone.
* :class:`LayerCapture` turns every output of the target layers into a gradient leaf, which
  cuts the graph there (the backbone below it is never back-propagated).
* :class:`DenseHeadOutputs` records a one-stage head's raw outputs, through which
  :func:`grads_for` back-propagates only the head branches and pyramid levels a detection
  came from.
"""
import contextlib
import importlib
import inspect
import sys
import types
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError
from ..model.layers import predicting_detector
from ..patching import swapped
from .memory import current_budget


@contextlib.contextmanager
def differentiable_inference(model: Optional[nn.Module] = None,
                             masks: bool = False) -> Iterator[None]:
    """Keep mmdet's inference differentiable while active: :class:`GraphKeepingFunctions`,
    :func:`_graph_keeping_swaps` and, for ``model``'s predicting detector,
    :func:`post_processing_keeps_graph`, :func:`masks_without_gradients` (unless ``masks``:
    when the masks are what is explained), :func:`without_activation_checkpoints` and
    :func:`bounded_solo_candidates`. The
    engine and the library-path adapter both enter it, so both see the same detector."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_graph_keeping_swaps())
        if model is not None:
            detector = predicting_detector(model)
            stack.enter_context(post_processing_keeps_graph(detector))
            if not masks:
                stack.enter_context(masks_without_gradients(detector))
            stack.enter_context(without_activation_checkpoints(detector))
            stack.enter_context(bounded_solo_candidates(detector))
        stack.enter_context(GraphKeepingFunctions())
        yield


class GraphKeepingFunctions(TorchFunctionMode):
    """Torch functions that keep the graph usable, while active in this thread.

    * ``torch.sqrt`` / ``Tensor.sqrt`` of tensors that need gradients get a backward that is 0
      where the incoming gradient is 0. torch's gives 0 x inf = NaN at 0, and post-processing
      takes square roots of scores that are exactly 0 (PAA: the padded background column),
      which would turn every detection's gradient into NaN although none depends on them.
    * ``copy.deepcopy`` of a tensor inside the graph (torch refuses non-leaf tensors) returns
      a ``clone()``: the same values, still differentiable (YOLACT copies its boxes).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.sqrt, Tensor.sqrt) and len(args) == 1 and not kwargs:
            x = args[0]
            if torch.is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad:
                return _ZeroSafeSqrt.apply(x)
        elif func is Tensor.__deepcopy__ and args[0].grad_fn is not None:
            tensor, memo = args
            if id(tensor) not in memo:
                memo[id(tensor)] = tensor.clone()
            return memo[id(tensor)]
        return func(*args, **kwargs)


class DetachKeepsGraph(TorchFunctionMode):
    """While active in this thread, ``detach()`` of a tensor that needs gradients returns a
    clone that stays in the graph (same values)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is Tensor.detach and args[0].requires_grad:
            return args[0].clone()
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _graph_keeping_swaps() -> Iterator[None]:
    """mmdet and mmcv functions swapped while active (:func:`~mmdet_cam.patching.swapped`).

    * mmdet's ``select_single_mlvl(..., detach=True)`` keeps the graph. Heads import the
      function by name, so it is swapped in every loaded mmdet module that holds it (no mmdet
      file is edited).
    * mmdet's ``filter_scores_and_topk`` (swapped the same way) picks its candidates without
      a graph and then reads their scores with one gather: the same scores in the same order,
      but a backward that writes a few hundred entries instead of masking, sorting and slicing
      every (anchor, class) score of the level again (the post-processing part of each
      backward pass, e.g. RetinaNet at 800x1088 with no score threshold: 10M entries).
    * mmcv's ``soft_nms`` (no backward) gets its decayed scores recomputed in torch from the
      boxes it kept, so soft-NMS detectors stay differentiable (``batched_nms`` looks it up).
    * mmcv's ``batched_nms`` as mmdet's modules hold it (plain NMS or none) chooses without a
      graph and gathers the kept boxes and scores from its inputs (:func:`_gathering_nms`).
    """
    from mmdet.models.utils import misc
    mmcv_nms = importlib.import_module('mmcv.ops.nms')  # the module; mmcv.ops.nms is a function
    select_single_mlvl = misc.select_single_mlvl

    def keep_graph(mlvl_tensors, batch_id, detach=True):
        return select_single_mlvl(mlvl_tensors, batch_id, detach=False)

    replacements = {
        'select_single_mlvl': (select_single_mlvl, keep_graph),
        'filter_scores_and_topk': (misc.filter_scores_and_topk,
                                   _gathering_filter(misc.filter_scores_and_topk)),
        'batched_nms': (mmcv_nms.batched_nms, _gathering_nms(mmcv_nms.batched_nms))}
    with contextlib.ExitStack() as stack:
        for module in _mmdet_modules():
            for name, (held, replacement) in replacements.items():
                if getattr(module, name, None) is held:
                    stack.enter_context(swapped(module, name, replacement))
        stack.enter_context(swapped(mmcv_nms, 'soft_nms',
                                    _differentiable_soft_nms(mmcv_nms.soft_nms)))
        yield


_LOADED_MMDET = (0, [])  # (len(sys.modules) when listed, mmdet's loaded modules)


def _mmdet_modules() -> list:
    """mmdet's loaded modules, listed again only when modules were loaded since (walking
    ``sys.modules`` took 5 ms per forward)."""
    global _LOADED_MMDET
    if _LOADED_MMDET[0] != len(sys.modules):
        _LOADED_MMDET = (len(sys.modules), [
            module for name, module in list(sys.modules.items())
            if name.split('.')[0] == 'mmdet' and module is not None])
    return _LOADED_MMDET[1]


def _gathering_nms(batched_nms):
    """mmcv's ``batched_nms`` run without a graph, then the kept boxes and scores gathered from
    its inputs: the same detections (checked: else mmcv's own call), and a backward of one
    gather instead of mmcv's loop over classes above 10000 boxes (a few index operations per
    class, each pass over every candidate: most of a box's backward through a Faster R-CNN's
    post-processing with no score threshold). Soft-NMS, which changes scores, keeps mmcv's."""
    def gathering(boxes, scores, idxs, nms_cfg, class_agnostic=False):
        plain = nms_cfg is None or nms_cfg.get('type', 'nms') == 'nms'
        if not (plain and torch.is_grad_enabled() and (boxes.requires_grad
                                                       or scores.requires_grad)):
            return batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic)
        with torch.no_grad():
            dets, keep = batched_nms(boxes.detach(), scores.detach(), idxs, nms_cfg,
                                     class_agnostic)
        gathered = torch.cat([boxes[keep], scores[keep, None]], -1)
        if not torch.equal(gathered.detach(), dets):
            return batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic)
        return gathered, keep
    return gathering


def _gathering_filter(filter_scores_and_topk):
    """mmdet's ``filter_scores_and_topk`` run without a graph for the choice, then the chosen
    scores gathered from ``scores`` (same values and order, a backward as small as the
    choice)."""
    def gathering(scores, score_thr, topk, results=None):
        if not scores.requires_grad:
            return filter_scores_and_topk(scores, score_thr, topk, results)
        _, labels, keep_idxs, filtered = filter_scores_and_topk(scores.detach(), score_thr,
                                                                topk, results)
        return scores[keep_idxs, labels], labels, keep_idxs, filtered
    return gathering


class _ZeroSafeSqrt(torch.autograd.Function):
    """``sqrt`` whose gradient is 0 wherever the incoming gradient is 0 (also at x = 0)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        y, = ctx.saved_tensors
        return torch.where(grad == 0, torch.zeros_like(grad), grad / (2 * y))


def _differentiable_soft_nms(soft_nms):
    """mmcv's ``soft_nms`` whose scores carry gradients.

    mmcv picks the highest current score, decays every later box by a weight of its IoU with
    the pick, and repeats; so the k-th kept box's score is its raw score times the weights of
    its IoUs with the boxes kept before it. That product is recomputed here from the kept
    boxes, with mmcv's IoU (``offset``) and weights; the selection itself is mmcv's.
    """
    def differentiable(boxes, scores, iou_threshold=0.3, sigma=0.5, min_score=1e-3,
                       method='linear', offset=0):
        dets, inds = soft_nms(boxes.detach(), scores.detach(), iou_threshold, sigma, min_score,
                              method, offset)
        if not (boxes.requires_grad or scores.requires_grad) or len(inds) == 0:
            return dets, inds
        inds = inds.to(boxes.device)
        kept = boxes[inds]
        x1, y1, x2, y2 = kept.unbind(dim=1)
        areas = (x2 - x1 + offset) * (y2 - y1 + offset)
        w = (torch.min(x2[:, None], x2[None]) - torch.max(x1[:, None], x1[None]) + offset)
        h = (torch.min(y2[:, None], y2[None]) - torch.max(y1[:, None], y1[None]) + offset)
        inter = w.clamp(min=0) * h.clamp(min=0)
        ious = inter / (areas[:, None] + areas[None] - inter)
        one, zero = torch.ones_like(ious), torch.zeros_like(ious)
        if method == 'gaussian':
            weight = torch.exp(-(ious * ious) / sigma)
        else:
            weight = torch.where(ious >= iou_threshold, 1 - ious if method == 'linear' else zero,
                                 one)
        earlier = torch.ones_like(ious, dtype=torch.bool).tril(-1)  # [k, m]: m kept before k
        decay = torch.where(earlier, weight, one).prod(dim=1)
        return torch.cat([kept, (scores[inds] * decay)[:, None]], dim=1), inds
    return differentiable


@contextlib.contextmanager
def post_processing_keeps_graph(model: nn.Module) -> Iterator[None]:
    """While a dense head of ``model`` post-processes (``predict_by_feat``), ``detach()`` of a
    tensor in the graph returns a clone that stays in it.

    Some heads detach their raw outputs themselves before decoding (SABL). At inference that
    changes no value (mmdet runs it under ``no_grad``); here it would cut every detection off
    its features. Detaches anywhere else (e.g. DETR's reference points) are left alone.
    """
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    with post_processing_under([m for m in model.modules() if isinstance(m, BaseDenseHead)],
                               DetachKeepsGraph):
        yield


@contextlib.contextmanager
def post_processing_under(heads: Sequence[nn.Module], mode) -> Iterator[None]:
    """While active, each of ``heads`` runs its ``predict_by_feat`` (its post-processing)
    under a fresh ``mode()`` (a ``TorchFunctionMode``)."""
    def under_mode(predict_by_feat):
        def predict(*args, **kwargs):
            with mode():
                return predict_by_feat(*args, **kwargs)
        return predict

    with contextlib.ExitStack() as stack:
        for head in heads:
            if hasattr(head, 'predict_by_feat'):
                stack.enter_context(
                    swapped(head, 'predict_by_feat', under_mode(head.predict_by_feat)))
        yield


def box_heads(model: nn.Module) -> List[nn.Module]:
    """The detector's box heads: its ``bbox_head`` (a dense or DETR head) or the
    ``roi_head.bbox_head`` of each RoI stage (a cascade holds one per stage)."""
    heads = []
    for name, module in model.named_modules():
        if name.split('.')[-1] == 'bbox_head':
            heads += list(module) if isinstance(module, nn.ModuleList) else [module]
    return heads


# memory for the masks of the candidates a SOLO head draws before its matrix NMS: each takes
# about MASK_COPIES float32 maps at a quarter of the input's size (the mask, its sigmoid, its
# thresholded copy, their products, kept for the backward)
SOLO_MASK_BYTES = 2 * 2 ** 30
MASK_COPIES = 8


@contextlib.contextmanager
def bounded_solo_candidates(model: nn.Module) -> Iterator[None]:
    """While active, a SOLO / SOLOv2 head draws the masks of at most as many candidates as
    :data:`SOLO_MASK_BYTES` (or half the memory budget, ``engine.memory``) holds, the
    best-scored (their score threshold raised to that count for the image): mmdet draws a
    mask for every (grid cell, class) pair above the threshold before its NMS keeps
    ``nms_pre``, and with no threshold (every raw candidate, or an untrained model) that is
    3872 cells x 80 classes, over 20 GB at 256 px. With the usual threshold a trained model
    stays far below the bound and nothing changes."""
    from mmengine.config import ConfigDict
    heads = [m for m in model.modules()
             if any(c.__name__ == 'SOLOHead' for c in type(m).__mro__)]

    def bounded(head, single):
        # the class's own signature: ``single`` may be a recording wrapper (mask_logits)
        names = list(inspect.signature(type(head)._predict_by_feat_single).parameters)[1:]

        def predict(*args, **kwargs):
            bound = dict(zip(names, args), **kwargs)
            scores, meta = bound['cls_scores'], bound['img_meta']
            cfg = bound.get('cfg') or ConfigDict(head.test_cfg)
            height, width = meta['batch_input_shape'][:2]
            limit = max(1, min(SOLO_MASK_BYTES, current_budget() // 2) //
                        (height * width // 16 * 4 * MASK_COPIES))
            if scores.numel() > limit and int((scores > cfg.score_thr).sum()) > limit:
                cutoff = scores.detach().flatten().topk(limit + 1).values[-1]
                bound['cfg'] = ConfigDict(dict(cfg, score_thr=max(float(cfg.score_thr),
                                                                   float(cutoff))))
            return single(**bound)
        return predict

    with contextlib.ExitStack() as stack:
        for head in heads:
            stack.enter_context(swapped(head, '_predict_by_feat_single',
                                        bounded(head, head._predict_by_feat_single)))
        yield


@contextlib.contextmanager
def without_activation_checkpoints(model: nn.Module) -> Iterator[None]:
    """While active, layers wrapped by fairscale's ``checkpoint_wrapper`` (Grounding DINO's and
    some Deformable DETR encoders, ``num_cp``) run their own ``forward``, and modules that
    checkpoint through ``torch.utils.checkpoint`` when their ``with_cp`` (ResNet, Swin blocks)
    or ``use_checkpoint`` (GLIP's fusion layers) flag is set run without it.

    A checkpoint re-runs a layer's forward during the backward instead of keeping its
    activations, through an autograd function that refuses ``torch.autograd.grad`` (which the
    engine calls once per box). Same values; only memory is traded for the graph.
    """
    wrapped = [module for module in model.modules()
               if getattr(getattr(vars(module).get('forward'), 'func', None), '__name__', '')
               == '_checkpointed_forward']
    flagged = [(module, flag) for module in model.modules()
               for flag in ('with_cp', 'use_checkpoint') if vars(module).get(flag) is True]
    with contextlib.ExitStack() as stack:
        for module in wrapped:
            stack.enter_context(swapped(module, 'forward',
                                        types.MethodType(type(module).forward, module)))
        for module, flag in flagged:
            stack.enter_context(swapped(module, flag, False))
        yield


@contextlib.contextmanager
def masks_without_gradients(model: nn.Module) -> Iterator[None]:
    """Run a two-stage detector's mask branch (``roi_head.predict_mask``) without autograd.

    Masks are drawn from the final boxes and do not change their scores, so no explained value
    depends on them; their inference-only code (e.g. PointRend's in-place writes into split
    RoIs) is also not meant to run under autograd. Heads that rescore detections from their
    masks (Mask Scoring R-CNN's ``mask_iou_head``) keep the branch differentiable.
    """
    roi_head = getattr(model, 'roi_head', None)
    predict_mask = getattr(roi_head, 'predict_mask', None)
    if predict_mask is None or getattr(roi_head, 'mask_iou_head', None) is not None:
        yield
        return

    def without_gradients(*args, **kwargs):
        with torch.no_grad():
            return predict_mask(*args, **kwargs)

    with swapped(roi_head, 'predict_mask', without_gradients):
        yield


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Set ``requires_grad=False`` on all parameters while active, then restore the flags."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class LayerCapture:
    """Forward hooks that record the outputs of ``layers`` as tensors gradients can reach.

    A layer returning a tuple/list of tensors (a whole FPN neck) contributes one entry per
    element, and a layer called several times (a head conv shared across levels) one entry per
    call. ``activations[k]`` came from ``layers[owners[k]]``.

    Use as a context manager; the hooks are removed on exit.
    """

    def __init__(self, layers: Sequence[nn.Module], names: Sequence[str]):
        self.layers = list(layers)
        self.names = list(names)
        self.activations: List[Tensor] = []
        self.owners: List[int] = []
        self._handles = []

    def __enter__(self) -> 'LayerCapture':
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._make_hook(index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, index: int):
        def hook(module, inputs, output):
            if isinstance(output, Tensor):
                return self._record(index, output)
            if isinstance(output, (tuple, list)) and any(isinstance(o, Tensor) for o in output):
                return self._record_sequence(index, output)
            raise UnsupportedModelError(
                f'layer {self.names[index]!r} returns {type(output).__name__}, not a tensor '
                'or a tuple/list holding tensors: choose another target layer')
        return hook

    def _record_sequence(self, index: int, output):
        """Record every tensor of a tuple/list output (a tensor that appears twice, once).

        A ``[B, N, C]`` token tensor followed by its ``(h, w)`` grid size, as Swin's stages
        return ``(x, hw_shape, out, out_hw_shape)``, is recorded as its ``[B, C, h, w]`` map.
        Other items (sizes, None) pass through unchanged.
        """
        items, recorded = list(output), {}
        for k, item in enumerate(items):
            if isinstance(item, Tensor):
                if id(item) not in recorded:
                    following = items[k + 1] if k + 1 < len(items) else None
                    recorded[id(item)] = self._record(index, item, _grid_size(following))
                items[k] = recorded[id(item)]
        return tuple(items) if isinstance(output, tuple) else items

    def _record(self, index: int, output: Tensor, grid_size=None) -> Tensor:
        # Below the first target layer nothing requires grad (weights are frozen), so the
        # output becomes a fresh leaf: the graph is cut here. A layer downstream of another
        # target layer is already in the graph and is recorded as it is. The clone keeps
        # in-place ops of the consumer (e.g. ``out += identity``) off the recorded tensor.
        tokens = (grid_size is not None and output.dim() == 3
                  and grid_size[0] * grid_size[1] == output.shape[1])
        if tokens:  # record the map; the consumer gets the same tokens back, computed from it
            batch, _, channels = output.shape
            output = output.transpose(1, 2).reshape(batch, channels, *grid_size)
        if not output.requires_grad:
            output = output.detach().requires_grad_()
        self.activations.append(output)
        self.owners.append(index)
        return output.flatten(2).transpose(1, 2).contiguous() if tokens else output.clone()


def _grid_size(value) -> Optional[Tuple[int, int]]:
    """``(h, w)`` if ``value`` is a pair of ints (a token grid's size), else None."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


class _OutputRecorder:
    """Context manager that passes every output of ``module`` (None: no module) to
    ``self._hook`` while active."""

    def __init__(self, module: Optional[nn.Module]):
        self.module = module
        self._handle = None

    def __enter__(self):
        if self.module is not None:
            self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()

    def _hook(self, module, inputs, output):
        raise NotImplementedError


class FeatureShapes(_OutputRecorder):
    """Records the spatial sizes ``(h, w)`` of a module's 4-D outputs (e.g. the neck's pyramid
    levels), which is what maps transformer token sequences back onto a grid."""

    def __init__(self, module: Optional[nn.Module]):
        super().__init__(module)
        self.shapes: List[Tuple[int, int]] = []

    def _hook(self, module, inputs, output):
        outputs = output if isinstance(output, (tuple, list)) else [output]
        self.shapes = [tuple(o.shape[-2:]) for o in outputs
                       if isinstance(o, Tensor) and o.dim() == 4]


class DenseHeadOutputs(_OutputRecorder):
    """Records the tensors a one-stage detector's dense head returns from ``forward`` (per
    level: class scores, box deltas, ...), for :func:`grads_for`'s ``through``.

    Only used where every path from the features to the detections passes those tensors:
    a ``SingleStageDetector`` whose head keeps ``BaseDenseHead.predict``, which is
    ``predict_by_feat(*self(x))``. For other detectors ``tensors`` stays empty.
    """

    def __init__(self, model: nn.Module):
        from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
        from mmdet.models.detectors import SingleStageDetector
        head = getattr(model, 'bbox_head', None)
        exact = (type(model).predict is SingleStageDetector.predict
                 and isinstance(head, BaseDenseHead)
                 and type(head).predict is BaseDenseHead.predict)
        super().__init__(head if exact else None)
        self.tensors: List[Tensor] = []
        self.features: List[Tensor] = []  # the head's input, one map per level

    def _hook(self, module, inputs, output):
        self.tensors = tensors_in(output)
        levels = inputs[0] if inputs else None
        if isinstance(levels, (tuple, list)) and all(isinstance(f, Tensor) for f in levels):
            self.features = list(levels)


class FinalHeadOutputs:
    """Records, in call order, every tensor that the detector's box heads return from
    ``forward``: the raw candidates' class scores and box deltas, whatever the detector (its
    ``bbox_head``, a dense or DETR head, or the ``roi_head.bbox_head`` of each RoI stage)."""

    def __init__(self, model: nn.Module):
        self.heads = box_heads(model)
        self.tensors: List[Tensor] = []
        self._handles = []

    def __enter__(self) -> 'FinalHeadOutputs':
        self._handles = [head.register_forward_hook(self._hook) for head in self.heads]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, module, inputs, output):
        self.tensors += tensors_in(output)


class TokenEmbeddings(_OutputRecorder):
    """The token embeddings of a text-prompted detector's prompt, as a gradient leaf.

    A forward hook on the language model's word-embedding table records its output (``[1, T,
    C]``: one embedding per token of the prompt, padding and separators included) as a fresh
    leaf that the rest of the model reads, and the token ids it embedded. The gradient of a
    detection's value with respect to that leaf, times the leaf, summed over ``C``, is that
    token's attribution (gradient x input, at the language model's input). A prompt too long
    for one pass (mmdet's chunked prompts, e.g. LVIS's 1203 classes) is embedded once per
    chunk: one leaf per chunk, their tokens one after the other. For detectors without a
    language model nothing is recorded (``embeddings`` stays empty).
    """

    def __init__(self, model: nn.Module):
        language_model = getattr(model, 'language_model', None)
        super().__init__(None if language_model is None else _word_embeddings(language_model))
        self.tokenizer = getattr(language_model, 'tokenizer', None)
        self.embeddings: List[Tensor] = []  # one [1, T_i, C] leaf per pass of the prompt
        self.ids: List[Tensor] = []

    def _hook(self, module, inputs, output):
        self.ids.append(inputs[0].detach())
        self.embeddings.append(output.detach().requires_grad_())
        return self.embeddings[-1]

    @property
    def tokens(self) -> List[str]:
        """The recorded prompt's tokens as the tokenizer spells them (first prompt of the
        batch; every chunk's, in order)."""
        return [token for ids in self.ids
                for token in self.tokenizer.convert_ids_to_tokens(ids[0].tolist())]


def token_attributions(grads: Sequence[Optional[Tensor]], embeddings: Sequence[Tensor]):
    """float32 ``[T]``: one box's attribution per token, its gradient at each of the
    :class:`TokenEmbeddings` leaves (None: none) times the leaf, summed over channels; the
    chunks' tokens one after the other."""
    return np.concatenate([
        (torch.zeros_like(leaf) if grad is None else
         torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0) * leaf)[0]
        .sum(-1).detach().cpu().numpy().astype(np.float32)
        for grad, leaf in zip(grads, embeddings)])


def _word_embeddings(language_model: nn.Module) -> Optional[nn.Module]:
    """The embedding table that turns a prompt's token ids into vectors (BERT's
    ``embeddings.word_embeddings``), or the language model's first ``nn.Embedding``."""
    tables = [(name, m) for name, m in language_model.named_modules()
              if isinstance(m, nn.Embedding)]
    named = [m for name, m in tables if name.endswith('word_embeddings')]
    return (named or [m for _, m in tables] or [None])[0]


def tensors_in(value) -> List[Tensor]:
    """The tensors of a (nested) head output that are in the graph."""
    if isinstance(value, Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_in(item)]
    return []


def grads_for(value: Tensor, activations: Sequence[Tensor],
              through: Sequence[Tensor] = ()) -> List[Tensor]:
    """Gradients of a scalar w.r.t. each activation (zeros where it does not depend on it).

    ``through``: tensors that every path from the activations to ``value`` passes (a dense
    head's outputs). The backward then stops there first and goes on only from those that
    ``value`` depends on, skipping the head branches and levels that did not produce it
    (RetinaNet-R50, 800x1088: 0.64 s instead of 0.94 s per box); the result is the same.
    """
    grads = _backward(value, None, activations, through, batched=False)
    return [torch.zeros_like(a) if g is None else g for g, a in zip(grads, activations)]


def batched_grads_for(values: Tensor, activations: Sequence[Tensor],
                      through: Sequence[Tensor] = ()) -> List[List[Tensor]]:
    """:func:`grads_for` of each element of ``values`` (a 1-D tensor), all in one batched
    backward pass (``torch.autograd.grad(..., is_grads_batched=True)``, which vmaps the
    backward over the elements): per element, its gradients w.r.t. each activation. Each is
    its own exact gradient; only the passes are shared. Raises ``RuntimeError`` where an op
    of the graph has no batched backward (the caller then goes element by element)."""
    seeds = torch.eye(len(values), dtype=values.dtype, device=values.device)
    grads = _backward(values, seeds, activations, through, batched=True)
    grads = [torch.zeros((len(values),) + a.shape, dtype=a.dtype, device=a.device)
             if g is None else g for g, a in zip(grads, activations)]
    return [[g[k] for g in grads] for k in range(len(values))]


def _backward(values: Tensor, seeds: Optional[Tensor], activations: Sequence[Tensor],
              through: Sequence[Tensor], batched: bool) -> Sequence[Optional[Tensor]]:
    """``torch.autograd.grad`` of ``values`` (weighted by ``seeds``, a batch of them when
    ``batched``) w.r.t. ``activations``, stopping at the ``through`` tensors first (see
    :func:`grads_for`); None where there is no gradient."""
    options = dict(retain_graph=True, allow_unused=True, is_grads_batched=batched)
    if not through:
        return torch.autograd.grad(values, activations, grad_outputs=seeds, **options)
    partial = torch.autograd.grad(values, through, grad_outputs=seeds, **options)
    used = [(t, g) for t, g in zip(through, partial) if g is not None and bool(g.any())]
    if not used:
        return [None] * len(activations)
    return torch.autograd.grad([t for t, _ in used], activations,
                               grad_outputs=[g for _, g in used], **options)
