"""A detector's raw candidates, scored for images: for batches of images
(:class:`CandidateScorer`), for one image under many masks (:class:`MaskedCandidates`, D-RISE),
and for the re-runs of pytorch_grad_cam's perturbation methods (:class:`RawCandidatesModel`,
with :class:`TrackedDetection` and :class:`TrackedMask` as the targets that follow each
detection, or its mask, among them).

All run under :func:`~mmdet_cam.engine.every_candidate.every_candidate`; the tracked score of
a detection among the candidates is ``mmdet_cam.boxes.tracked_score``.
"""
import contextlib
import copy
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from mmengine.structures import InstanceData
from torch import Tensor, nn

from ..boxes import tracked_mask_score, tracked_score
from ..model.detector import preprocess
from ..model.layers import predicting_detector
from .every_candidate import every_candidate
from .geometry import resized_image_size
from .memory import copies_within, held_bytes


class CandidateScorer:
    """Raw candidates of ``model`` for lists of BGR images (``pipeline``: the model's test
    pipeline, e.g. ``DetCAM.pipeline``), in original-image pixels. With ``dtype``
    (``torch.bfloat16``, ``torch.float16``) the detector runs under autocast at that precision
    (candidates come back in float32). With ``masks``, each candidate also carries its unpasted
    mask logits (``mask_logits.MASK_FIELDS``; every instance family but QueryInst)."""

    def __init__(self, model: nn.Module, pipeline, batch_size: int = 8,
                 dtype: Optional[torch.dtype] = None, masks: bool = False):
        self.model, self.pipeline, self.batch_size = model, pipeline, batch_size
        self.masks = masks
        self.dtype = None if dtype == torch.float32 else dtype
        self.channels_last: Optional[bool] = None  # known after the first batch
        self.copy_bytes: Optional[int] = None  # one image's candidates, as last measured

    def __call__(self, images: Sequence[np.ndarray]) -> List[InstanceData]:
        return list(self.in_budget(images, lambda chunk: self.candidates(
            *preprocess(self.model, self.pipeline, chunk))))

    def in_budget(self, items: Sequence, run: Callable) -> Iterator[InstanceData]:
        """``run`` (a chunk of ``items`` -> their candidates) over ``items``, one item's
        candidates at a time: the first item alone, its candidates measured (``copy_bytes``),
        then as many per forward as the memory budget holds (``engine.memory``; at most
        ``batch_size``). One item whose candidates exceed the budget is refused before the
        next. The chunks depend on ``items`` only, not on earlier calls: batch composition
        changes a detector's numbers in the last bits, and a resumed run must give the same."""
        first, step = 0, 1
        while first < len(items):
            chunk = items[first:first + step]
            results = run(chunk)
            if first == 0 and results:
                self.copy_bytes = max(held_bytes(r) for r in results)
                step = copies_within(self.copy_bytes, self.batch_size, _what(self.masks))
            first += len(chunk)
            yield from results

    def candidates(self, inputs: Tensor, samples: list) -> List[InstanceData]:
        """Raw candidates for a batch of network inputs and their data samples."""
        precision = (torch.autocast(inputs.device.type, dtype=self.dtype) if self.dtype
                     else contextlib.nullcontext())
        with torch.no_grad(), every_candidate(self.model, masks=self.masks), precision:
            if self.channels_last is None:
                self.channels_last = self._same_in_channels_last(inputs[:1], samples[:1])
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            return [_float32(s.pred_instances.cpu())
                    for s in self.model.predict(inputs, samples)]

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


def _what(masks: bool) -> str:
    return "one image's raw candidates" + (' and their masks' * masks)


def _float32(instances: InstanceData) -> InstanceData:
    for key, value in instances.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            instances[key] = value.float()
    return instances


