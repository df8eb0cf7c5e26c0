"""A detector's raw candidates: scored for batches of images, and held fixed across models.

:class:`CandidateScorer` runs the detector with its final head's score threshold removed, NMS
made a no-op (IoU threshold 1, where the NMS kernel only sorts) and the per-image cap lifted,
so every (candidate, class) pair it scores comes back;
``mmdet_cam.metrics.faithfulness.tracker`` turns that into the tracked score of one detection
in perturbed images.

:class:`MaskedCandidates` scores them for one image under many masks (D-RISE).

:class:`NamedBoxes` explains the candidates that best match boxes a user names, whatever
they score. :class:`FixedCandidates` explains the *same* raw candidates in a model whose
weights were changed (the sanity check's randomised copies), whatever they score there.

:class:`RawCandidatesModel` and :class:`TrackedDetection` are the model and the target that
pytorch_grad_cam's perturbation methods (ScoreCAM, AblationCAM) re-run per batch: network
inputs of one image in, raw candidates out, each detection followed by its tracked score.
"""
import contextlib
import copy
import importlib
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from mmengine.structures import InstanceData
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from ..model.detector import preprocess
from ..model.layers import predicting_detector
from .geometry import resized_image_size


@contextlib.contextmanager
def every_candidate(model: nn.Module, cap: int = 100000) -> Iterator[None]:
    """While active, the final head of ``model`` reports all of its candidates (boxes,
    scores and labels; no masks, see :func:`_masks_off`)."""
    detector = predicting_detector(model)
    head = getattr(detector, 'roi_head', None) or getattr(detector, 'bbox_head', None)
    original = getattr(head, 'test_cfg', None)
    with _masks_off(detector):
        if not isinstance(original, dict):
            yield
            return
        opened = copy.deepcopy(original)
        _open(opened, _candidate_count(detector, head, cap))
        head.test_cfg = opened
        with _nms_that_keeps_all():
            try:
                yield
            finally:
                head.test_cfg = original


@contextlib.contextmanager
def _masks_off(detector: nn.Module) -> Iterator[None]:
    """While active, mask branches that only draw masks are switched off: for thousands of
    candidates they cost more than everything else (a mask per candidate, pasted at the
    original image's size: Mask R-CNN ran out of memory) and nothing that reads every
    candidate needs masks. Heads that rescore detections from their masks (Mask Scoring
    R-CNN's ``mask_iou_head``) and detectors whose boxes come from their masks (SOLO: no box
    head) keep theirs."""
    from mmdet.models.detectors.single_stage_instance_seg import \
        SingleStageInstanceSegmentor  # here: importing mmdet.models costs seconds
    roi_head = getattr(detector, 'roi_head', None)
    swaps = []  # (owner, stand-in) pairs: ``owner.mask_head`` is replaced while active
    if (getattr(roi_head, 'mask_head', None) is not None
            and getattr(roi_head, 'mask_iou_head', None) is None):
        swaps.append((roi_head, None))  # ``with_mask`` turns False: mmdet's box-only path
    if isinstance(detector, SingleStageInstanceSegmentor) and detector.with_bbox:
        swaps.append((detector, _RescaledBoxesOnly()))  # CondInst, BoxInst, YOLACT
    originals = [owner.mask_head for owner, _ in swaps]
    for owner, stand_in in swaps:
        owner.mask_head = stand_in
    try:
        yield
    finally:
        for (owner, _), original in zip(swaps, originals):
            owner.mask_head = original


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

    nms_module.ext_module = SortingKernels()
    try:
        yield
    finally:
        nms_module.ext_module = kernels


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
    """``cap``, or for DETR-style heads, which take the top ``max_per_img`` of their
    (query, class) scores, how many there are: every pair for sigmoid classifiers, one per
    query for softmax ones."""
    queries = getattr(detector, 'num_queries', None)
    if not isinstance(queries, int):
        return cap
    sigmoid = getattr(getattr(head, 'loss_cls', None), 'use_sigmoid', False)
    return min(cap, queries * head.num_classes if sigmoid else queries)


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


