"""Each detection's own mask as differentiable logits at its mask head's resolution.

mmdet's instance heads make one map per final detection (logits or probabilities at the head's
own resolution: a 28x28 RoI grid, a stride-4 or stride-8 map of the input), then resize, paste
and threshold it into the boolean ``masks`` they report, without a gradient. While
:func:`instance_mask_logits` is active, the mask heads of a detector also attach that map to
their results, in the detections' order (so every selection of detections keeps them):

* ``mask_logits`` ``[N, h, w]``: the map as logits (probability maps are turned into logits);
* ``mask_boxes`` ``[N, 4]``: the detection's box in that map's pixels;
* ``mask_thresholds`` ``[N]``: the logit above which a pixel is in the reported mask.

Where the map is made differs per head family, so each has a small adapter below: RoI mask heads
(``FCNMaskHead`` and its subclasses: Mask R-CNN, cascades, HTC, MS R-CNN, PointRend, SCNet,
QueryInst), RTMDet-Ins, CondInst / BoxInst, SOLO / SOLOv2, YOLACT and MaskFormer / Mask2Former.
"""
import contextlib
import math
import weakref
from typing import Iterator, List, Optional

import torch
from mmengine.structures import InstanceData
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError
from ..patching import swapped
from .capture import DetachKeepsGraph

MASK_FIELDS = ('mask_logits', 'mask_boxes', 'mask_thresholds')


@contextlib.contextmanager
def instance_mask_logits(detector: nn.Module) -> Iterator[None]:
    """While active, the results of ``detector``'s mask heads carry :data:`MASK_FIELDS`.
    Raises ``UnsupportedModelError`` for a detector without a mask head mmdet-cam knows."""
    check_mask_head(detector)
    with contextlib.ExitStack() as stack:
        for module in detector.modules():
            for kind, adapter in _ADAPTERS:
                if _is(module, kind):
                    adapter(module, stack)
        roi_head = getattr(detector, 'roi_head', None)
        if getattr(roi_head, 'predict_mask', None) is not None:
            stack.enter_context(swapped(roi_head, 'predict_mask',
                                        _mask_branch_in_graph(roi_head.predict_mask)))
        yield


# RoI heads draw masks for at most this many candidates per image (the highest box scores)
# when every raw candidate is read: one mask-head forward per candidate (13 ms for Mask R-CNN
# on 2 CPU cores) over its 1000 proposals x 80 classes would take 17 minutes per image
ROI_MASK_CANDIDATES = 1000


@contextlib.contextmanager
def unpasted_candidate_masks(detector: nn.Module, chunk: int = 512) -> Iterator[None]:
    """While active (with :func:`~mmdet_cam.engine.every_candidate.every_candidate`), raw
    candidates carry :data:`MASK_FIELDS` and no pasted mask: thousands of candidates' masks at
    the image's size would cost more than the detector (read them with
    :func:`candidate_mask_logits`). RTMDet-Ins, CondInst / BoxInst and YOLACT: every
    candidate, its mask logits drawn on demand by the head's own code in chunks of ``chunk``;
    RoI mask heads: the :data:`ROI_MASK_CANDIDATES` best-scored candidates (see
    :func:`roi_masks_unpasted`); SOLO / SOLOv2 and Mask2Former, whose candidates' masks are
    drawn before their boxes exist: the masks the head draws for them, recorded. QueryInst is
    refused (:func:`check_candidate_masks`)."""
    check_candidate_masks(detector)
    head = getattr(detector, 'bbox_head', None)
    mask_head = getattr(detector, 'mask_head', None)
    if _is(head, 'RTMDetInsHead'):
        with _rtmdet_ins_candidate_masks(head, chunk):
            yield
    elif any(_is(mask_head, kind) for kind in _DRAWN_ON_DEMAND):
        with swapped(detector, 'mask_head', _MasksOnDemand(mask_head, chunk)):
            yield
    elif getattr(detector, 'roi_head', None) is not None:
        with instance_mask_logits(detector), roi_masks_unpasted(detector.roi_head):
            yield
    else:  # SOLO / SOLOv2 (bounded, see capture.bounded_solo_candidates), Mask2Former
        with instance_mask_logits(detector):
            yield


