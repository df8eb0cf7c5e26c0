"""A detector whose final head reports every raw candidate: :func:`every_candidate` removes
the score threshold, makes NMS a no-op (IoU threshold 1, where the NMS kernel only sorts),
lifts the per-image cap and switches off mask branches that only draw masks, so every
(candidate, class) pair the head scores comes back. Heads that report only each candidate's
top class (YOLOX, DETR's softmax head) report its score for one asked class instead under
:func:`scores_of_class`."""
import contextlib
import copy
import importlib
import inspect
from typing import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..model.layers import predicting_detector
from ..patching import swapped
from .capture import bounded_solo_candidates
from .mask_logits import roi_masks_unpasted, rtmdet_ins_boxes_only, unpasted_candidate_masks


@contextlib.contextmanager
def every_candidate(model: nn.Module, cap: int = 100000, masks: bool = False) -> Iterator[None]:
    """While active, the final head of ``model`` reports all of its candidates (boxes,
    scores and labels; no masks, see :func:`_masks_off`; with ``masks``, each candidate's
    unpasted mask logits, see ``mask_logits.unpasted_candidate_masks``)."""
    detector = predicting_detector(model)
    head = getattr(detector, 'roi_head', None) or getattr(detector, 'bbox_head', None)
    original = getattr(head, 'test_cfg', None)
    with (unpasted_candidate_masks(detector) if masks else _masks_off(detector)), \
            bounded_solo_candidates(detector):
        if not isinstance(original, dict):
            yield
            return
        opened = copy.deepcopy(original)
        _open(opened, _candidate_count(detector, head, cap))
        with swapped(head, 'test_cfg', opened), _nms_that_keeps_all(), \
                _prompt_sized(head, opened, detector, cap):
            yield


@contextlib.contextmanager
def scores_of_class(model: nn.Module, label: int) -> Iterator[None]:
    """While active, a final head that keeps only each candidate's top class (a maximum over
    its ``num_classes`` class scores while it post-processes: YOLOX's sigmoid scores, DETR's
    softmax) reports each candidate's score for ``label`` instead, read from the same class
    scores: "why this class" for a candidate whose top class is another. Heads that report
    every (candidate, class) pair take no such maximum and are left as they are."""
    detector = predicting_detector(model)
    head = getattr(detector, 'bbox_head', None)
    classes = getattr(head, 'num_classes', None)
    if not isinstance(classes, int) or not 0 <= label < classes:
        yield
        return
    predict_by_feat = head.predict_by_feat

    def predict(*args, **kwargs):
        with _ClassInsteadOfTop(label, classes):
            return predict_by_feat(*args, **kwargs)
    with swapped(head, 'predict_by_feat', predict):
        yield


class _ClassInsteadOfTop(TorchFunctionMode):
    """While active in this thread, a maximum over a dimension of ``classes`` entries
    (``torch.max(x, dim)``, ``x.max(dim)``) returns the entries of class ``label`` and that
    label as its indices."""

    def __init__(self, label: int, classes: int):
        super().__init__()
        self.label, self.classes = label, classes

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.max, torch.Tensor.max):
            dim = args[1] if len(args) > 1 else kwargs.get('dim')
            scores = args[0]
            if isinstance(dim, int) and scores.dim() and scores.shape[dim] == self.classes:
                values = scores.select(dim, self.label)
                return torch.return_types.max(
                    (values, torch.full_like(values, self.label, dtype=torch.long)))
        return func(*args, **kwargs)


@contextlib.contextmanager
def _prompt_sized(head: nn.Module, opened: dict, detector: nn.Module,
                  cap: int) -> Iterator[None]:
    """A text-prompted DETR-style head (Grounding DINO) scores each query for the prompt's
    entities, not for its ``num_classes`` (the most tokens a prompt may have): its candidate
    count is set, on every call, from the entities the call's ``batch_token_positive_maps``
    hold (a larger top-k fails)."""
    queries = getattr(detector, 'num_queries', None)
    if 'batch_token_positive_maps' not in inspect.signature(
            getattr(head, 'predict_by_feat', lambda: None)).parameters or \
            not isinstance(queries, int):
        yield
        return
    predict_by_feat = head.predict_by_feat

    def sized(*args, batch_token_positive_maps=None, **kwargs):
        if batch_token_positive_maps and batch_token_positive_maps[0] is not None:
            opened['max_per_img'] = min(cap, queries * len(batch_token_positive_maps[0]))
        return predict_by_feat(*args, batch_token_positive_maps=batch_token_positive_maps,
                               **kwargs)
    with swapped(head, 'predict_by_feat', sized):
        yield


