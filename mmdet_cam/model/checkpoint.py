"""Checkpoint loading, **weights-only** by default.

A checkpoint is a pickle: a full unpickle can run code from the file, so it is only done on the
explicit ``trust=True`` (CLI: ``--trust-checkpoint``). The few non-tensor types that mmengine's
Runner writes into checkpoints are allow-listed.
"""
import contextlib
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from mmengine.runner import load_checkpoint as mmengine_load_checkpoint
from torch import nn

from ..errors import CheckpointError, InputNotFoundError
from ..patching import swapped_item

# HistoryBuffer's built-in statistics. mmengine registers them in
# ``HistoryBuffer._statistics_methods`` only when the first buffer is created, so that dict alone
# is empty in a fresh process; methods registered with ``register_statistics`` are added to it.
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj, name):
    """The only ``getattr`` a weights-only load may run: mmengine's ``HistoryBuffer`` pickles
    its statistics methods (``min``, ``mean``, ...) as ``getattr(HistoryBuffer, name)``."""
    from mmengine.logging import HistoryBuffer
    known = set(_HISTORY_BUFFER_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in known and callable(getattr(obj, name, None)):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'refused getattr({getattr(obj, "__name__", obj)!r}, {name!r})')


def _safe_globals() -> list:
    """Non-tensor types found in mmengine Runner checkpoints that are safe to rebuild: the
    message hub's ``HistoryBuffer`` and numpy arrays and scalars (an empty array pickles its
    empty data as ``bytes()``)."""
    from mmengine.logging import HistoryBuffer
    numpy_core = np._core if hasattr(np, '_core') else np.core
    safe = [HistoryBuffer, np.ndarray, np.dtype, numpy_core.multiarray.scalar,
            numpy_core.multiarray._reconstruct, bytes,
            (_history_buffer_getattr, 'builtins.getattr')]
    safe += [type(np.dtype(t)) for t in
             ('float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8', 'uint64',
              'uint32', 'uint16', 'uint8', 'bool')]
    return safe


@contextlib.contextmanager
def _weights_only(enabled: bool):
    """Force torch.load's ``weights_only`` for every load inside (mmengine's loaders do not
    pass it: local files get torch's default, URLs get ``False``)."""
    key = 'TORCH_FORCE_WEIGHTS_ONLY_LOAD' if enabled else 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
    with swapped_item(os.environ, key, '1'), \
            torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Environment variable TORCH_FORCE')
        yield


def load_checkpoint(model: nn.Module, checkpoint: str, trust: bool = False) -> dict:
    """Load ``checkpoint`` (path or URL) into ``model`` with mmengine's loader; returns it."""
    is_url = str(checkpoint).startswith(('http://', 'https://'))
    if not is_url and not Path(checkpoint).is_file():
        raise InputNotFoundError(f'checkpoint not found: {checkpoint}')
    try:
        with _weights_only(not trust):
            return mmengine_load_checkpoint(model, str(checkpoint), map_location='cpu')
    except pickle.UnpicklingError as error:
        culprit = next((line.strip() for line in str(error).splitlines()
                        if 'Unsupported global' in line or 'refused' in line), 'unknown type')
        raise CheckpointError(
            f'checkpoint {checkpoint} was refused by a weights-only load ({culprit}). '
            'It holds pickled objects that can run code when loaded: if you trust the file, '
            'pass trust_checkpoint=True (CLI: --trust-checkpoint)') from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f'cannot load checkpoint {checkpoint}: {error}') from None