class CandidateScorer:
    """Raw candidates of ``model`` for lists of BGR images (``pipeline``: the model's test
    pipeline, e.g. ``DetCAM.pipeline``), in original-image pixels."""

    def __init__(self, model: nn.Module, pipeline, batch_size: int = 8):
        self.model, self.pipeline, self.batch_size = model, pipeline, batch_size
        self.channels_last: Optional[bool] = None  # known after the first batch

    def __call__(self, images: Sequence[np.ndarray]) -> List[InstanceData]:
        results = []
        for first in range(0, len(images), self.batch_size):
            chunk = images[first:first + self.batch_size]
            results += self.candidates(*preprocess(self.model, self.pipeline, chunk))
        return results

    def candidates(self, inputs: Tensor, samples: list) -> List[InstanceData]:
        """Raw candidates for a batch of network inputs and their data samples."""
        with torch.no_grad(), every_candidate(self.model):
            if self.channels_last is None:
                self.channels_last = self._same_in_channels_last(inputs[:1], samples[:1])
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            return [s.pred_instances.cpu() for s in self.model.predict(inputs, samples)]

    def _same_in_channels_last(self, inputs: Tensor, samples: list) -> bool:
        """Whether the model gives the same candidates for a channels-last input. Most do, to
        rounding, with convolutions 1.2-1.4x faster on CPU; some fail (a module that ``view``s
        its features) and some mmcv kernels read such memory wrongly (``RoIAlign``: every
        two-stage detector); those run on the plain layout."""
        plain = self.model.predict(inputs, copy.deepcopy(samples))[0].pred_instances
        try:
            fast = self.model.predict(inputs.contiguous(memory_format=torch.channels_last),
                                      copy.deepcopy(samples))[0].pred_instances
        except RuntimeError:
            return False
        return len(fast) == len(plain) and torch.allclose(
            fast.scores.sort().values, plain.scores.sort().values, rtol=1e-4, atol=1e-7)


class MaskedCandidates:
    """Raw candidates of one BGR image under masks: ``self(masks)`` takes ``[B, h, w]`` masks
    in [0, 1] of ``self.size``, the size the test pipeline resizes the image to, and gives per
    mask the candidates (original-image pixels) of the image with its pixels multiplied by the
    mask, as the data preprocessor receives them (padding left as it is). The pipeline runs
    once, not once per mask, and nothing is made at the original image's size."""

    def __init__(self, scorer: CandidateScorer, image: np.ndarray):
        data = scorer.pipeline(dict(img=image, img_id=0))
        self.scorer, self.image, self.sample = scorer, data['inputs'], data['data_samples']
        self.size = resized_image_size(self.sample.metainfo)

    def __call__(self, masks: np.ndarray) -> List[InstanceData]:
        height, width = self.size
        results = []
        for first in range(0, len(masks), self.scorer.batch_size):
            chunk = torch.from_numpy(masks[first:first + self.scorer.batch_size])
            images = self.image.float().repeat(len(chunk), 1, 1, 1)
            images[:, :, :height, :width] *= chunk[:, None]
            batch = self.scorer.model.data_preprocessor(dict(  # a list, as a data loader gives
                inputs=list(images), data_samples=[copy.deepcopy(self.sample) for _ in chunk]),
                False)
            results += self.scorer.candidates(batch['inputs'], batch['data_samples'])
        return results


