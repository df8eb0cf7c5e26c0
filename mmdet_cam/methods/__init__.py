"""CAM methods, by registry name.

The formulas are pytorch_grad_cam's own classes, plus the detection-specific methods of this
package, one small file each (``odam``, ``ssgradcam``, ``ssgradcam++``, ``gcame``). Each
method has one :class:`MethodKind` (gradient, activation-only, perturbation, attention,
black-box), read by :func:`method_kind`, and each kind one pipeline (``pipeline.py``,
:func:`build_pipeline`): a gradient method gets only ``get_cam_image`` called, with a batch of
detections' activations and gradients and as ``targets`` one ``BoxTarget`` (box in
network-input pixels, label) per detection; ``drise`` is black-box: it runs the detector on
masked copies of the image instead.
``scorecam`` and ``ablationcam`` are the library's channel weights from extra forward passes
per channel, shared by all detections of an image (``perturbation.py``). ShapleyCAM
(second-order gradients) does not fit the engine and is not listed. A method of your own is a
``BaseCAM`` subclass registered with ``@CAM_METHODS.register_module()`` in a module named in
``custom_imports``.

``eigencam``, ``kpca_cam`` and ``fem`` use activations only: their map is the same for every
detection of an image (not box-specific). ``randomcam`` (random channel weights) is the
sanity-check baseline for localisation metrics.
"""
import inspect

from pytorch_grad_cam import (
    FEM,
    KPCA_CAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from torch import nn

from ..errors import UnknownNameError
from ..registry import CAM_METHODS, lookup, normalize_name
from ..settings import DEFAULT_METHOD

# register the methods of this package
from . import gcame, occlusion, odam, search, ssgradcam  # noqa: F401
from .drise import BlackBoxPipeline
from .gradient import ActivationPipeline, GradientPipeline
from .kinds import MethodKind, method_kind  # noqa: F401  (MethodKind: re-exported)
from .perturbation import PerturbationPipeline
from .pipeline import Pipeline
from .relevancy import AttentionPipeline

for _name, _cls in [('gradcam', GradCAM), ('gradcam++', GradCAMPlusPlus),
                    ('xgradcam', XGradCAM), ('hirescam', HiResCAM), ('layercam', LayerCAM),
                    ('eigengradcam', EigenGradCAM), ('gradcamelementwise', GradCAMElementWise),
                    ('eigencam', EigenCAM), ('kpca_cam', KPCA_CAM), ('fem', FEM),
                    ('randomcam', RandomCAM)]:
    CAM_METHODS.register_module(name=_name, module=_cls)

PIPELINES = {pipeline.kind: pipeline for pipeline in (
    GradientPipeline, ActivationPipeline, PerturbationPipeline, AttentionPipeline,
    BlackBoxPipeline)}

# Methods that pool a box's gradient into one weight per channel (or ignore gradients): their
# map of one box also lights up the other objects that drive the same channels.
CHANNEL_POOLED = ('gradcam', 'gradcam++', 'xgradcam', 'eigengradcam', 'eigencam', 'kpca_cam',
                  'fem', 'scorecam', 'ablationcam')


def box_specific_alternative(method) -> str:
    """For a channel-pooled method name, the method to suggest instead: the default, which the
    faithfulness benchmark chose among the box-specific ones; else ``''``."""
    if not isinstance(method, str):
        return ''
    pooled = {normalize_name(name) for name in CHANNEL_POOLED}
    return DEFAULT_METHOD if normalize_name(method) in pooled else ''


def build_cam_method(method, model: nn.Module):
    """A method instance from a registry name (any case; ``gradcam++`` = ``gradcamplusplus``),
    a config dict (``dict(type='drise', num_masks=2000)``: the other keys are the method's
    options), a class, or an instance (returned as is).

    A ``BaseCAM`` is built with no target layers, so it registers no hooks on ``model``.
    """
    options = {}
    if isinstance(method, dict):
        options = dict(method)
        if 'type' not in options:
            raise UnknownNameError(f'a method config needs a type, got {method}')
        method = options.pop('type')
    if isinstance(method, str):
        method = lookup(CAM_METHODS, method)
    if isinstance(method, type):
        arguments = (model,) if issubclass(method, BaseCAM) else ()
        extra = dict(target_layers=[]) if arguments else {}
        signature = inspect.signature(method)
        try:  # a refused call creates no instance (a BaseCAM's __del__ would fail on it)
            signature.bind(*arguments, **extra, **options)
            method = method(*arguments, **extra, **options)
        except (TypeError, ValueError) as error:
            known = [name for name in signature.parameters
                     if name not in ('model', 'target_layers', 'args', 'kwargs')]
            raise UnknownNameError(f'bad options for method {method.__name__}: {error} (its '
                                   f"options: {', '.join(known) or 'none'})") from None
    method_kind(method)  # refuses an object that is not a CAM method
    return method


def build_pipeline(method, model: nn.Module) -> Pipeline:
    """The pipeline of ``method``'s kind around the method built by :func:`build_cam_method`
    (``method``: as it takes)."""
    name = method.get('type') if isinstance(method, dict) else method
    if not isinstance(name, str):
        name = getattr(name, '__name__', type(name).__name__)
    instance = build_cam_method(method, model)
    return PIPELINES[method_kind(instance)](instance, name)


def method_names():
    """Registered method names, sorted."""
    CAM_METHODS.import_from_location()
    return sorted(CAM_METHODS.module_dict)
