"""Exact per-box gradients for a fraction of a full backward: replay only the part of the box
head a box depends on.

A full backward per box runs through the whole head: the dense tower over every cell of a
pyramid level, or a two-stage box head over every proposal. A box's score reads far less.

- Dense heads (:class:`DenseReplay`). A one-stage box score reads the head's outputs at one
  cell of one level, and a tower of only convolutions, per-location normalisation (BatchNorm
  in eval mode) and activations reads that cell from a window of its input no wider than its
  receptive field. The head is re-run on that window alone (the windows of all boxes of a
  level as one batch) and the box's output gradient goes back through the window.
  Why this is exact: let ``r`` be the tower's receptive radius (the half-widths of the
  convolutions on its longest path, read from the autograd graph). An output cell depends on
  the input within ``r`` cells of it; a layer's value at distance ``d`` from the output cells
  is needed only when ``d <= r - r_l`` (``r_l``: the radius of the layers below it) and is
  computed correctly on a window holding everything within ``r_l`` of it. So a window
  holding every input cell within ``r`` of the box's cells gives exact outputs, and exact
  gradients, there; window edges on the level's border see the same zero padding as the
  full run.
- RoI heads (:class:`RoIReplay`). A two-stage box score reads one row (its RoI) of the box
  head's outputs, and the head treats rows independently: the explained boxes' RoIs run as
  one small batch and RoIAlign takes each row's gradient back to the features.

Both need each box's gradient w.r.t. the head's outputs first, which means a backward through
mmdet's post-processing over every candidate. :func:`output_gradients` gets them for all boxes
from three backward passes instead of one per box.

Exactness is checked, not assumed: the first replay of each level (dense) or head (RoI) is
compared with the full backward of the box's value along every path, and one that differs
(relative error above ``TOLERANCE``, or for windows any gradient outside the window) uses the
full backward from then on. Heads with modules not known to be local (GroupNorm, deformable
or strided convolutions, attention, ...) are not replayed at all.
"""
import contextlib
import logging
import weakref
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..patching import swapped
from .capture import tensors_in
from .windows import Gradient, Window, add, common_corners, dense

TOLERANCE = 1e-4  # max |replay - full| relative to max |full|, per level when first checked
# boxes replayed in one batch (each call of a head costs milliseconds of fixed overhead, and
# a box's windowed gradients take kilobytes to a few MB)
REPLAY_BOXES = 128

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Sigmoid, nn.Hardswish,
                nn.Hardsigmoid, nn.GELU, nn.Identity, nn.Dropout, nn.Sequential, nn.ModuleList,
                nn.ModuleDict)
# per head: level index (or 'rois') -> whether its replay matched the full backward
_CHECKED: 'weakref.WeakKeyDictionary[nn.Module, Dict[object, bool]]' = \
    weakref.WeakKeyDictionary()


# per head, per tuple of input channel counts: its receptive radius (receptive_radius)
_RADII: 'weakref.WeakKeyDictionary[nn.Module, Dict[tuple, int]]' = weakref.WeakKeyDictionary()


def _debug(message: str) -> None:
    print_log(f'mmdet-cam local replay: {message}', logger='current', level=logging.DEBUG)


def not_local(head: nn.Module) -> Optional[str]:
    """Why ``head``'s forward may read beyond a fixed window of its input (None: it is a
    tower of stride-1 'same' convolutions, eval-mode BatchNorm and activations)."""
    from mmcv.cnn import ConvModule, DepthwiseSeparableConvModule, Scale
    local = _ELEMENTWISE + (ConvModule, DepthwiseSeparableConvModule, Scale)
    for name, module in head.named_modules():
        if not name or name.split('.')[0].startswith('loss'):  # losses: not in forward
            continue
        if isinstance(module, nn.Conv2d) and 'Deform' not in type(module).__name__:
            same = tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
            if (module.stride != (1, 1) or module.padding != same
                    or module.padding_mode != 'zeros' or any(k % 2 == 0
                                                             for k in module.kernel_size)):
                return f'{name} is not a stride-1 convolution with zero "same" padding'
        elif isinstance(module, _BatchNorm):
            if module.training:
                return f'{name} is a BatchNorm in training mode'
        elif not isinstance(module, local) and type(module).__name__ not in ('Swish', 'HSwish',
                                                                           'HSigmoid'):
            return f'{name} is a {type(module).__name__}, not known to be local'
    return None