class MaskedCandidates:
    """Raw candidates of one BGR image under masks: ``self(masks)`` takes ``[B, h, w]`` masks
    in [0, 1] of ``self.size``, the size the test pipeline resizes the image to, and gives per
    mask the candidates (original-image pixels) of the image with its pixels multiplied by the
    mask, as the data preprocessor receives them (padding left as it is). The pipeline runs
    once, not once per mask, and nothing is made at the original image's size.
    ``self.perturbed(images)`` takes the perturbed copies themselves (``[B, 3, h, w]``, copies
    of ``self.resized``)."""

    def __init__(self, scorer: CandidateScorer, image: np.ndarray):
        data = scorer.pipeline(dict(img=image, img_id=0))
        self.scorer, self.image, self.sample = scorer, data['inputs'], data['data_samples']
        self.size = resized_image_size(self.sample.metainfo)

    @property
    def resized(self) -> Tensor:
        """The image as the test pipeline resized it: ``[3, h, w]`` float32."""
        height, width = self.size
        return self.image[:, :height, :width].float()

    def __call__(self, masks: np.ndarray) -> Iterator[InstanceData]:
        return self.perturbed(self.resized * torch.from_numpy(masks)[:, None])

    def perturbed(self, images: Tensor) -> Iterator[InstanceData]:
        """Candidates of ``[B, 3, h, w]`` perturbed copies of :attr:`resized`, one copy at a
        time, from forwards of as many copies as the memory budget holds."""
        height, width = self.size

        def run(chunk: Tensor) -> List[InstanceData]:
            padded = self.image.float().repeat(len(chunk), 1, 1, 1)
            padded[:, :, :height, :width] = chunk
            batch = self.scorer.model.data_preprocessor(dict(  # a list, as a data loader gives
                inputs=list(padded), data_samples=[copy.deepcopy(self.sample) for _ in chunk]),
                False)
            return self.scorer.candidates(batch['inputs'], batch['data_samples'])
        return self.scorer.in_budget(images, run)


class RawCandidatesModel(nn.Module):
    """The detector as a pytorch_grad_cam model for methods that re-run it: a batch of network
    inputs of one image (same size, same ``data_sample``) in, per input its raw candidates
    (no score threshold, no NMS; original-image pixels, CPU, no gradients; with ``masks``, their
    unpasted masks) out."""

    def __init__(self, detector: nn.Module, data_sample, masks: bool = False):
        super().__init__()
        self.detector, self.data_sample, self.masks = detector, data_sample, masks
        self.copy_bytes: Optional[int] = None  # one copy's candidates, after the first run

    def forward(self, inputs: Tensor, copies: Optional[int] = None) -> List[InstanceData]:
        samples = [copy.deepcopy(self.data_sample) for _ in range(copies or len(inputs))]
        with torch.no_grad(), every_candidate(self.detector, masks=self.masks):
            results = [s.pred_instances.cpu() for s in self.detector.predict(inputs, samples)]
        if self.copy_bytes is None and results:
            self.copy_bytes = max(held_bytes(r) for r in results)
            self.step(1)  # one copy over the budget is refused before the next
        return results

    def step(self, wanted: int) -> int:
        """Copies per re-run: up to ``wanted``, as many as the memory budget holds (1 until
        one copy's candidates are measured)."""
        if self.copy_bytes is None:
            return 1
        return copies_within(self.copy_bytes, wanted, _what(self.masks))

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
    ``mmdet_cam.boxes.tracked_score``, as D-RISE and the deletion metric follow it)."""

    def __init__(self, bbox, label: int):
        self.bbox = torch.as_tensor(bbox, dtype=torch.float32).reshape(1, 4)
        self.label = int(label)

    def __call__(self, candidates: InstanceData) -> Tensor:
        return torch.tensor(tracked_score(candidates.bboxes, candidates.scores,
                                          candidates.labels, self.bbox[0], self.label))


class TrackedMask:
    """:class:`TrackedDetection` for a detection's mask (boolean, original-image pixels):
    followed by its best mask IoU x probability of ``label`` among the candidates'
    unpasted masks (``mmdet_cam.boxes.tracked_mask_score``)."""

    def __init__(self, mask, label: int):
        self.mask, self.label = np.asarray(mask, bool), int(label)

    def __call__(self, candidates: InstanceData) -> Tensor:
        return torch.tensor(tracked_mask_score(candidates, self.mask, self.label))