def check_candidate_masks(detector: nn.Module, method: str = 'mask faithfulness') -> None:
    """Raise ``UnsupportedModelError`` unless :func:`unpasted_candidate_masks` supports
    ``detector`` (what ``method``, which follows masks among raw candidates, needs)."""
    check_mask_head(detector)
    if _is(getattr(detector, 'roi_head', None), 'SparseRoIHead'):
        raise UnsupportedModelError(
            f"{method} follows each mask among the masks of every raw candidate; QueryInst's "
            "candidates are (query, class) pairs, and its mask branch reads per-query attention "
            "features that mmdet lines up with one kept detection per query; use a gradient "
            "method (e.g. odam)")


@contextlib.contextmanager
def roi_masks_unpasted(roi_head: nn.Module, limit: int = ROI_MASK_CANDIDATES,
                       chunk: int = 100) -> Iterator[None]:
    """While active, ``roi_head``'s mask branch runs on the ``limit`` best-scored detections of
    each image only (the others are dropped), over chunks of ``chunk`` RoIs (bounded memory),
    and pastes nothing (results keep their boxes, rescaled as mmdet does, and no ``masks``).
    For reading every raw candidate of a head whose scores need its masks (Mask Scoring
    R-CNN's mask IoU head) or whose masks are explained."""
    predict_mask = roi_head.predict_mask

    def best(value):
        if not isinstance(value, list) or not value or not isinstance(value[0], InstanceData):
            return value
        return [results[results.scores.argsort(descending=True)[:limit]] for results in value]

    def predict(*args, **kwargs):  # HTC and SCNet take more arguments before the results
        results_list = predict_mask(*map(best, args), **{k: best(v) for k, v in kwargs.items()})
        for results in results_list:
            if 'masks' in results:
                del results.masks
        return results_list

    with contextlib.ExitStack() as stack:
        stack.enter_context(swapped(roi_head, 'predict_mask', predict))
        stack.enter_context(swapped(roi_head, '_mask_forward',
                                    _in_chunks(roi_head._mask_forward, chunk)))
        for module in roi_head.mask_head.modules():
            if _is(module, 'FCNMaskHead'):
                stack.enter_context(swapped(module, '_predict_by_feat_single', _boxes_rescaled))
        yield


def _in_chunks(mask_forward, chunk: int):
    """``_mask_forward`` over chunks of its RoIs (a ``[n, 5]`` tensor; other tensor arguments
    with ``n`` rows, such as QueryInst's attention features, are cut alike), its tensors and
    lists of tensors (HTC: one per stage) put back together."""
    def forward(*args, **kwargs):
        rois = kwargs.get('rois')
        if rois is None:
            rois = next(a for a in args if isinstance(a, Tensor) and a.dim() == 2 and
                        a.shape[1] == 5)
        count = len(rois)
        if count <= chunk:
            return mask_forward(*args, **kwargs)

        def cut(value, first):
            if isinstance(value, Tensor) and value.dim() and len(value) == count:
                return value[first:first + chunk]
            return value
        parts = [mask_forward(*[cut(a, first) for a in args],
                              **{k: cut(v, first) for k, v in kwargs.items()})
                 for first in range(0, count, chunk)]
        return {key: _joined([part[key] for part in parts]) for key in parts[0]}
    return forward


def _joined(values: list):
    if isinstance(values[0], Tensor):
        return torch.cat(values)
    if isinstance(values[0], (list, tuple)):
        return [_joined(list(items)) for items in zip(*values)]
    return values[0]


def _boxes_rescaled(mask_preds, bboxes, labels, img_meta, rcnn_test_cfg, rescale=False,
                    activate_map=False) -> Tensor:
    """``FCNMaskHead._predict_by_feat_single`` without the pasting: the boxes are rescaled in
    place as it does, and the masks are ``[N, 0, 0]``."""
    if rescale:
        bboxes /= bboxes.new_tensor(img_meta['scale_factor']).repeat((1, 2))
    return bboxes.new_zeros((len(bboxes), 0, 0), dtype=torch.bool)