class FixedCandidates:
    """The raw candidates behind some detections, as fixed functions of the box heads' raw
    outputs; a ``candidates`` argument of :func:`~mmdet_cam.engine.explain.explain`.

    The first call (with the original model) explains the detections that ``select`` picks,
    with their ``target`` values, and records for each the gradient ``w`` of its value with
    respect to the raw head outputs ``T``. Later calls (with models of changed weights, same
    image) explain ``sum(w * T')``: the same candidates (same raw positions, same weights),
    whatever the new model scores them. Its gradient w.r.t. the features equals the original
    value's at the original weights (chain rule), so the maps of both calls compare like
    with like.
    """

    def __init__(self, target: Callable, select: Callable):
        self.target, self.select = target, select
        self.weights: Optional[List[List[Tensor]]] = None
        self.detections: Optional[InstanceData] = None

    def __call__(self, pred: InstanceData, head_outputs: List[Tensor]):
        if not head_outputs:
            raise UnsupportedModelError(
                'no raw box-head outputs were recorded (no module named bbox_head ran): the '
                'candidates of this detector cannot be held fixed')
        if self.weights is None:
            keep = self.select(pred)
            values = self.target(pred)[keep]
            self.weights = [self._gradient(value, head_outputs) for value in values]
            self.detections = pred[keep]
            return values, self.detections
        shapes = [tuple(t.shape) for t in head_outputs]
        expected = [tuple(w.shape) for w in self.weights[0]] if self.weights else shapes
        if shapes != expected:
            raise UnsupportedModelError(
                'the raw candidates changed in number with the new weights (the head now '
                f'returns tensors of shapes {shapes}), so they cannot be held fixed')
        values = [sum((w * t).sum() for w, t in zip(weights, head_outputs))
                  for weights in self.weights]
        return (torch.stack(values) if values else torch.zeros(0)), self.detections

    @staticmethod
    def _gradient(value: Tensor, head_outputs: List[Tensor]) -> List[Tensor]:
        grads = torch.autograd.grad(value, head_outputs, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(t) if g is None else g.detach()
                for g, t in zip(grads, head_outputs)]


def pinned_proposals(model: nn.Module, store: dict):
    """While active, a two-stage detector's RPN returns the proposals it returned the first
    time (recorded in ``store``), so its RoI head sees the same RoIs whatever its weights."""
    def pinned(predict):
        def first_proposals(*args, **kwargs):
            if 'proposals' not in store:
                store['proposals'] = [r.detach() for r in predict(*args, **kwargs)]
            return copy.deepcopy(store['proposals'])
        return first_proposals
    return _rpn_predict_wrapped(model, pinned)


def added_proposals(model: nn.Module, boxes: Tensor):
    """While active, a two-stage detector's RPN also proposes ``boxes`` (``[N, 4]``,
    network-input pixels), so its RoI head scores exactly those regions: a box a user names
    becomes a RoI of its own. Other detectors are left as they are."""
    def with_boxes(predict):
        def proposals_and_boxes(*args, **kwargs):
            results = []
            for proposals in predict(*args, **kwargs):
                named = InstanceData(metainfo=proposals.metainfo)
                for key, value in proposals.items():
                    named[key] = (boxes.to(value) if key == 'bboxes' else
                                  value.new_ones((len(boxes),) + value.shape[1:]))
                results.append(InstanceData.cat([proposals, named]))
            return results
        return proposals_and_boxes
    return _rpn_predict_wrapped(model, with_boxes)


@contextlib.contextmanager
def _rpn_predict_wrapped(model: nn.Module, wrap: Callable) -> Iterator[None]:
    """While active, a two-stage detector's ``rpn_head.predict`` is ``wrap(predict)``."""
    rpn_head = getattr(predicting_detector(model), 'rpn_head', None)
    if rpn_head is None:
        yield
        return
    rpn_head.predict = wrap(rpn_head.predict)  # an instance attribute shadows the method
    try:
        yield
    finally:
        del rpn_head.predict


