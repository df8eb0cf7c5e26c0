"""One forward pass that keeps what per-detection gradients need.

* :func:`differentiable_inference` undoes mmdet's inference-time ``detach`` of head outputs,
  so a reported score stays connected to the exact prediction that produced it (NMS only
  gathers).
* :func:`frozen_parameters` stops autograd from tracking weights: only activations need
  gradients, so the backward pass of each detection touches the head alone.
* :class:`LayerCapture` turns every output of the target layers into a gradient leaf, which
  cuts the graph there (the backbone below it is never back-propagated).
* :class:`DenseHeadOutputs` records a one-stage head's raw outputs, through which
  :func:`grads_for` back-propagates only the head branches and pyramid levels a detection
  came from.
"""
import contextlib
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError


@contextlib.contextmanager
def differentiable_inference() -> Iterator[None]:
    """Make mmdet's ``select_single_mlvl(..., detach=True)`` keep the graph while active.

    Heads import the function by name, so it is swapped in every loaded mmdet module that
    holds it (no mmdet file is edited) and restored on exit.
    """
    from mmdet.models.utils import misc
    original = misc.select_single_mlvl

    def keep_graph(mlvl_tensors, batch_id, detach=True):
        return original(mlvl_tensors, batch_id, detach=False)

    holders = [module for name, module in list(sys.modules.items())
               if name.split('.')[0] == 'mmdet'
               and getattr(module, 'select_single_mlvl', None) is original]
    for module in holders:
        module.select_single_mlvl = keep_graph
    try:
        yield
    finally:
        for module in holders:
            module.select_single_mlvl = original


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
            if isinstance(output, (tuple, list)) and output and all(
                    isinstance(o, Tensor) for o in output):
                return type(output)(self._record(index, o) for o in output)
            raise UnsupportedModelError(
                f'layer {self.names[index]!r} returns {type(output).__name__}, not a tensor '
                'or a tuple/list of tensors: choose another target layer')
        return hook

    def _record(self, index: int, output: Tensor) -> Tensor:
        # Below the first target layer nothing requires grad (weights are frozen), so the
        # output becomes a fresh leaf: the graph is cut here. A layer downstream of another
        # target layer is already in the graph and is recorded as it is. The clone keeps
        # in-place ops of the consumer (e.g. ``out += identity``) off the recorded tensor.
        if not output.requires_grad:
            output = output.detach().requires_grad_()
        self.activations.append(output)
        self.owners.append(index)
        return output.clone()


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

    def _hook(self, module, inputs, output):
        def tensors(value):
            if isinstance(value, Tensor):
                return [value] if value.requires_grad else []
            if isinstance(value, (tuple, list)):
                return [t for item in value for t in tensors(item)]
            return []
        self.tensors = tensors(output)


def grads_for(value: Tensor, activations: Sequence[Tensor],
              through: Sequence[Tensor] = ()) -> List[Tensor]:
    """Gradients of a scalar w.r.t. each activation (zeros where it does not depend on it).

    ``through``: tensors that every path from the activations to ``value`` passes (a dense
    head's outputs). The backward then stops there first and goes on only from those that
    ``value`` depends on, skipping the head branches and levels that did not produce it
    (RetinaNet-R50, 800x1088: 0.64 s instead of 0.94 s per box); the result is the same.
    """
    if through:
        partial = torch.autograd.grad(value, through, retain_graph=True, allow_unused=True)
        used = [(t, g) for t, g in zip(through, partial) if g is not None and bool(g.any())]
        if not used:
            return [torch.zeros_like(a) for a in activations]
        grads = torch.autograd.grad([t for t, _ in used], activations,
                                    grad_outputs=[g for _, g in used], retain_graph=True,
                                    allow_unused=True)
    else:
        grads = torch.autograd.grad(value, activations, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(a) if g is None else g for g, a in zip(grads, activations)]