@contextlib.contextmanager
def _rtmdet_ins_candidate_masks(head: nn.Module, chunk: int) -> Iterator[None]:
    """RTMDet-Ins candidates carry ``mask_boxes`` and ``mask_thresholds`` but their logits are
    drawn on demand (:func:`candidate_mask_logits`): a candidate's mask is a dynamic
    convolution of the image's mask features with its own kernel, so drawing it for all
    thousands of candidates of every perturbed copy cost 10x the detector's forward, while a
    tracked mask needs only those that can still beat the best found (boxes.py)."""
    stride = head.prior_generator.strides[0][0]
    boxes_only = rtmdet_ins_boxes_only(head)

    def post_process(results, mask_feat, cfg, rescale=False, with_nms=True, img_meta=None):
        results = boxes_only(results, mask_feat, cfg, rescale, with_nms, img_meta)
        height, width = img_meta['img_shape'][:2]
        # the image's part of the padded input (the grid's coordinates start at its corner)
        features = mask_feat.detach()[:, :math.ceil(height / stride),
                                        :math.ceil(width / stride)].contiguous()

        # a plain function: metainfo is deep-copied whenever the candidates are indexed, and
        # a function is copied by reference (the features and the head are not duplicated)
        def draw(candidates: InstanceData) -> Tensor:
            kernels, priors = candidates.kernels, candidates.priors
            # a prior's candidates (one per class) share its kernel, hence its mask
            key = (priors.double() * priors.new_tensor([1, 2 ** 20, 2 ** 40, 0])).sum(1)
            key, index = torch.unique(key, return_inverse=True)  # 1-D: 5x faster than dim=0
            priors = priors.new_zeros((len(key), 4)).index_copy_(0, index, priors)
            kernels = kernels.new_zeros((len(priors), kernels.shape[1])).index_copy_(
                0, index, kernels)
            with torch.no_grad():
                logits = torch.cat([rtmdet_ins_masks(
                    head, features, kernels[first:first + chunk].to(features.device),
                    priors[first:first + chunk].to(features.device))
                    for first in range(0, len(kernels), chunk)]
                    or [features.new_zeros((0, *features.shape[-2:]))])
            return logits[index].cpu()

        scale = _input_scale(results.bboxes, img_meta, rescale)
        results.mask_boxes = (results.bboxes * scale / stride).detach().float().reshape(-1, 4)
        results.mask_thresholds = results.bboxes.new_full((len(results),),
                                                          _logit(cfg.mask_thr_binary))
        results.set_metainfo(dict(draw_mask_logits=draw))
        return results

    with swapped(head, '_bbox_mask_post_process', post_process):
        yield


# single-stage instance segmentors whose mask head draws masks for the box head's results
_DRAWN_ON_DEMAND = ('CondInstMaskHead', 'YOLACTProtonet')
# per such head, per network input size: the factor from input pixels to its maps' pixels
_MAP_SCALES: 'weakref.WeakKeyDictionary[nn.Module, dict]' = weakref.WeakKeyDictionary()


