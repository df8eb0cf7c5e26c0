"""Captured activations and per-box gradients turned into input-sized maps, one per layer
output (pyramid level), by a CAM method's ``get_cam_image`` (pytorch_grad_cam's formula).

:class:`LayerMaps` is the toolbox the method pipelines (``mmdet_cam.methods.pipelines``) share:
:meth:`~LayerMaps.gradients` gives a chunk of boxes their gradients, the layers none of them
reached and each box's own output per layer; :meth:`~LayerMaps.maps` gives the method's maps
of those gradients per output, which :meth:`~LayerMaps.fusion` fuses; :meth:`~LayerMaps.shared`
gives a gradient-free method's maps (the same for every box); :meth:`~LayerMaps.cam` runs the
formula on one output.
"""
import weakref
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from torch import Tensor

from .capture import LayerCapture
from .deformable import DecoderSamples
from .fusion import Fusion
from .gradients import Backward
from .windows import Gradient, Window, any_nonzero, common_corners, dense, values_of

TOLERANCE = 1e-4  # max |window formula - full formula| relative to the full's max, when checked
# per method object, what its formula was found to allow (see LayerMaps.raw_cam): checked on the
# first box of a level's first call, not again on every image of a folder (0.25 s per call for
# Faster R-CNN's levels at 800 px)
_WINDOW_FORMULAS: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