def receptive_radius(head: nn.Module, features: Sequence[Tensor]) -> int:
    """How many cells away the head's outputs read their input: the longest chain of
    convolution half-widths in the autograd graph of a probe forward (1 x 1 levels)."""
    probes = tuple(f.new_zeros(1, f.shape[1], 1, 1).requires_grad_(f.requires_grad)
                   for f in features)
    outputs = tensors_in(head.forward(probes))
    longest: Dict[object, int] = {}

    def radius(node) -> int:
        if node is None:
            return 0
        if node not in longest:
            own = 0
            if type(node).__name__.startswith('Convolution'):
                own = max(d * (k - 1) // 2 for d, k in
                          zip(node._saved_dilation, node._saved_weight.shape[-2:]))
            longest[node] = own + max((radius(n) for n, _ in node.next_functions), default=0)
        return longest[node]
    return max((radius(t.grad_fn) for t in outputs), default=0)


@contextlib.contextmanager
def _unpadded(head: nn.Module) -> Iterator[None]:
    """While active, ``head``'s convolutions (stride 1, zero 'same' padding: ``not_local``
    checked) run without padding."""
    with contextlib.ExitStack() as stack:
        for module in head.modules():
            if isinstance(module, nn.Conv2d):
                stack.enter_context(swapped(module, 'padding', (0, 0)))
        yield


def _copy_of(feature: Tensor, activations: Sequence[Tensor]) -> Optional[int]:
    """The index of the activation ``feature`` is, or is a clone of (``LayerCapture`` hands
    its consumers clones), so that its gradient is the feature's; None if none."""
    node = feature.grad_fn
    if node is not None and type(node).__name__.startswith('CloneBackward'):
        node = node.next_functions[0][0]
    for k, activation in enumerate(activations):
        if feature is activation or (node is not None and (
                node is activation.grad_fn
                or getattr(node, 'variable', None) is activation)):
            return k
    return None