class _MasksOnDemand(nn.Module):
    """In place of a single-stage segmentor's mask head (CondInst, BoxInst, YOLACT) while every
    raw candidate is read: the candidates' boxes are rescaled as the mask head does, they carry
    ``mask_boxes`` and ``mask_thresholds``, and their logits are drawn on demand
    (:func:`candidate_mask_logits`) by the head itself, on the image's features, without a
    graph: the maps these candidates would have had as detections."""

    def __init__(self, head: nn.Module, chunk: int):
        super().__init__()
        self.chunk = chunk
        self.__dict__['head'] = head  # not a submodule: the detector's modules stay as they are

    def predict(self, x, batch_data_samples, rescale: bool = True, results_list=None,
                **kwargs):
        for index, (results, sample) in enumerate(zip(results_list, batch_data_samples)):
            meta = sample.metainfo
            factor = results.bboxes.new_tensor(meta['scale_factor']).repeat(2) if rescale \
                else results.bboxes.new_ones(4)
            results.input_bboxes = results.bboxes.detach()  # exactly the boxes it crops by
            draw = _drawn_by(self.head, tuple(level[index:index + 1].detach() for level in x),
                             meta, self.chunk)
            # the maps' scale: a property of the head and the input size, so the first
            # candidate is drawn for it once, not for every perturbed copy of an image
            scales = _MAP_SCALES.setdefault(self.head, {})
            size = tuple(meta['batch_input_shape'])
            if size not in scales and len(results):
                draw(results[:1])
                scales[size] = draw.scale
            results.mask_boxes = (results.bboxes * scales.get(size, 1.0)).detach().float() \
                .reshape(-1, 4)
            results.mask_thresholds = results.bboxes.new_full(
                (len(results),), _logit(self.head.test_cfg.mask_thr))
            results.bboxes = results.bboxes / factor
            results.set_metainfo(dict(draw_mask_logits=draw))
        return results_list


def _drawn_by(head: nn.Module, features: tuple, meta: dict, chunk: int):
    """A function from candidates (with their boxes in input pixels as ``input_bboxes``) to
    their ``[n, h, w]`` mask logits, made by ``head``'s own forward and ``predict_by_feat`` on
    one image's ``features``, in chunks of ``chunk``: the maps :func:`_maps_in_call_head`
    records for detections. Its ``scale`` (set by a call with a candidate) is the factor from
    input pixels to the maps' pixels."""
    probabilities = _is(head, 'YOLACTProtonet')

    def draw(candidates: InstanceData) -> Tensor:
        maps = []

        def single(mask_preds, bboxes, img_meta, rescale, cfg=None):
            logits, draw.scale = _image_part(mask_preds, img_meta, probabilities)
            maps.append(logits)
            return mask_preds.new_zeros((len(mask_preds), 0, 0), dtype=torch.bool)

        with torch.no_grad(), swapped(head, '_predict_by_feat_single', single):
            for first in range(0, len(candidates), chunk):
                part = candidates[first:first + chunk]
                part.bboxes = part.input_bboxes
                head.predict_by_feat(*head(features, [part]), batch_img_metas=[meta],
                                     rescale=False, results_list=[part])
        return torch.cat(maps).cpu() if maps else torch.zeros((0, 0, 0))

    draw.scale = 1.0
    return draw


def rtmdet_ins_masks(head: nn.Module, mask_feat: Tensor, kernels: Tensor, priors: Tensor) -> Tensor:
    """RTMDet-Ins's ``_mask_predict_by_feat_single`` (``[n, h, w]`` mask logits of ``n``
    candidates from the image's ``[C, h, w]`` mask features) with its dynamic 1x1 convolutions
    as batched matrix products: the same numbers, several times faster on a CPU than mmdet's
    convolution with one group per candidate, and the first layer's product with the shared
    features is one matrix product for all candidates instead of a copy of them per
    candidate."""
    count, (channels, height, width) = len(priors), mask_feat.shape
    if count == 0:
        return mask_feat.new_zeros((0, height, width))
    grid = head.prior_generator.single_level_grid_priors(
        (height, width), level_idx=0, device=mask_feat.device)  # [h * w, 2]
    weights, biases = head.parse_dynamic_params(kernels)
    first = weights[0].reshape(count, -1, 2 + channels)  # input: 2 coordinates, the features
    # the coordinates enter as (prior - cell) / (8 stride): a per-candidate constant, and the
    # cells' coordinates shared by all candidates, as the features are: one matrix product
    scaled = first[:, :, :2] / (priors[:, None, 2:3] * 8)
    constant = biases[0].reshape(count, -1) + (scaled * priors[:, None, :2]).sum(-1)
    shared = torch.cat([-grid.T, mask_feat.reshape(channels, -1)])
    x = torch.addmm(constant.reshape(-1, 1), torch.cat([scaled, first[:, :, 2:]], dim=2).reshape(
        -1, 2 + channels), shared).reshape(count, -1, height * width)
    for weight, bias in zip(weights[1:], biases[1:]):
        x = torch.baddbmm(bias.reshape(count, -1, 1), weight.reshape(count, -1, x.shape[1]),
                          x.relu_())
    return x.reshape(count, height, width)


