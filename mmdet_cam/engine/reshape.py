"""Reshape transforms: a layer's raw output -> a list of ``[B, C, H, W]`` maps.

The engine applies the same transform to activations and to their gradients. Every transform
here is a pure re-indexing (no ``abs``, no scaling), so gradient signs are kept.

A transform is called as ``transform(tensor, feature_shapes)``, where ``feature_shapes`` are
the ``(h, w)`` sizes of the neck's (or backbone's) output levels seen in the same forward
pass. A plain one-argument callable in pytorch_grad_cam's style (``tensor -> tensor``) is
accepted too.
"""
import inspect
from typing import Callable, List, Sequence, Tuple, Union

from torch import Tensor

from ..errors import UnsupportedModelError
from ..registry import RESHAPE_TRANSFORMS, lookup


@RESHAPE_TRANSFORMS.register_module(name='auto')
class AutoReshape:
    """4-D maps pass through; 3-D token sequences ``[B, N, C]`` become maps.

    The tokens of DETR-style encoders are the pyramid levels flattened and concatenated, so
    ``N`` must equal ``sum(h * w)`` over the feature levels (split into one map per level) or
    ``h * w`` of one of them.
    """

    def __call__(self, tensor: Tensor,
                 feature_shapes: Sequence[Tuple[int, int]] = ()) -> List[Tensor]:
        if tensor.dim() == 4:
            return [tensor]
        if tensor.dim() == 3:
            return self._tokens_to_maps(tensor, feature_shapes)
        raise UnsupportedModelError(
            f'cannot turn an output of shape {tuple(tensor.shape)} into [B, C, H, W] maps')

    @staticmethod
    def _tokens_to_maps(tokens: Tensor, shapes: Sequence[Tuple[int, int]]) -> List[Tensor]:
        batch, length, channels = tokens.shape
        sizes = [h * w for h, w in shapes]
        if sizes and sum(sizes) == length:
            pieces = tokens.split(sizes, dim=1)
        elif length in sizes:
            pieces, shapes = [tokens], [shapes[sizes.index(length)]]
        else:
            raise UnsupportedModelError(
                f'a token sequence of shape {tuple(tokens.shape)} does not match the feature '
                f'levels {list(shapes)} (e.g. decoder queries have no spatial layout): '
                'choose an encoder or convolutional layer')
        return [p.transpose(1, 2).reshape(batch, channels, h, w)
                for p, (h, w) in zip(pieces, shapes)]


class _SingleArgument:
    """Adapts a pytorch_grad_cam style ``tensor -> tensor`` transform."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn = fn

    def __call__(self, tensor: Tensor, feature_shapes=()) -> List[Tensor]:
        out = self.fn(tensor)
        return list(out) if isinstance(out, (list, tuple)) else [out]


def build_reshape_transform(spec: Union[str, Callable, None]) -> Callable:
    """A transform from a registry name, a callable, or None (``'auto'``)."""
    if spec is None:
        spec = 'auto'
    if isinstance(spec, str):
        return lookup(RESHAPE_TRANSFORMS, spec)()
    try:  # registry-style transforms accept the feature shapes, library-style ones do not
        takes_shapes = len(inspect.signature(spec).parameters) >= 2
    except (TypeError, ValueError):
        takes_shapes = False
    return spec if takes_shapes else _SingleArgument(spec)
