"""Gradients for saturated scores: a score of exactly 1.0 still has a map.

A detector's score is an activation (a sigmoid, a softmax) of its head's raw class output,
the *logit*. In float32 a sigmoid reaches 1.0 from a logit of about 17 on, and its gradient
``s (1 - s)`` is then exactly 0: the score is explained by nothing. While
:func:`saturation_proof_scores` is active, every sigmoid and softmax of a box head's
post-processing (``predict_by_feat``) returns ``act(x)`` plus a term that is 0 forward and
``eps`` backward: the same values, and a gradient ``act'(x) + eps`` that never vanishes.
:func:`log_odds` divides the score's gradient by ``s (1 - s) + eps``, so its gradient is the
logit's, ``dx``, whether the score is saturated or not (for a softmax: the log-odds of the
class; at saturation, its pre-softmax value). A score's own gradient changes by ``eps`` only
(``1e-12`` against the ``s (1 - s) >= 1e-4`` of any score that is not saturated).

Heads whose score multiplies several activations (YOLOX's class x objectness, centerness in
FCOS or ATSS) get, at saturation, the sum of those logits' gradients, each weighted by the
others' probabilities.
"""
import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .capture import box_heads, post_processing_under

EPS = 1e-12
# a score this close to 1 has a gradient too small to show (s (1 - s) < 1e-4)
SATURATION = 1e-4


def saturated(scores: Tensor) -> Tensor:
    """Boolean: which scores are saturated (within :data:`SATURATION` of 1)."""
    return (1 - scores.detach()) < SATURATION


def log_odds(scores: Tensor) -> Tensor:
    """``log(s / (1 - s))`` of each score, whose gradient is the logit's (``dx``) even where
    ``s`` is exactly 1 (with :func:`saturation_proof_scores` active in the forward)."""
    detached = scores.detach().double()
    slope = (detached * (1 - detached) + EPS).to(scores.dtype)
    return torch.logit(detached, eps=1e-15).to(scores.dtype) + (scores - scores.detach()) / slope


class _Floor(torch.autograd.Function):
    """0 forward, ``EPS x`` the incoming gradient backward (written without ``detach()``, which
    post-processing may be made to keep in the graph: ``capture.DetachKeepsGraph``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * EPS


class _ActivationsWithFloor(TorchFunctionMode):
    """Sigmoids and softmaxes of tensors in the graph get a gradient of at least ``EPS``."""

    ACTIVATIONS = {torch.sigmoid, Tensor.sigmoid, F.sigmoid, torch.softmax, Tensor.softmax,
                   F.softmax}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in self.ACTIVATIONS:
            x = args[0] if args else kwargs.get('input')
            if isinstance(x, Tensor) and x.requires_grad and x.shape == result.shape:
                result = result + _Floor.apply(x)
        return result


@contextlib.contextmanager
def saturation_proof_scores(model: nn.Module) -> Iterator[None]:
    """While active, the box heads' (``capture.box_heads``) post-processing activations keep
    a gradient at saturation (see the module's docstring)."""
    with post_processing_under(box_heads(model), _ActivationsWithFloor):
        yield