def candidate_mask_logits(candidates: InstanceData, keep: Tensor) -> Tensor:
    """``[n, h, w]`` unpasted mask logits of the raw candidates ``keep`` selects (a boolean or
    index tensor): recorded ones (RoI heads, SOLO, Mask2Former) or drawn now (RTMDet-Ins,
    CondInst / BoxInst, YOLACT; see :func:`unpasted_candidate_masks`)."""
    if 'mask_logits' in candidates:
        return candidates.mask_logits[keep]
    if 'draw_mask_logits' not in candidates.metainfo:
        raise ValueError('these candidates carry no masks: read them with masks=True')
    return candidates.metainfo['draw_mask_logits'](candidates[keep])


def rtmdet_ins_boxes_only(head: nn.Module):
    """RTMDet-Ins's ``_bbox_mask_post_process`` without its masks: mmdet's dense-head one
    (rescale, score factors, minimum size, NMS, cap), which its own repeats before drawing
    them."""
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead

    def post_process(results, mask_feat, cfg, rescale=False, with_nms=True, img_meta=None):
        return BaseDenseHead._bbox_post_process(head, results, cfg, rescale=rescale,
                                                with_nms=with_nms, img_meta=img_meta)
    return post_process


def _mask_branch_in_graph(predict_mask):
    """A two-stage detector's mask branch, kept in the graph: the cascades' ``detach()`` of
    each stage's masks before averaging keeps it (:class:`DetachKeepsGraph`), and the boxes
    enter as constants (RoIAlign gives its RoIs no gradient anyway; PointRend writes into its
    RoIs in place, which autograd refuses for the boxes' views)."""
    def predict(*args, **kwargs):
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, list) and value and isinstance(value[0], InstanceData):
                for results in value:
                    results.bboxes = results.bboxes.detach()
        with DetachKeepsGraph():
            return predict_mask(*args, **kwargs)
    return predict


def check_mask_head(detector: nn.Module) -> None:
    """Raise ``UnsupportedModelError`` unless ``detector`` has a mask head adapted here."""
    if not any(_is(module, kind) for module in detector.modules() for kind, _ in _ADAPTERS):
        raise UnsupportedModelError(
            f'{type(detector).__name__} has no instance mask head mmdet-cam knows: the mask '
            'target explains the masks of instance segmentors')


def _is(module: nn.Module, kind: str) -> bool:
    return any(cls.__name__ == kind for cls in type(module).__mro__)


def attach(results: InstanceData, logits: Tensor, boxes: Tensor, threshold: float) -> None:
    """Set :data:`MASK_FIELDS` on ``results`` (``logits``: ``[N, h, w]``, ``boxes``: ``[N, 4]``
    in the logits' pixels)."""
    results.mask_logits = logits
    results.mask_boxes = boxes.detach().float().reshape(-1, 4)
    results.mask_thresholds = logits.new_full((len(logits),), float(threshold)).detach()


def _attach_empty(results: InstanceData) -> None:
    """:data:`MASK_FIELDS` of no detections, so that readers of candidates find them."""
    attach(results, torch.zeros((0, 1, 1)), torch.zeros((0, 4)), 0.0)


def _logit(probability: float) -> float:
    probability = min(max(float(probability), 1e-6), 1 - 1e-6)
    return math.log(probability / (1 - probability))


def _as_logits(probabilities: Tensor) -> Tensor:
    return torch.logit(probabilities, eps=1e-6)


def _whole_map_boxes(logits: Tensor) -> Tensor:
    height, width = logits.shape[-2:]
    return logits.new_tensor([0, 0, width, height]).expand(len(logits), 4)