def _weakly_referable(value) -> bool:
    try:
        weakref.ref(value)
    except TypeError:
        return False
    return True


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
        pieces: per box, per output, ``[1, C, H, W]`` (after the reshape transform), a
            :class:`~.windows.Window` of it, or None (zero).
        reached: per output, the rows (indices into ``boxes``) with a non-zero gradient there.
        zero_layers: per box, the target layers none of whose outputs it reached.
        own: ``[K, layers]``: per box and target layer, its own output's index.
    """
    boxes: range
    pieces: List[List[Gradient]]
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
        reshaped = [self.reshape(act, feature_shapes) for act in capture.activations]
        # [(owner layer index, activation [1, C, H, W] as numpy)] after the reshape transform
        self.outputs = [(owner, piece.detach().cpu().numpy())
                        for owner, pieces in zip(capture.owners, reshaped) for piece in pieces]
        owners = np.array([owner for owner, _ in self.outputs])
        self.owner_outputs = [np.flatnonzero(owners == o) for o in sorted(set(owners))]
        # target layers whose output the reshape transform passes through as it is: a box's
        # gradient there can stay a window
        self.as_is = [len(pieces) == 1 and pieces[0] is act
                      for act, pieces in zip(capture.activations, reshaped)]
        self._zero_maps_zero = {}
        # the backward gives each box's map at the memory ([1, 2, H, W] pieces: the formula's
        # map and the channel sums sum_c dS/dA_c * A_c), not its gradient
        self.from_samples = isinstance(backward.replay, DecoderSamples)
        # (output index, its shape) -> 'local', 'weights' or None (see raw_cam); the method's
        # own, shared by its calls: a formula's kind is the method's, not an image's
        self._window_formula = _WINDOW_FORMULAS.setdefault(method, {}) \
            if _weakly_referable(method) else {}
        self.non_finite: List[int] = []  # boxes whose gradient had NaN/inf (set to 0)

    def gradients(self, values: Tensor, boxes: range) -> BoxGradients:
        """The gradients of ``values[boxes]`` at every output, and where they reach."""
        grads = self.backward(values, boxes)
        pieces, hit = [], []
        for i, box_grads in zip(boxes, grads):
            box_grads, sizes = self._finite(i, box_grads)
            pieces.append([])
            hit.append([])
            for g, size, act, as_is in zip(box_grads, sizes, self.capture.activations,
                                           self.as_is):
                own = self._pieces(g, act, as_is)
                pieces[-1] += own
                # an output that passes as it is is its one piece: its size says if it is hit
                hit[-1] += [size > 0] if as_is else [any_nonzero(piece) for piece in own]
        zero = [self._layers_without_gradient(box_hit) for box_hit in hit]
        # a box usually reaches one pyramid level: the others' all-zero rows are skipped
        reached = [np.array([k for k in range(len(boxes)) if hit[k][index]], int)
                   for index in range(len(self.outputs))]
        return BoxGradients(boxes, pieces, reached, zero, self._own_outputs(pieces, reached))

    def maps(self, grads: BoxGradients) -> List[List[Tuple[int, np.ndarray]]]:
        """Per box of ``grads``, the method's raw map of each output it has one of:
        ``(output index, map at the output's size)`` pairs, for :meth:`fusion`."""
        pairs = [[] for _ in grads.boxes]
        targets = [self.boxes[i] for i in grads.boxes] if self.boxes else None
        for index, (_, act) in enumerate(self.outputs):
            kept = (grads.reached[index] if self._zero_gradient_gives_zero_map(index)
                    else np.arange(len(grads.boxes)))
            for chunk in _chunks(kept, act[0].size):
                raw = self.raw_cam(index, [grads.pieces[k][index] for k in chunk],
                                   None if targets is None else [targets[k] for k in chunk])
                for k, image in zip(chunk, raw):
                    pairs[k].append((index, image))
        return pairs

    def fusion(self, how: str, own: np.ndarray = None) -> Fusion:
        """The fusion of :meth:`maps`' pairs into one input-sized map per box (``own``:
        every box's own outputs, for ``how='own'``)."""
        return Fusion(how, self.size, len(self.outputs), own)

    def shared(self) -> List[np.ndarray]:
        """Per output, the ``(1, H_in, W_in)`` map of a method that reads no gradients."""
        return [self.cam(i, np.zeros_like(a)) for i, (_, a) in enumerate(self.outputs)]

    def cam(self, index: int, grad: np.ndarray, targets=None) -> np.ndarray:
        """The method's maps for one layer output, ReLU'd and resized to the input
        (``targets``: one per row of ``grad``)."""
        return scale_cam_image(np.maximum(self._formula(index, grad, targets), 0), self.size)

    def raw_cam(self, index: int, grads: List[Gradient], targets=None) -> np.ndarray:
        """The method's raw maps ``(K, H, W)`` of output ``index`` (at its own size) for
        ``grads`` (one per box). Gradients held as windows stay windows where the method's
        formula allows it, which is checked on the first box of the method's first call at
        this output and size, against the formula on the full-size gradient: ``'local'``, a
        map that is zero where the gradient is (HiResCAM, ODAM, LayerCAM: the formula runs on
        the windows), or ``'weights'``, pytorch_grad_cam's channel weights that are spatial
        means of the gradient (GradCAM: the window's mean, scaled by its share of the level,
        then one matrix product with the activations)."""
        if self.from_samples:  # the maps themselves (channel 0)
            return torch.cat(grads)[:, 0].numpy()
        formula = None
        if all(isinstance(g, Window) for g in grads):
            key = (index, self.outputs[index][1].shape, self.eigen_smooth)
            if key not in self._window_formula:
                found = self._window_formula_of(index, grads[0], targets and targets[:1])
                if found != 'unknown':  # 'unknown': the window is the whole level
                    self._window_formula[key] = found
            formula = self._window_formula.get(key)
        if formula is None:
            act = torch.from_numpy(self.outputs[index][1])
            grad = torch.cat([dense(g, act) for g in grads]).numpy()
            return self._formula(index, grad, targets)
        return self._window_cam(index, grads, targets, formula)

    def _formula(self, index: int, grad: np.ndarray, targets=None) -> np.ndarray:
        """The method's ``get_cam_image`` on full-size gradients of output ``index``."""
        owner, act = self.outputs[index]
        return self.method.get_cam_image(self.inputs, self.capture.layers[owner], targets,
                                         np.broadcast_to(act, grad.shape), grad,
                                         self.eigen_smooth)

    def _window_cam(self, index: int, windows: List[Window], targets, formula: str) -> np.ndarray:
        """``(K, H, W)`` raw maps of the level from windows of its gradient."""
        owner, act = self.outputs[index]
        height, width = act.shape[-2:]
        corners, (h, w) = common_corners(
            [(g.top, g.left, g.top + g.size[0], g.left + g.size[1]) for g in windows],
            height, width)
        grad = np.zeros((len(windows), act.shape[1], h, w), np.float32)
        for k, (g, (y, x)) in enumerate(zip(windows, corners)):
            grad[k, :, g.top - y:g.top - y + g.size[0], g.left - x:g.left - x + g.size[1]] = \
                g.values[0].cpu().numpy()
        crops = np.stack([act[0, :, y:y + h, x:x + w] for y, x in corners])
        layer = self.capture.layers[owner]
        if formula == 'weights':
            weights = self.method.get_cam_weights(self.inputs, layer, targets, crops, grad)
            weights = np.asarray(weights, np.float32) * (h * w / (height * width))
            return (weights @ act[0].reshape(act.shape[1], -1)).reshape(-1, height, width)
        cams = self.method.get_cam_image(self.inputs, layer, targets, crops, grad,
                                         self.eigen_smooth)
        maps = np.zeros((len(windows), height, width), np.float32)
        for k, (y, x) in enumerate(corners):
            maps[k, y:y + h, x:x + w] = cams[k]
        return maps

    def _window_formula_of(self, index: int, window: Window, targets) -> Optional[str]:
        """Which window formula gives the full formula's map for ``window`` (None: neither;
        ``'unknown'``: the window covers the level, which tells them apart from nothing)."""
        owner, act = self.outputs[index]
        if window.size == tuple(act.shape[-2:]):
            return 'unknown'
        full = self._formula(index, window.dense().numpy(), targets)
        formulas = ['local']
        if (type(self.method).get_cam_image is BaseCAM.get_cam_image
                and not self.eigen_smooth):
            formulas.append('weights')
        scale = max(float(np.abs(full).max()), 1e-30)
        for formula in formulas:
            try:
                mine = self._window_cam(index, [window], targets, formula)
            except (ValueError, IndexError):  # a formula that needs the full-size arrays
                continue
            if float(np.abs(mine - full).max()) <= TOLERANCE * scale:
                return formula
        return None

    def level_index(self, own: np.ndarray) -> np.ndarray:
        """Each box's own level: its own output's index within the target layer with the
        most outputs (the pyramid)."""
        widest = max(range(len(self.owner_outputs)), key=lambda o: len(self.owner_outputs[o]))
        return own[:, widest] - self.owner_outputs[widest][0]

    def _own_outputs(self, pieces: List[List[Gradient]], rows: List[np.ndarray]) -> np.ndarray:
        """``[K, layers]``: per box and target layer, the output with the largest
        ``sum |sum_c grad_c * activation_c|`` (``pieces[k][output]``: box ``k``'s gradient there;
        ``rows``: per output, the boxes with a gradient there). A box that reaches one
        output of a layer (a box score reaches its own pyramid level) owns it, unmeasured."""
        reached = np.zeros((len(pieces), len(self.outputs)), bool)
        for index, rows_here in enumerate(rows):
            reached[rows_here, index] = True
        energy = reached.astype(np.float64)  # 1 where reached: what decides a single one
        for outputs in self.owner_outputs:
            for k in np.flatnonzero(reached[:, outputs].sum(axis=1) > 1):
                for index in np.asarray(outputs)[reached[k, outputs]]:
                    energy[k, index] = self._energy(pieces[k][index], index)
        return np.stack([outputs[energy[:, outputs].argmax(axis=1)]
                         for outputs in self.owner_outputs], axis=1)

    def _energy(self, grad: Gradient, index: int) -> float:
        """``sum |sum_c grad_c * activation_c|`` of a box's gradient at output ``index``: the
        mass of its gradient-times-activation map there."""
        if self.from_samples:  # the channel sums (channel 1)
            return float(grad[:, 1].abs().sum())
        act = torch.from_numpy(self.outputs[index][1])
        if isinstance(grad, Window):
            act, grad = act[..., grad.slices[0], grad.slices[1]], grad.values
        return float((grad * act.to(grad)).sum(1).abs().sum())

    def _pieces(self, grad: Gradient, activation: Tensor, as_is: bool) -> List[Gradient]:
        """A gradient at a target layer's output as pieces of its reshaped outputs (on the
        CPU; windows and None stay as they are where the output passes as it is)."""
        if as_is:
            if isinstance(grad, Window):
                return [Window(grad.values.cpu(), grad.top, grad.left, grad.shape)]
            return [None if grad is None else grad.cpu()]
        return [piece.cpu() for piece in self.reshape(dense(grad, activation), self.shapes)]

    def _finite(self, box: int, grads: List[Gradient]) -> Tuple[List[Gradient], List[float]]:
        """``grads`` with NaN and inf set to 0 (the box noted in ``non_finite``), and the sum
        of each one's absolute values (0 for None): a finite sum has no NaN or inf in it, and
        it is 0 exactly when the gradient is (one reduction, no mask)."""
        def sizes_of(grads):
            return [0.0 if g is None else float(torch.linalg.vector_norm(values_of(g), 1))
                    for g in grads]
        sizes = sizes_of(grads)
        if all(np.isfinite(size) or bool(torch.isfinite(values_of(g)).all())
               for g, size in zip(grads, sizes)):
            return grads, sizes
        self.non_finite.append(box)
        grads = [None if g is None else _nan_to_zero(g) for g in grads]
        return grads, sizes_of(grads)

    def _layers_without_gradient(self, reached: List[bool]) -> List[str]:
        """The target layers none of whose outputs got a gradient (``reached``: per output)."""
        owners = {self.outputs[index][0] for index, hit in enumerate(reached) if hit}
        return [self.capture.names[i] for i in sorted(set(self.capture.owners) - owners)]

    def _zero_gradient_gives_zero_map(self, index: int) -> bool:
        """Checked once per output by running the method on a zero gradient over a corner of
        the output (true for the gradient methods, false e.g. for RandomCAM's random
        weights)."""
        if index not in self._zero_maps_zero:
            owner, act = self.outputs[index]
            corner = np.ascontiguousarray(act[..., :8, :8])
            cam = self.method.get_cam_image(self.inputs, self.capture.layers[owner], None,
                                            corner, np.zeros_like(corner), self.eigen_smooth)
            self._zero_maps_zero[index] = not np.maximum(cam, 0).any()
        return self._zero_maps_zero[index]


def _nan_to_zero(grad: Gradient) -> Gradient:
    clean = torch.nan_to_num(values_of(grad), nan=0.0, posinf=0.0, neginf=0.0)
    return Window(clean, grad.top, grad.left, grad.shape) if isinstance(grad, Window) else clean


def _chunks(rows: np.ndarray, size: int, budget: int = 2 ** 22) -> List[np.ndarray]:
    """``rows`` in runs whose gradients (``size`` values each) hold at most ``budget``
    values: temporaries of that size are reused by the allocator, larger ones are fresh
    memory every time (page faults cost more than the formula on a large level)."""
    step = max(1, budget // max(size, 1))
    return [rows[start:start + step] for start in range(0, len(rows), step)]
