"""Registries of mmdet-cam, scoped like mmdet's (``mmdet_cam``).

* ``CAM_METHODS``: CAM formulas. The entries are :class:`pytorch_grad_cam.base_cam.BaseCAM`
  subclasses; the engine only calls their ``get_cam_image`` on activations and per-box
  gradients, so a new method is a ``BaseCAM`` subclass plus ``@CAM_METHODS.register_module()``.
* ``CAM_TARGETS``: what a detection's map explains (its score, logit, a box coordinate).
* ``RESHAPE_TRANSFORMS``: turn a layer's raw output (e.g. transformer tokens) into
  ``[B, C, H, W]`` maps; applied identically to activations and gradients.

Names are looked up case-insensitively, ignoring ``-``, ``_`` and spaces, and ``++`` reads as
``plusplus`` (so ``gradcam++``, ``GradCAMPlusPlus`` and ``grad-cam-plusplus`` are one method).
"""
import difflib
import re

from mmengine.registry import Registry

from .errors import UnknownNameError

CAM_METHODS = Registry('cam method', scope='mmdet_cam', locations=['mmdet_cam.methods'])
CAM_TARGETS = Registry('cam target', scope='mmdet_cam', locations=['mmdet_cam.engine.targets'])
RESHAPE_TRANSFORMS = Registry(
    'reshape transform', scope='mmdet_cam', locations=['mmdet_cam.engine.reshape'])


def normalize_name(name: str) -> str:
    """Canonical form of a registry name: ``'Grad-CAM++'`` -> ``'gradcamplusplus'``."""
    return re.sub(r'[\s_\-]', '', name.replace('++', 'plusplus').lower())


def lookup(registry: Registry, name: str):
    """Return the entry of ``registry`` called ``name`` (case/punctuation-insensitive).

    Raises:
        UnknownNameError: with the valid names and the closest ones, when there is no such entry.
    """
    registry.import_from_location()
    entries = {normalize_name(key): value for key, value in registry.module_dict.items()}
    try:
        return entries[normalize_name(name)]
    except KeyError:
        valid = sorted(registry.module_dict)
        close = difflib.get_close_matches(name.lower(), valid, n=3, cutoff=0.5)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise UnknownNameError(f'unknown {registry.name} {name!r}.{hint} '
                       f'Valid names: {", ".join(valid)}.') from None