class _HeadReplay:
    """Per-box gradients w.r.t. a head's input ``features`` from a replay of the part of the
    head each box depends on. Subclasses give ``feature_grads``; ``reason`` says why a head
    cannot be replayed (None: it can)."""

    def __init__(self, head: nn.Module, features: Sequence[Tensor], outputs: Sequence[Tensor],
                 reason: Optional[str]):
        self.head, self.features, self.outputs = head, list(features), list(outputs)
        self.reason = reason
        if reason is None and any(f.shape[0] != 1 for f in self.features):
            self.reason = 'the batch holds more than one image'
        self.checked = _CHECKED.setdefault(head, {})
        self._output_grads: Optional[List[SparseGrad]] = None
        self._replayed: Dict[int, List[Gradient]] = {}  # box -> its gradients, not yet asked
        if self.reason:
            _debug(f'{type(head).__name__} uses the full backward: {self.reason}')

    @property
    def usable(self) -> bool:
        return self.reason is None

    def activation_grads(self, values: Tensor, boxes: Sequence[int],
                         activations: Sequence[Tensor]) -> List[List[Gradient]]:
        """For the ``boxes`` (indices into ``values``, each one box's score), the gradients
        w.r.t. ``activations``, which must be the head's input or lie before it: a
        :class:`~.windows.Window` where an activation is the head's input itself, None where
        a box's gradient does not reach an activation."""
        if self._output_grads is None:  # for all boxes at once
            self._output_grads = output_gradients(values, self.outputs)
        missing = [b for b in boxes if b not in self._replayed]
        if missing:  # the boxes asked and those after them, up to REPLAY_BOXES, in one batch
            group = range(missing[0], min(len(values), max(missing[-1] + 1,
                                                           missing[0] + REPLAY_BOXES)))
            self._replayed.update(zip(group, self._replay_group(values, group, activations)))
        return [self._replayed.pop(b) for b in boxes]

    def _replay_group(self, values: Tensor, boxes: range,
                      activations: Sequence[Tensor]) -> List[List[Gradient]]:
        """:meth:`activation_grads` of ``boxes``, from one replay of the head."""
        # the head's inputs that are target layers' outputs: their windows are the gradients
        same = [_copy_of(f, activations) for f in self.features]
        per_box = []
        for feature_grads in self.feature_grads([self._output_grads[b] for b in boxes],
                                                [values[b] for b in boxes]):
            grads: List[Gradient] = [None] * len(activations)
            used = []
            for f, k, g in zip(self.features, same, feature_grads):
                if g is not None and k is not None:
                    grads[k] = add(grads[k], g)
                elif g is not None:
                    used.append((f, dense(g, f)))
            if used:  # activations before the head: a backward from its inputs
                below = torch.autograd.grad([f for f, _ in used], activations,
                                            grad_outputs=[g for _, g in used],
                                            retain_graph=True, allow_unused=True)
                grads = [add(g, b) for g, b in zip(grads, below)]
            per_box.append(grads)
        return per_box

    def feature_grads(self, output_grads: List['SparseGrad'],
                      values: Sequence[Tensor]) -> List[List[Gradient]]:
        """Per box, the gradients w.r.t. each input level (None: zero), from the box's
        gradients w.r.t. the head outputs (``values``: the boxes' own scalars, for the full
        backward a replay is checked against or falls back to)."""
        raise NotImplementedError

    def _full(self, value: Tensor, levels: Sequence[int]) -> List[Tensor]:
        """The value's gradients w.r.t. ``levels`` of the features by the full backward,
        along every path (not only through the recorded outputs)."""
        grads = torch.autograd.grad(value, [self.features[i] for i in levels],
                                    retain_graph=True, allow_unused=True)
        return [torch.zeros_like(self.features[i]) if g is None else g
                for g, i in zip(grads, levels)]

    def _agrees(self, replayed: Tensor, reference: Tensor, key, what: str) -> bool:
        """Records (under ``key``) and returns whether a replayed gradient is the full
        backward's, relative to its largest entry."""
        error = float((replayed - reference).abs().max())
        scale = float(reference.abs().max())
        self.checked[key] = error <= TOLERANCE * scale
        if not self.checked[key]:
            _debug(f'{type(self.head).__name__} {what}: the replay differs from the full '
                   f'backward by {error:.3g} (max {scale:.3g}); the full backward is used')
        return self.checked[key]


