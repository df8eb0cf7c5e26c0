"""The memory budget of the paths that read every raw candidate of a detector (D-RISE, the
perturbation methods, faithfulness metrics, named boxes, triage, mask tracking).

What mmdet-cam holds there grows with the candidates: each perturbed copy's raw candidates
(thousands of boxes x their fields; recorded masks for SOLO and Mask2Former) are kept until
the copies of a batch are weighed. :func:`memory_budget` sets the bytes they may take
(``CAMSettings.memory_budget``, the CLI's ``--memory-budget``); the readers then run as many
copies per forward as fit (:func:`copies_within`), and a single copy that does not fit is
refused with one line saying what to lower. The detector's own activations during a forward
are not counted: they are freed as it goes (no graph) and are what ``batch_size`` sets.
"""
import contextlib
import re
import threading
from typing import Iterator, Union

from ..errors import BadInputError

DEFAULT_BUDGET = 4 * 2 ** 30
_UNITS = {'': 1, 'B': 1, 'KB': 2 ** 10, 'MB': 2 ** 20, 'GB': 2 ** 30, 'TB': 2 ** 40}
_current = threading.local()


class MemoryBudgetError(BadInputError):
    """What one step needs does not fit the memory budget."""


def parse_size(value: Union[int, float, str]) -> int:
    """Bytes of ``value``: a number of bytes or a string such as ``'4GB'``, ``'512 MB'``
    (binary units)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        size = int(value)
    else:
        match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*', str(value).upper())
        if not match:
            raise BadInputError(f"memory budget {value!r} is not a size: use e.g. '4GB', "
                                "'512MB' or a number of bytes")
        prefix = match.group(2).rstrip('B')
        size = int(float(match.group(1)) * _UNITS[prefix + 'B' if prefix else ''])
    if size <= 0:
        raise BadInputError(f'memory budget {value!r} must be positive')
    return size


def format_size(size: int) -> str:
    for unit in ('TB', 'GB', 'MB', 'KB'):
        if size >= _UNITS[unit]:
            return f'{size / _UNITS[unit]:.1f} {unit}'
    return f'{size} B'


def current_budget() -> int:
    """The budget in force in this thread (:data:`DEFAULT_BUDGET` outside
    :func:`memory_budget`)."""
    return getattr(_current, 'size', DEFAULT_BUDGET)


@contextlib.contextmanager
def memory_budget(size: Union[int, float, str, None]) -> Iterator[int]:
    """While active in this thread, the candidate readers keep within ``size`` bytes (None:
    the budget already in force)."""
    previous = getattr(_current, 'size', None)
    _current.size = current_budget() if size is None else parse_size(size)
    try:
        yield _current.size
    finally:
        if previous is None:
            del _current.size
        else:
            _current.size = previous


def copies_within(per_copy: int, wanted: int, what: str) -> int:
    """How many of ``wanted`` copies, each holding ``per_copy`` bytes, fit the budget (at
    least 1); ``MemoryBudgetError`` when one does not."""
    budget = current_budget()
    if per_copy > budget:
        raise MemoryBudgetError(
            f'{what} takes {format_size(per_copy)}, over the memory budget of '
            f'{format_size(budget)}: raise memory_budget (--memory-budget) or lower the '
            f'input size')
    return max(1, min(wanted, budget // max(per_copy, 1)))


def held_bytes(value) -> int:
    """Bytes of the tensors in ``value`` (an InstanceData, or lists / dicts of them)."""
    import torch
    from mmengine.structures import BaseDataElement
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.numel()
    if isinstance(value, BaseDataElement):
        return sum(held_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(held_bytes(v) for v in value.values())
    return 0
