"""Each box's gradients at the target layers' outputs, from one forward's graph.

:class:`Backward` back-propagates a box's value through a replay of the part of the box head
it depends on (``replay.py``, chosen by :func:`local_replay`), or through the whole graph with
a backward that stops at the head's outputs first; many boxes can share one batched pass.
"""
import warnings
from typing import List, Optional, Sequence

from torch import Tensor, nn

from .capture import (
    DenseHeadOutputs,
    LayerCapture,
    batched_grads_for,
    grads_for,
    token_attributions,
)
from .replay import DenseReplay, RoIReplay


class Backward:
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
                self.token_attributions[i] = token_attributions(box_grads[count:], self.tokens)
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


def local_replay(detector: nn.Module, dense: DenseHeadOutputs, rois: dict, capture: LayerCapture):
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