class DenseReplay(_HeadReplay):
    """A one-stage dense head replayed on windows around each box's cells (see the module
    docstring).

    Args:
        head: the dense head (``bbox_head``) of a one-stage detector.
        features: its input, one ``[1, C, H, W]`` tensor per level, in the graph.
        outputs: the tensors its forward returned, flattened (``DenseHeadOutputs.tensors``).
    """

    def __init__(self, head: nn.Module, features: Sequence[Tensor], outputs: Sequence[Tensor]):
        sizes = [tuple(f.shape[-2:]) for f in features]
        self.level_of = [sizes.index(tuple(t.shape[-2:]))
                         if t.dim() == 4 and tuple(t.shape[-2:]) in sizes else None
                         for t in outputs]
        reason = not_local(head)
        if reason is None and len(set(sizes)) < len(sizes):
            reason = 'two pyramid levels have the same size'
        elif reason is None and None in self.level_of:
            reason = 'an output of the head is not a map of one of its input levels'
        super().__init__(head, features, outputs, reason)
        if self.usable:  # a property of the head and its input channels: found once
            key = tuple(f.shape[1] for f in self.features)
            radii = _RADII.setdefault(head, {})
            if key not in radii:
                radii[key] = receptive_radius(head, self.features)
            self.radius = radii[key]
        else:
            self.radius = 0

    def feature_grads(self, output_grads, values):
        """See the base class; the first replay of each level is checked."""
        grads = [[None] * len(self.features) for _ in output_grads]
        cells_of = {level: {} for level in range(len(self.features))}
        for b, g in enumerate(output_grads):
            for level, cells in self._cells(g).items():
                cells_of[level][b] = cells
        rows_of = {level: list(cells) for level, cells in cells_of.items()}
        replayed = {level: rows for level, rows in rows_of.items()
                    if rows and self.checked.get(level, True)}
        inner = self._inner(cells_of, replayed)
        if inner:
            try:  # the windows away from the level's edges, without padding (see _unpadded)
                windows_of = self._replay(output_grads, cells_of, inner, unpadded=True)
            except RuntimeError:  # a head whose outputs then do not line up
                self.checked['unpadded'] = False
                windows_of = {}
            for level, windows in windows_of.items():
                key = ('unpadded', level)
                if key not in self.checked:
                    self._check(windows[0], values[inner[level][0]], key)
                if self.checked[key]:
                    for b, window in zip(inner[level], windows):
                        grads[b][level] = window
        replayed = {level: [b for b in rows if grads[b][level] is None]
                    for level, rows in replayed.items()}
        replayed = {level: rows for level, rows in replayed.items() if rows}
        if replayed:
            try:  # every level in one call of the head
                windows_of = self._replay(output_grads, cells_of, replayed)
            except RuntimeError:  # a head that mixes levels: one call per level
                windows_of = {}
                for level, rows in replayed.items():
                    windows_of.update(self._replay(output_grads, cells_of, {level: rows}))
            for level, windows in windows_of.items():
                for b, window in zip(replayed[level], windows):
                    grads[b][level] = window
                if level not in self.checked:
                    self._check(windows[0], values[replayed[level][0]], level)
        for level, rows in rows_of.items():
            if rows and not self.checked.get(level, True):
                for b in rows:
                    grads[b][level], = self._full(values[b], [level])
        return grads

    def _cells(self, box_grads: 'SparseGrad') -> Dict[int, Tuple[int, int, int, int]]:
        """Per level where the box's output gradient is non-zero, ``(y_lo, y_hi, x_lo, x_hi)``
        of the cells there."""
        spans: Dict[int, List[int]] = {}
        for k, (index, _) in box_grads.items():
            height, width = self.outputs[k].shape[-2:]
            index = index.cpu().numpy()
            ys, xs = index // width % height, index % width
            span = [int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())]
            old = spans.setdefault(self.level_of[k], span)
            old[0], old[1] = min(old[0], span[0]), max(old[1], span[1])
            old[2], old[3] = min(old[2], span[2]), max(old[3], span[3])
        return {level: tuple(span) for level, span in spans.items()}

    def _inner(self, cells_of: Dict[int, dict], rows_of: Dict[int, List[int]]):
        """Per level, the boxes whose cells are at least ``radius`` cells from every edge of
        the level: their windows hold every cell their outputs read, so the head can run on
        them without its convolutions' padding (:meth:`_replay` ``unpadded``)."""
        if not self.checked.get('unpadded', True) or not self.radius:
            return {}
        r, inner = self.radius, {}
        for level, rows in rows_of.items():
            if not self.checked.get(('unpadded', level), True):
                continue
            height, width = self.features[level].shape[-2:]
            mine = []
            for b in rows:
                y_lo, y_hi, x_lo, x_hi = cells_of[level][b]
                if min(y_lo, x_lo) >= r and y_hi + r < height and x_hi + r < width:
                    mine.append(b)
            if mine:
                inner[level] = mine
        return inner

    def _windows(self, cells: List[Tuple[int, int, int, int]], height: int, width: int):
        """One window per box, all of one size, each holding every cell within ``radius`` of
        the box's cells and lying inside the level (so its edges are either the level's own
        or at least ``radius`` away from the box's cells)."""
        r = self.radius
        return common_corners([(max(y_lo - r, 0), max(x_lo - r, 0), min(y_hi + r + 1, height),
                                min(x_hi + r + 1, width)) for y_lo, y_hi, x_lo, x_hi in cells],
                              height, width)

    def _replay(self, output_grads, cells_of: Dict[int, dict],
                rows_of: Dict[int, List[int]], unpadded: bool = False) -> Dict[int, List[Window]]:
        """Per level of ``rows_of`` (level -> boxes), each box's gradient w.r.t. the level on
        its window (``cells_of``: level -> box -> its cells, :meth:`_cells`), from one call of
        the head: each level's windows are its input batch. ``unpadded`` (windows away from
        the level's edges, :meth:`_inner`): the head's convolutions run without padding, so
        each layer computes only the cells the next one reads (RetinaNet: a quarter of the
        work); an output then covers its window less its own radius on every side."""
        crops, corners = {}, {}
        for level, rows in rows_of.items():
            feature = self.features[level]
            cells = [cells_of[level][b] for b in rows]
            corners[level], (h, w) = self._windows(cells, *feature.shape[-2:])
            crops[level] = torch.stack([feature[0, :, y:y + h, x:x + w]
                                        for y, x in corners[level]]).detach().requires_grad_()
        # the other levels as small maps, in the graph where the recorded ones were, so that
        # the head returns the same set of outputs
        side = 2 * self.radius + 1 if unpadded else 1
        inputs = tuple(crops[k] if k in crops else f.new_zeros(1, f.shape[1], side, side)
                       .requires_grad_(f.requires_grad) for k, f in enumerate(self.features))
        with (_unpadded(self.head) if unpadded else contextlib.nullcontext()):
            replayed = tensors_in(self.head.forward(inputs))  # .forward: no recording hooks
        if len(replayed) != len(self.outputs):
            raise RuntimeError('the replayed head returned a different set of outputs')
        picked, grad_outputs = [], []
        for k, out in enumerate(replayed):
            level = self.level_of[k]
            rows = rows_of.get(level, ())
            # outputs no box reads (box deltas, for a score) stay out of the backward
            if not any(k in output_grads[b] for b in rows):
                continue
            picked.append(out)
            grad_outputs.append(torch.zeros_like(out))
            height, width = self.features[level].shape[-2:]
            area = height * width  # the level's, as the recorded output's
            # an unpadded output's first cell is its window's (dy, dx)-th
            dy = (crops[level].shape[-2] - out.shape[-2]) // 2
            dx = (crops[level].shape[-1] - out.shape[-1]) // 2
            for i, (b, (y, x)) in enumerate(zip(rows, corners[level])):
                if k in output_grads[b]:  # its entries, all inside its window
                    index, grad = output_grads[b][k]
                    cell = index % area
                    grad_outputs[-1][i, index // area, cell // width - y - dy,
                                     cell % width - x - dx] = grad
        levels = list(crops)
        window_grads = torch.autograd.grad(picked, [crops[level] for level in levels],
                                           grad_outputs=grad_outputs, allow_unused=True)
        shape = {level: self.features[level].shape for level in levels}
        return {level: [Window(torch.zeros_like(crops[level][i:i + 1]) if g is None
                               else g[i:i + 1], y, x, shape[level])
                        for i, (y, x) in enumerate(corners[level])]
                for level, g in zip(levels, window_grads)}

    def _check(self, window: Window, value: Tensor, key) -> None:
        """The full backward must be exactly zero outside the window (however small a
        dependence on the rest of the level, it shows there) and match the replay inside
        (``key``: the level, or ``('unpadded', level)``; recorded under it)."""
        level = key[1] if isinstance(key, tuple) else key
        reference, = self._full(value, [level])
        outside = reference.clone()
        outside[0, :, window.slices[0], window.slices[1]] = 0
        if (self._agrees(window.dense(), reference, key, f'{key}')
                and outside.any()):
            self.checked[key] = False
            _debug(f'{type(self.head).__name__} level {level}: the full backward reaches '
                   'beyond the window; the full backward is used')