class NamedBoxes:
    """The raw candidates that best match boxes a user names (a ground-truth box, a box drawn
    by hand): a ``candidates`` argument of :func:`~mmdet_cam.engine.explain.explain`, run
    under :func:`every_candidate` so that no score threshold or NMS hides a weak candidate
    (and under :func:`added_proposals` for two-stage detectors, so each named box is a RoI).

    For each named box (original-image pixels) the candidate with the highest IoU x
    probability of the named class (of any class where the label is None) is explained, for
    that class. The explained detections carry ``named_bboxes`` and ``ious`` (the candidate's
    IoU with its named box): "what the model thought here". With ``by_iou`` the candidate
    with the highest IoU is taken whatever its score: given a detection's own box, that is the
    same candidate's score for another class (exactly so where box regression does not depend
    on the class: the same box comes back for every class). With ``versus`` (one class per
    box) the value explained is the candidate's score for its class *minus* its score for
    that class, matched the same way: the evidence for one class over the other
    (``versus_labels`` and ``versus_scores`` are recorded).
    """

    def __init__(self, bboxes, labels: Sequence[Optional[int]], by_iou: bool = False,
                 versus: Optional[Sequence[int]] = None):
        self.bboxes = torch.as_tensor(bboxes, dtype=torch.float32).reshape(-1, 4)
        self.labels, self.by_iou = list(labels), by_iou
        self.versus = None if versus is None else list(versus)

    def __call__(self, pred: InstanceData, head_outputs: List[Tensor]):
        from mmdet.structures.bbox import bbox_overlaps
        if not len(pred):
            raise UnsupportedModelError('the detector returned no candidates for this image')
        ious = bbox_overlaps(self.bboxes.to(pred.bboxes.device), pred.bboxes.detach())
        index = self._best(pred, ious, self.labels)
        detections = pred[index]
        detections.named_bboxes = self.bboxes.to(pred.bboxes.device)
        detections.ious = ious[torch.arange(len(index)), index]
        values = pred.scores[index]
        if self.versus is not None:
            other = self._best(pred, ious, self.versus)
            detections.versus_labels = pred.labels[other]
            detections.versus_scores = pred.scores[other].detach()
            values = values - pred.scores[other]
        return values, detections

    def _best(self, pred: InstanceData, ious: Tensor, labels) -> Tensor:
        """Per named box, the index of its best candidate of the given label."""
        scores = pred.scores.detach()
        best = []
        for k, label in enumerate(labels):
            match = ious[k] + 1e-6 * scores if self.by_iou else ious[k] * scores
            if label is not None:
                if not bool((pred.labels == label).any()):
                    raise UnsupportedModelError(
                        f'the detector has no candidate of class {label} in this image (a '
                        "softmax classifier, as DETR's, reports only each candidate's top class)")
                match = torch.where(pred.labels == label, match, torch.full_like(match, -1))
            best.append(int(match.argmax()))
        return torch.as_tensor(best, device=pred.scores.device)


class RawCandidatesModel(nn.Module):
    """The detector as a pytorch_grad_cam model for methods that re-run it: a batch of network
    inputs of one image (same size, same ``data_sample``) in, per input its raw candidates
    (no score threshold, no NMS; original-image pixels, CPU, no gradients) out."""

    def __init__(self, detector: nn.Module, data_sample):
        super().__init__()
        self.detector, self.data_sample = detector, data_sample

    def forward(self, inputs: Tensor, copies: Optional[int] = None) -> List[InstanceData]:
        samples = [copy.deepcopy(self.data_sample) for _ in range(copies or len(inputs))]
        with torch.no_grad(), every_candidate(self.detector):
            return [s.pred_instances.cpu() for s in self.detector.predict(inputs, samples)]

    def with_layer_output(self, inputs: Tensor, layer: nn.Module, replace: Callable,
                          copies: int) -> List[InstanceData]:
        """Candidates of ``copies`` runs on ``inputs`` (one image) in which ``layer``'s output
        is replaced by ``replace(output)``, a batch of ``copies``. When ``layer`` is the
        detector's whole backbone or neck, what comes before it runs once, not ``copies``
        times (only the layer's outputs feed the rest of the detector)."""
        detector = predicting_detector(self.detector)
        once = any(layer is getattr(detector, part, None) for part in ('backbone', 'neck'))
        handle = layer.register_forward_hook(lambda module, args, output: replace(output))
        try:
            return self(inputs if once else inputs.expand(copies, *inputs.shape[1:]), copies)
        finally:
            handle.remove()


class TrackedDetection:
    """A pytorch_grad_cam target for models that are re-run on perturbed inputs: the detection
    ``(bbox, label)`` (original-image pixels) followed among one image's raw candidates by
    its tracked score, the best IoU x probability of ``label`` (the smooth form of
    ``metrics.faithfulness.tracked_score``, as D-RISE and the deletion metric follow it)."""

    def __init__(self, bbox, label: int):
        self.bbox = torch.as_tensor(bbox, dtype=torch.float32).reshape(1, 4)
        self.label = int(label)

    def __call__(self, candidates: InstanceData) -> Tensor:
        from mmdet.structures.bbox import bbox_overlaps
        same = candidates.labels == self.label
        if not bool(same.any()):
            return torch.zeros(())
        ious = bbox_overlaps(self.bbox, candidates.bboxes[same].float())[0]
        return (ious * candidates.scores[same]).max()
