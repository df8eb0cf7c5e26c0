"""Scoped, restorable changes to objects mmdet-cam does not own.

Every runtime replacement in mmdet-cam goes through :func:`swapped` (an attribute of a module,
a class or an instance) or :func:`swapped_item` (a key of a mapping such as ``os.environ``):
a context manager that puts back exactly what it found, also when the block raises, and also
when uses nest. Nothing of ``torch`` itself is replaced: torch functions that must behave
differently inside the engine are intercepted by a ``torch.overrides.TorchFunctionMode``
(``engine/capture.py``), whose stack is per thread.

What is swapped here is shared by every thread of the process (mmdet's module functions,
mmcv's NMS, a model's heads). :data:`PATCH_LOCK`, a re-entrant lock, is held while any swap
is active, and the engine's entry points hold it for a whole call, so two threads never see
each other's swaps half-way; code that runs mmdet *outside* mmdet-cam in another thread
meanwhile still sees them.
"""
import contextlib
import threading
from typing import Any, Iterator, MutableMapping

PATCH_LOCK = threading.RLock()

_MISSING = object()


@contextlib.contextmanager
def swapped(owner: Any, name: str, value: Any) -> Iterator[Any]:
    """Set ``owner.<name>`` to ``value`` while active; on exit put back what was there.

    An attribute the instance held itself (including a child module of an ``nn.Module``) is
    set back to the same object; one that came from the class (a method) or did not exist is
    deleted again, so the class's attribute shows through as before.

    Args:
        owner: a module, class or instance.
        name: the attribute's name.
        value: what ``owner.<name>`` is while active.

    Yields:
        The object ``owner.<name>`` gave before (e.g. the bound method being wrapped).

    Example:
        >>> with swapped(head, 'predict_by_feat', wrapped):  # doctest: +SKIP
        ...     model.predict(inputs, samples)
    """
    with PATCH_LOCK:
        before = getattr(owner, name, _MISSING)
        held = _held_by_instance(owner, name)
        setattr(owner, name, value)
        try:
            yield None if before is _MISSING else before
        finally:
            if held:
                setattr(owner, name, before)
            else:
                delattr(owner, name)


@contextlib.contextmanager
def swapped_item(mapping: MutableMapping, key: Any, value: Any) -> Iterator[None]:
    """Set ``mapping[key]`` to ``value`` while active; on exit put back the old value, or
    remove the key if it was absent."""
    with PATCH_LOCK:
        before = mapping.get(key, _MISSING)
        mapping[key] = value
        try:
            yield
        finally:
            if before is _MISSING:
                mapping.pop(key, None)
            else:
                mapping[key] = before


def _held_by_instance(owner: Any, name: str) -> bool:
    """Whether ``owner`` itself holds ``name`` (in its ``__dict__``, or for an ``nn.Module``
    among its parameters, buffers or children), rather than its class or nobody."""
    own = getattr(owner, '__dict__', {})
    if name in own:
        return True
    return any(name in own.get(registry, ())
               for registry in ('_parameters', '_buffers', '_modules'))