class RoIReplay(_HeadReplay):
    """A two-stage detector's box head replayed on the RoIs the boxes come from. A box's
    score reads one row (its RoI) of the head's outputs and the head treats rows
    independently, so the rows of all boxes run as one small batch, and RoIAlign takes each
    row's gradient back to the features; the full backward instead runs through the head's
    layers for every proposal. Checked once per head against the full backward.

    Args:
        roi_head: a ``StandardRoIHead`` (its own ``_bbox_forward``).
        record: what :func:`recording_rois` recorded: the features ``x``, the ``rois`` and the
            box head's ``outputs`` (class scores, box deltas), in the graph.
    """

    def __init__(self, roi_head: nn.Module, record: dict):
        reason = None
        if any(m.training for m in roi_head.modules() if isinstance(m, _BatchNorm)):
            reason = 'a BatchNorm of the RoI head is in training mode (it mixes RoIs)'
        elif any(t.dim() != 2 or len(t) != len(record['rois']) for t in record['outputs']):
            reason = 'the box head does not return one row per RoI'
        super().__init__(roi_head, record['x'], record['outputs'], reason)
        self.rois = record['rois']
        self.inputs = roi_head.bbox_roi_extractor.num_inputs

    def feature_grads(self, output_grads, values):
        """See the base class; the first replay of a head is checked."""
        grads = [[None] * len(self.features) for _ in output_grads]
        pairs = [(b, r) for b, g in enumerate(output_grads) for r in self._rows(g)]
        if pairs and self.checked.get('rois', True):
            pooled = self._replay(output_grads, pairs)
            for (b, _), levels in zip(pairs, self._through_roi_align([r for _, r in pairs],
                                                                     pooled)):
                grads[b] = [add(g, level) for g, level in zip(grads[b], levels)]
            if 'rois' not in self.checked:
                b = pairs[0][0]
                replayed = torch.cat([dense(g, f).flatten()
                                      for g, f in zip(grads[b], self.features)])
                reference = torch.cat([g.flatten() for g in
                                       self._full(values[b], range(len(self.features)))])
                self._agrees(replayed, reference, 'rois', 'RoIs')
        if pairs and not self.checked['rois']:
            for b in {b for b, _ in pairs}:
                grads[b] = self._full(values[b], range(len(self.features)))
        return grads

    def _rows(self, box_grads: 'SparseGrad') -> List[int]:
        rows = {int(r) for k, (index, _) in box_grads.items()
                for r in (index // self.outputs[k].shape[1]).unique()}
        return sorted(rows)

    def _replay(self, output_grads, pairs) -> Tensor:
        """``[P, C, h, w]``: per (box, row) pair, the gradient w.r.t. its RoI's pooled
        features, from one batched run of the box head on those RoIs."""
        head = self.head
        rows = torch.as_tensor([r for _, r in pairs], device=self.rois.device)
        features = [f.detach() for f in self.features[:self.inputs]]
        pooled = head.bbox_roi_extractor(features, self.rois[rows]).detach().requires_grad_()
        inputs = head.shared_head(pooled) if head.with_shared_head else pooled
        replayed = tensors_in(head.bbox_head.forward(inputs))  # .forward: no hooks
        if len(replayed) != len(self.outputs):
            raise RuntimeError('the replayed box head returned a different set of outputs')
        grad_outputs = [torch.zeros_like(out) for out in replayed]
        for i, (b, row) in enumerate(pairs):
            for k, (index, grad) in output_grads[b].items():
                width = self.outputs[k].shape[1]
                mine = index // width == row
                grad_outputs[k][i, index[mine] % width] = grad[mine]
        return torch.autograd.grad(replayed, pooled, grad_outputs=grad_outputs)[0]

    def _through_roi_align(self, rows: List[int], pooled_grads: Tensor) -> List[List[Gradient]]:
        """Per RoI row, its gradients w.r.t. the input levels from its pooled features'.
        With mmdet's ``SingleRoIExtractor``, all rows of a level go through one RoIAlign
        backward on crops of the level around each RoI (a RoI reads only the cells around its
        box), each crop its own image of a batch; a window per row. Else one backward of the
        extractor per row, at full size."""
        from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
        extractor = self.head.bbox_roi_extractor
        if type(extractor) is not SingleRoIExtractor:
            return [self._through_extractor(row, g) for row, g in zip(rows, pooled_grads)]
        rois = self.rois[rows].type_as(self.features[0])
        levels = (extractor.map_roi_levels(rois, self.inputs) if self.inputs > 1
                  else rois.new_zeros(len(rois), dtype=torch.long))
        result: List[List[Gradient]] = [[None] * len(self.features) for _ in rows]
        for level in levels.unique().tolist():
            mine = torch.nonzero(levels == level).squeeze(1)
            for i, window in zip(mine.tolist(), self._roi_align_windows(
                    extractor.roi_layers[level], self.features[level], rois[mine],
                    pooled_grads[mine])):
                result[i][level] = window
        return result

    @staticmethod
    def _roi_align_windows(layer: nn.Module, feature: Tensor, rois: Tensor,
                           pooled_grads: Tensor) -> List[Window]:
        """Per RoI, the gradient w.r.t. ``feature`` (one level) of ``layer`` (mmcv's
        RoIAlign) given its pooled features' gradient, on a window of the level holding every
        cell its samples read (2 cells of margin; the level's own edges where it reaches
        them, so the kernel's edge rules apply as in the full run)."""
        height, width = feature.shape[-2:]
        scale = layer.spatial_scale
        offset = 0.5 if getattr(layer, 'aligned', True) else 0.0
        coords = rois[:, 1:] * scale - offset  # x1, y1, x2, y2 in cells
        low = (coords[:, :2].floor() - 2).clamp(min=0).long()
        high = coords[:, 2:].floor().long() + 4  # + 1 cell: a RoI is at least a cell wide
        spans = [(y0, x0, min(y1, height), min(x1, width))
                 for (x0, y0), (x1, y1) in zip(low.tolist(), high.tolist())]
        corners, (h, w) = common_corners(spans, height, width)
        crops = torch.stack([feature[0, :, y:y + h, x:x + w] for y, x in corners]).detach()
        crops.requires_grad_()
        shift = torch.as_tensor([[x / scale, y / scale] * 2 for y, x in corners],
                                dtype=rois.dtype, device=rois.device)
        shifted = torch.cat([torch.arange(len(rois), dtype=rois.dtype,
                                          device=rois.device)[:, None], rois[:, 1:] - shift], 1)
        grads, = torch.autograd.grad(layer(crops, shifted), crops, grad_outputs=pooled_grads)
        return [Window(g[None], y, x, feature.shape) for (y, x), g in zip(corners, grads)]

    def _through_extractor(self, row: int, pooled_grad: Tensor) -> List[Optional[Tensor]]:
        leaves = [f.detach().requires_grad_() for f in self.features[:self.inputs]]
        pooled = self.head.bbox_roi_extractor(leaves, self.rois[row:row + 1])
        grads = torch.autograd.grad(pooled, leaves, grad_outputs=pooled_grad[None],
                                    allow_unused=True)
        return list(grads) + [None] * (len(self.features) - self.inputs)


@contextlib.contextmanager
def recording_rois(detector: nn.Module) -> Iterator[dict]:
    """While active, records the features, RoIs and box-head outputs of a
    ``StandardRoIHead``'s box forward (an empty dict for other detectors)."""
    from mmdet.models.roi_heads import StandardRoIHead
    roi_head, record = getattr(detector, 'roi_head', None), {}
    if roi_head is None or type(roi_head)._bbox_forward is not StandardRoIHead._bbox_forward:
        yield record
        return

    def recorded(x, rois):
        results = StandardRoIHead._bbox_forward(roi_head, x, rois)
        record.update(x=list(x), rois=rois.detach(),
                      outputs=tensors_in((results['cls_score'], results['bbox_pred'])))
        return results
    with swapped(roi_head, '_bbox_forward', recorded):
        yield record


# per output tensor index: (flat indices into outputs[k], gradient values there)
SparseGrad = Dict[int, Tuple[Tensor, Tensor]]
MATCH_TOLERANCE = 1e-4  # relative, for telling which value an output entry belongs to
POOLED_MAX = 1000  # values identified per set of pooled passes (weights 0.5 / n apart)


def sparse(grads: Sequence[Optional[Tensor]]) -> SparseGrad:
    found = {}
    for k, g in enumerate(grads):
        if g is not None:
            index = torch.nonzero(g.reshape(-1)).squeeze(1)
            if len(index):
                found[k] = (index, g.reshape(-1)[index])
    return found


def _cells(output: Tensor, index: Tensor) -> list:
    """Where each flat ``index`` of ``output`` lies: a map's cell (named by the map's size and
    the position in it), or a row of a ``[rows, D]`` output (a RoI's)."""
    if output.dim() == 4:
        return [(tuple(output.shape[-2:]), c) for c in
                (index % (output.shape[-2] * output.shape[-1])).tolist()]
    return [('row', r) for r in (index // output.shape[-1]).tolist()]


def output_gradients(values: Tensor, outputs: Sequence[Tensor]) -> List[SparseGrad]:
    """Per value, its gradient w.r.t. ``outputs`` (sparse: one box's score reads a few entries
    of its own cell). One backward per value costs as much as mmdet's post-processing over
    every candidate, so three passes over weighted sums of all values come first: an output
    entry read by value ``k`` alone gets ``w_m[k]`` times the same number in pass ``m``, so its
    two ratios to pass 0 name ``k``. Entries whose ratios match no single value (read by two
    values, e.g. a shared objectness) send the values found at their cells, and values left
    with no entry at all, to a backward of their own."""
    if len(values) > POOLED_MAX:
        return [g for start in range(0, len(values), POOLED_MAX)
                for g in output_gradients(values[start:start + POOLED_MAX], outputs)]
    n = len(values)
    if n <= 3:  # no cheaper than a backward each
        return [sparse(torch.autograd.grad(v, outputs, retain_graph=True, allow_unused=True))
                for v in values]
    generator = torch.Generator().manual_seed(0)
    weights = [torch.ones(n, dtype=torch.float64)] + [
        1 + (torch.randperm(n, generator=generator) + 0.25 + 0.5 * torch.rand(
            n, generator=generator, dtype=torch.float64)) / n for _ in range(2)]
    weights = [w.to(values.device) for w in weights]  # drawn on the CPU: the same on any device
    passes = [torch.autograd.grad((w.to(values.dtype) * values).sum(), outputs, retain_graph=True,
                                  allow_unused=True) for w in weights]
    found: List[SparseGrad] = [{} for _ in range(n)]
    seen: List[set] = [set() for _ in range(n)]  # the cells where each value's entries are
    mixed = set()  # cells with an entry that no single value explains
    order = torch.argsort(weights[1])
    for k, output in enumerate(outputs):
        flat = [output.new_zeros(output.numel()) if p[k] is None else p[k].reshape(-1)
                for p in passes]
        index = torch.nonzero((flat[0] != 0) | (flat[1] != 0) | (flat[2] != 0)).squeeze(1)
        if not len(index):
            continue
        first, ratio1, ratio2 = flat[0][index].double(), flat[1][index], flat[2][index]
        ratio1, ratio2 = ratio1.double() / first, ratio2.double() / first
        slot = torch.searchsorted(weights[1][order], ratio1.nan_to_num(0, 0, 0))
        owner = torch.stack([order[slot.clamp(max=n - 1)], order[(slot - 1).clamp(min=0)]])
        close = [((ratio1 - weights[1][o]).abs() <= MATCH_TOLERANCE * weights[1][o])
                 & ((ratio2 - weights[2][o]).abs() <= MATCH_TOLERANCE * weights[2][o])
                 for o in owner]
        owner = torch.where(close[0], owner[0], owner[1])
        matched = close[0] | close[1]
        cells = _cells(output, index)
        mixed |= {c for c, ok in zip(cells, matched.tolist()) if not ok}
        # the matched entries grouped by value, each group in the entries' order
        positions = torch.nonzero(matched).squeeze(1)
        positions = positions[torch.argsort(owner[positions], stable=True)]
        boxes, counts = torch.unique_consecutive(owner[positions], return_counts=True)
        for box, mine in zip(boxes.tolist(), positions.split(counts.tolist())):
            seen[box] |= {cells[i] for i in mine.tolist()}
            found[box][k] = (index[mine], flat[0][index[mine]])  # pass 0: weight 1
    unsure = {b for b in range(n) if not found[b] or seen[b] & mixed}
    for b in unsure:
        found[b] = sparse(torch.autograd.grad(values[b], outputs, retain_graph=True,
                                              allow_unused=True))
    return found