@contextlib.contextmanager
def _masks_off(detector: nn.Module) -> Iterator[None]:
    """While active, mask branches that only draw masks are switched off: for thousands of
    candidates they cost more than everything else (a mask per candidate, pasted at the
    original image's size: Mask R-CNN ran out of memory) and nothing that reads every
    candidate needs masks. Detectors whose boxes come from their masks (SOLO: no box head)
    keep theirs. Mask Scoring R-CNN, whose scores come from its masks (``mask_iou_head``),
    runs its mask branch on its best-scored candidates only, in chunks, unpasted
    (``mask_logits.roi_masks_unpasted``). RTMDet-Ins draws its masks inside its box head,
    after NMS: it runs the box-only post-processing of mmdet's dense heads instead."""
    from mmdet.models.dense_heads import RTMDetInsHead  # here: importing mmdet.models costs seconds
    from mmdet.models.detectors.single_stage_instance_seg import SingleStageInstanceSegmentor
    roi_head = getattr(detector, 'roi_head', None)
    with contextlib.ExitStack() as stack:
        if getattr(roi_head, 'mask_head', None) is not None:
            if getattr(roi_head, 'mask_iou_head', None) is not None:
                stack.enter_context(roi_masks_unpasted(roi_head))
            else:  # ``with_mask`` turns False: mmdet's box-only path
                stack.enter_context(swapped(roi_head, 'mask_head', None))
        if isinstance(detector, SingleStageInstanceSegmentor) and detector.with_bbox:
            # CondInst, BoxInst, YOLACT
            stack.enter_context(swapped(detector, 'mask_head', _RescaledBoxesOnly()))
        head = getattr(detector, 'bbox_head', None)
        if isinstance(head, RTMDetInsHead):
            stack.enter_context(swapped(head, '_bbox_mask_post_process',
                                        rtmdet_ins_boxes_only(head)))
        yield


@contextlib.contextmanager
def _nms_that_keeps_all() -> Iterator[None]:
    """While active, mmcv's NMS kernel at an IoU threshold >= 1 (which never suppresses a
    box) only sorts the boxes by score, as the kernel returns them, instead of computing
    every pairwise overlap: for thousands of candidates that costs as much as the head."""
    nms_module = importlib.import_module('mmcv.ops.nms')  # mmcv.ops.nms is also a function
    kernels = nms_module.ext_module

    class SortingKernels:
        def __getattr__(self, name):
            return getattr(kernels, name)

        @staticmethod
        def nms(bboxes, scores, iou_threshold, offset):
            if iou_threshold >= 1:
                return scores.argsort(descending=True)
            return kernels.nms(bboxes, scores, iou_threshold=iou_threshold, offset=offset)

    with swapped(nms_module, 'ext_module', SortingKernels()):
        yield


class _RescaledBoxesOnly(nn.Module):
    """A single-stage instance segmentor's mask head that draws no masks. mmdet's box head
    leaves the rescaling of its boxes to the mask head when there is one; this does only
    that, as the mask heads do (boxes divided by the pipeline's scale factor)."""

    def predict(self, x, batch_data_samples, rescale: bool = True, results_list=None,
                **kwargs):
        if rescale:
            for results, sample in zip(results_list, batch_data_samples):
                scale = results.bboxes.new_tensor(sample.metainfo['scale_factor'])
                results.bboxes = results.bboxes / scale.repeat((1, 2))
        return results_list


def _candidate_count(detector: nn.Module, head: nn.Module, cap: int) -> int:
    """``cap``, or for DETR-style heads and Sparse R-CNN / QueryInst (a learned proposal per
    query), which take the top ``max_per_img`` of their (query, class) scores, how many there
    are: every pair for sigmoid classifiers, one per query for softmax ones."""
    queries = getattr(detector, 'num_queries', None)
    classifier = head
    if not isinstance(queries, int):
        queries = getattr(getattr(detector, 'rpn_head', None), 'num_proposals', None)
        stages = getattr(head, 'bbox_head', None)
        classifier = stages[-1] if isinstance(stages, nn.ModuleList) else stages
    if not isinstance(queries, int) or classifier is None:
        return cap
    sigmoid = getattr(getattr(classifier, 'loss_cls', None), 'use_sigmoid', False)
    return min(cap, queries * classifier.num_classes if sigmoid else queries)


def _open(cfg: dict, cap: int) -> None:
    for key, value in cfg.items():
        if key == 'score_thr':
            cfg[key] = 0.0
        elif key in ('iou_threshold', 'iou_thr') and isinstance(value, float):
            cfg[key] = 1.0
        elif key == 'max_per_img':
            cfg[key] = cap
        elif isinstance(value, dict):
            _open(value, cap)
