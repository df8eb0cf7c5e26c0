"""Captured activations and per-box gradients turned into input-sized maps, one per layer
output (pyramid level), by a CAM method's ``get_cam_image`` (pytorch_grad_cam's formula).

:class:`LayerMaps` is the toolbox the method pipelines (``mmdet_cam.methods.pipelines``) share:
:meth:`~LayerMaps.gradients` gives a chunk of boxes their gradients, the layers none of them
reached and each box's own output per layer; :meth:`~LayerMaps.maps` fuses the method's maps
of those gradients; :meth:`~LayerMaps.shared` gives a gradient-free method's maps (the same
for every box); :meth:`~LayerMaps.cam` runs the formula on one output.
"""
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch
from pytorch_grad_cam.utils.image import scale_cam_image
from torch import Tensor

from .capture import LayerCapture
from .fusion import Fusion
from .gradients import Backward


@dataclass
class BoxTarget:
    """What a CAM method gets as ``targets`` for each map: the detection's box in
    network-input pixels and its label (the library's own methods ignore it)."""
    bbox: tuple
    label: int


@dataclass
class BoxGradients:
    """Gradients of some boxes (``boxes``) at every layer output.

    Attributes:
        pieces: per box, per output, ``[1, C, H, W]`` (after the reshape transform).
        reached: per output, the rows (indices into ``boxes``) with a non-zero gradient there.
        zero_layers: per box, the target layers none of whose outputs it reached.
        own: ``[K, layers]``: per box and target layer, its own output's index.
    """
    boxes: range
    pieces: List[List[Tensor]]
    reached: List[np.ndarray]
    zero_layers: List[List[str]]
    own: np.ndarray


class LayerMaps:
    """Per-output, input-sized maps of a method from one captured forward.

    Args:
        method: a CAM method (only ``get_cam_image`` is called).
        capture: the target layers' captured outputs.
        reshape: raw layer output -> list of ``[B, C, H, W]`` maps (``reshape.py``).
        feature_shapes: the neck's (or backbone's) output grids, for the reshape transform.
        inputs: the network input (its size is the maps').
        boxes: one :class:`BoxTarget` per explained box.
        backward: per-box gradients at the captured outputs.
        eigen_smooth: pytorch_grad_cam's first-principal-component smoothing.
    """

    def __init__(self, method, capture: LayerCapture, reshape, feature_shapes, inputs: Tensor,
                 boxes: Sequence[BoxTarget], backward: Backward, eigen_smooth: bool = False):
        self.method, self.capture, self.reshape = method, capture, reshape
        self.shapes, self.inputs, self.boxes, self.backward = (feature_shapes, inputs,
                                                                list(boxes), backward)
        self.eigen_smooth = eigen_smooth
        self.size = (inputs.shape[-1], inputs.shape[-2])  # (width, height)
        # [(owner layer index, activation [1, C, H, W] as numpy)] after the reshape transform
        self.outputs = [(owner, piece.detach().cpu().numpy())
                        for owner, act in zip(capture.owners, capture.activations)
                        for piece in self.reshape(act, feature_shapes)]
        owners = np.array([owner for owner, _ in self.outputs])
        self.owner_outputs = [np.flatnonzero(owners == o) for o in sorted(set(owners))]
        self._zero_maps_zero = {}
        self.non_finite: List[int] = []  # boxes whose gradient had NaN/inf (set to 0)

    def gradients(self, values: Tensor, boxes: range) -> BoxGradients:
        """The gradients of ``values[boxes]`` at every output, and where they reach."""
        grads = self.backward(values, boxes)
        per_box = [self._finite(i, g) for i, g in zip(boxes, grads)]
        pieces = [[piece.cpu() for g in box_grads for piece in self.reshape(g, self.shapes)]
                  for box_grads in per_box]
        hit = [[bool(piece.any()) for piece in box_pieces] for box_pieces in pieces]
        zero = [self._layers_without_gradient(box_hit) for box_hit in hit]
        # a box usually reaches one pyramid level: the others' all-zero rows are skipped
        reached = [np.array([k for k in range(len(boxes)) if hit[k][index]], int)
                   for index in range(len(self.outputs))]
        return BoxGradients(boxes, pieces, reached, zero, self._own_outputs(pieces, reached))

    def maps(self, grads: BoxGradients, fuse: str) -> np.ndarray:
        """The ``fuse``d maps ``(K, H_in, W_in)`` of the method for ``grads``' boxes."""
        boxes, pieces = grads.boxes, grads.pieces
        fusion = Fusion(fuse, len(boxes), self.size, len(self.outputs), grads.own)
        targets = [self.boxes[i] for i in boxes] if self.boxes else None
        for index in range(len(self.outputs)):
            kept = (grads.reached[index] if self._zero_gradient_gives_zero_map(index)
                    else np.arange(len(boxes)))
            for chunk in _chunks(kept, pieces[0][index][0].numel()):
                grad = torch.cat([pieces[k][index] for k in chunk]).numpy()
                fusion.add(index, chunk, self.cam(
                    index, grad, None if targets is None else [targets[k] for k in chunk]))
        return fusion.result()

    def shared(self) -> List[np.ndarray]:
        """Per output, the ``(1, H_in, W_in)`` map of a method that reads no gradients."""
        return [self.cam(i, np.zeros_like(a)) for i, (_, a) in enumerate(self.outputs)]

    def cam(self, index: int, grad: np.ndarray, targets=None) -> np.ndarray:
        """The method's maps for one layer output, ReLU'd and resized to the input
        (``targets``: one per row of ``grad``)."""
        owner, act = self.outputs[index]
        cam = self.method.get_cam_image(self.inputs, self.capture.layers[owner], targets,
                                        np.broadcast_to(act, grad.shape), grad,
                                        self.eigen_smooth)
        return scale_cam_image(np.maximum(cam, 0), self.size)

    def level_index(self, own: np.ndarray) -> np.ndarray:
        """Each box's own level: its own output's index within the target layer with the
        most outputs (the pyramid)."""
        widest = max(range(len(self.owner_outputs)), key=lambda o: len(self.owner_outputs[o]))
        return own[:, widest] - self.owner_outputs[widest][0]

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

    def _zero_gradient_gives_zero_map(self, index: int) -> bool:
        """Checked once per output by running the method on a zero gradient (true for the
        gradient methods, false e.g. for RandomCAM's random weights)."""
        if index not in self._zero_maps_zero:
            zero = np.zeros_like(self.outputs[index][1])
            self._zero_maps_zero[index] = not self.cam(index, zero).any()
        return self._zero_maps_zero[index]


def _chunks(rows: np.ndarray, size: int, budget: int = 2 ** 22) -> List[np.ndarray]:
    """``rows`` in runs whose gradients (``size`` values each) hold at most ``budget``
    values: temporaries of that size are reused by the allocator, larger ones are fresh
    memory every time (page faults cost more than the formula on a large level)."""
    step = max(1, budget // max(size, 1))
    return [rows[start:start + step] for start in range(0, len(rows), step)]
