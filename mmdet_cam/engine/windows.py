"""A box's gradient at a pyramid level as the window it is non-zero in.

A local replay (``replay.py``) gives each box a gradient that is zero outside a window of one
level: its dense head's receptive field around its cells, or the RoIAlign footprint of its
RoI. Held as that window instead of a zero-filled level, a box costs work in proportion to
what it touches; :meth:`Window.dense` gives the full-size tensor where a step needs it.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor


@dataclass
class Window:
    """``values`` ``[1, C, h, w]`` at rows ``top:top + h`` and columns ``left:left + w`` of a
    ``shape`` (``[1, C, H, W]``) map that is zero elsewhere."""
    values: Tensor
    top: int
    left: int
    shape: torch.Size

    @property
    def size(self) -> Tuple[int, int]:
        return tuple(self.values.shape[-2:])

    @property
    def slices(self) -> Tuple[slice, slice]:
        height, width = self.size
        return slice(self.top, self.top + height), slice(self.left, self.left + width)

    def dense(self) -> Tensor:
        full = self.values.new_zeros(self.shape)
        full[..., self.slices[0], self.slices[1]] = self.values
        return full

    def __add__(self, other: 'Window') -> 'Window':
        """The sum of two windows of the same map, on the window holding both."""
        top, left = min(self.top, other.top), min(self.left, other.left)
        bottom = max(self.top + self.size[0], other.top + other.size[0])
        right = max(self.left + self.size[1], other.left + other.size[1])
        values = self.values.new_zeros(*self.values.shape[:2], bottom - top, right - left)
        for part in (self, other):
            values[..., part.top - top:part.top - top + part.size[0],
                   part.left - left:part.left - left + part.size[1]] += part.values
        return Window(values, top, left, self.shape)


Gradient = Union[Tensor, Window, None]  # None: zero everywhere


def dense(grad: Gradient, like: Tensor) -> Tensor:
    """``grad`` as a full-size tensor (zeros like ``like`` for None)."""
    if grad is None:
        return torch.zeros_like(like)
    return grad.dense() if isinstance(grad, Window) else grad


def add(a: Gradient, b: Gradient) -> Gradient:
    """The sum of two gradients of the same map (None: zero)."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, Window) and isinstance(b, Window):
        return a + b
    return dense(a, None) + dense(b, None)


def common_corners(spans: Sequence[Tuple[int, int, int, int]], height: int, width: int):
    """One size ``(h, w)`` holding every span (``top, left, bottom, right``, ends exclusive, in
    a ``height x width`` map), and per span the corner of a window of that size that holds it
    and lies inside the map."""
    h = max(bottom - top for top, _, bottom, _ in spans)
    w = max(right - left for _, left, _, right in spans)
    return [(min(top, height - h), min(left, width - w)) for top, left, _, _ in spans], (h, w)


def any_nonzero(grad: Gradient) -> bool:
    if grad is None:
        return False
    return bool((grad.values if isinstance(grad, Window) else grad).any())


def values_of(grad: Gradient) -> Optional[Tensor]:
    """The stored values (the window's, or the full tensor)."""
    return grad.values if isinstance(grad, Window) else grad