def _fcn_mask_head(head: nn.Module, stack: contextlib.ExitStack) -> None:
    """RoI mask heads: ``predict_by_feat`` gets each RoI's ``[C, h, w]`` logits (the mean
    probability of the stages with ``activate_map``); the detection's class channel is its map,
    which covers exactly its box."""
    predict_by_feat = head.predict_by_feat

    def recording(mask_preds, results_list, batch_img_metas, rcnn_test_cfg, rescale=False,
                  activate_map=False):
        labels = [results.labels for results in results_list]
        results_list = predict_by_feat(mask_preds, results_list, batch_img_metas, rcnn_test_cfg,
                                       rescale=rescale, activate_map=activate_map)
        for preds, own_labels, results in zip(mask_preds, labels, results_list):
            if not len(results):
                continue
            maps = (preds[torch.arange(len(preds)), own_labels] if preds.shape[1] > 1
                    else preds[:, 0])
            maps = _as_logits(maps) if activate_map else maps
            attach(results, maps, _whole_map_boxes(maps), _logit(rcnn_test_cfg.mask_thr_binary))
        return results_list

    stack.enter_context(swapped(head, 'predict_by_feat', recording))


class _FirstInterpolation(TorchFunctionMode):
    """Records the input of the first ``F.interpolate`` call while active: the heads below
    resize their per-detection maps first thing after making them."""

    def __init__(self):
        super().__init__()
        self.input: Optional[Tensor] = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.interpolate and self.input is None:
            self.input = args[0] if args else kwargs['input']
        return func(*args, **(kwargs or {}))


def _rtmdet_ins_head(head: nn.Module, stack: contextlib.ExitStack) -> None:
    """RTMDet-Ins draws its masks in its box head after NMS: ``[N, h, w]`` logits of the
    padded input at the first level's stride, resized from there."""
    post_process = head._bbox_mask_post_process
    stride = head.prior_generator.strides[0][0]

    def recording(results, mask_feat, cfg, rescale=False, with_nms=True, img_meta=None):
        with _FirstInterpolation() as first:
            results = post_process(results, mask_feat, cfg, rescale=rescale, with_nms=with_nms,
                                   img_meta=img_meta)
        if first.input is None:  # no detections
            return results
        height, width = img_meta['img_shape'][:2]
        logits = first.input[0][:, :math.ceil(height / stride), :math.ceil(width / stride)]
        scale = _input_scale(results.bboxes, img_meta, rescale)
        attach(results, logits, results.bboxes * scale / stride, _logit(cfg.mask_thr_binary))
        return results

    stack.enter_context(swapped(head, '_bbox_mask_post_process', recording))


def _input_scale(bboxes: Tensor, img_meta: dict, rescaled: bool) -> Tensor:
    """Factor from ``bboxes``' pixels to the network input's."""
    if not rescaled:
        return bboxes.new_ones(4)
    return bboxes.new_tensor(img_meta['scale_factor'][:2]).repeat(2)


def _maps_in_call_head(probabilities: bool):
    """CondInst / BoxInst (logits) and YOLACT's protonet (probabilities of prototypes x
    coefficients, zero outside the box): ``predict_by_feat`` hands each image's detections'
    maps (of the padded input, at the mask stride) and their boxes (input pixels) to
    ``_predict_by_feat_single``, which resizes and thresholds them."""
    def adapter(head: nn.Module, stack: contextlib.ExitStack) -> None:
        single = head._predict_by_feat_single
        recorded: List[tuple] = []

        def recording(mask_preds, bboxes, img_meta, rescale, cfg=None):
            logits, scale = _image_part(mask_preds, img_meta, probabilities)
            recorded.append((logits, bboxes.detach().clone() * scale,
                             (cfg or head.test_cfg).mask_thr))
            return single(mask_preds, bboxes, img_meta, rescale, cfg)

        predict_by_feat = head.predict_by_feat

        def attaching(*args, **kwargs):
            recorded.clear()
            results_list = predict_by_feat(*args, **kwargs)
            filled = [results for results in results_list if len(results)]
            for results, (logits, boxes, threshold) in zip(filled, recorded):
                attach(results, logits, boxes, _logit(threshold))
            return results_list

        stack.enter_context(swapped(head, '_predict_by_feat_single', recording))
        stack.enter_context(swapped(head, 'predict_by_feat', attaching))
    return adapter


def _image_part(mask_preds: Tensor, img_meta: dict, probabilities: bool):
    """The image's part of ``[N, h, w]`` maps of the padded input, as logits, and the factor
    from input pixels to the maps' pixels."""
    scale = mask_preds.shape[-1] / img_meta['batch_input_shape'][1]
    height, width = img_meta['img_shape'][:2]
    maps = mask_preds[:, :math.ceil(height * scale), :math.ceil(width * scale)]
    return (_as_logits(maps) if probabilities else maps), scale


def _solo_head(head: nn.Module, stack: contextlib.ExitStack) -> None:
    """SOLO / SOLOv2: ``_predict_by_feat_single`` makes the kept detections' mask
    probabilities at stride 4 of the padded input and resizes them first thing; SOLO reports
    all-zero boxes, so a detection's box is that of its thresholded map (``mask_boxes``) and
    of its reported mask (``bboxes``, as mmdet's ``mask2bbox``)."""
    from mmdet.structures.mask import mask2bbox
    single = head._predict_by_feat_single

    def recording(*args, **kwargs):
        with _FirstInterpolation() as first:
            results = single(*args, **kwargs)
        if first.input is not None and len(results):
            logits = _as_logits(first.input[0])
            threshold = _logit(head.test_cfg.mask_thr)
            attach(results, logits, _boxes_of(logits > threshold), threshold)
            if 'masks' in results and not results.bboxes.any():  # mmdet's are all zero
                results.bboxes = mask2bbox(results.masks).to(results.bboxes)
        elif not len(results):
            _attach_empty(results)
        return results

    stack.enter_context(swapped(head, '_predict_by_feat_single', recording))


def _maskformer_fusion_head(head: nn.Module, stack: contextlib.ExitStack) -> None:
    """MaskFormer / Mask2Former: ``instance_postprocess`` picks the top (query, class) pairs
    and thresholds their queries' logits (resized to the image already) at 0; the boxes are
    their masks'."""
    postprocess = head.instance_postprocess

    def recording(mask_cls, mask_pred):
        with _Thresholded() as thresholded:
            results = postprocess(mask_cls, mask_pred)
        if thresholded.input is not None and len(results):
            attach(results, thresholded.input, results.bboxes, 0.0)
        elif not len(results):
            _attach_empty(results)
        return results

    stack.enter_context(swapped(head, 'instance_postprocess', recording))


class _Thresholded(TorchFunctionMode):
    """Records the last 3-D float tensor compared with ``>`` while active."""

    def __init__(self):
        super().__init__()
        self.input: Optional[Tensor] = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (getattr(func, '__name__', '') in ('gt', '__gt__') and isinstance(args[0], Tensor)
                and args[0].dim() == 3 and args[0].is_floating_point()):
            self.input = args[0]
        return func(*args, **(kwargs or {}))


def _boxes_of(masks: Tensor) -> Tensor:
    """``[N, 4]`` boxes of boolean ``[N, h, w]`` masks (the whole map for an empty one)."""
    boxes = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append([0, 0, mask.shape[1], mask.shape[0]] if not len(xs) else
                     [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1])
    return masks.new_tensor(boxes, dtype=torch.float32).reshape(-1, 4)


# (class name anywhere in the module's MRO, adapter); no mmdet head matches two of them
_ADAPTERS = (
    ('FCNMaskHead', _fcn_mask_head),
    ('RTMDetInsHead', _rtmdet_ins_head),
    ('CondInstMaskHead', _maps_in_call_head(probabilities=False)),
    ('SOLOHead', _solo_head),
    ('YOLACTProtonet', _maps_in_call_head(probabilities=True)),
    ('MaskFormerFusionHead', _maskformer_fusion_head),
)
