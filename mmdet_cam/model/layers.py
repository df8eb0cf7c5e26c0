"""Dotted layer names -> modules, without ``eval``.

Accepted forms: ``neck``, ``neck.out_convs.2``, ``neck.out_convs[2]``, ``neck.out_convs[-1]``,
``backbone.layer4``. Indices work on ``nn.Sequential`` / ``nn.ModuleList`` (negative ones too).
"""
import difflib
import re
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import UnknownNameError

_PART = re.compile(r'[A-Za-z_]\w*|-?\d+')


def _split(name: str) -> List[str]:
    parts = name.replace('[', '.').replace(']', '').split('.')
    if not name or not all(_PART.fullmatch(p) for p in parts):
        raise UnknownNameError(
            f'bad layer name {name!r}: use dotted attribute names and integer indices, '
            "e.g. 'neck.out_convs.2' or 'neck.out_convs[-1]'")
    return parts


def list_layers(model: nn.Module) -> List[str]:
    """All layer names of ``model`` that :func:`get_layer` accepts, in definition order."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``model`` called ``name``.

    Raises:
        UnknownNameError: naming the closest existing layers when there is no such layer.
    """
    module = model
    for part in _split(name):
        child = None
        if part.lstrip('-').isdigit():
            if isinstance(module, (nn.Sequential, nn.ModuleList)):
                index = int(part)
                if -len(module) <= index < len(module):
                    child = module[index]
        else:
            child = module._modules.get(part)
        if child is None:
            raise UnknownNameError(_not_found_message(model, name))
        module = child
    return module


def _not_found_message(model: nn.Module, name: str) -> str:
    wanted = '.'.join(_split(name))
    close = difflib.get_close_matches(wanted, list_layers(model), n=5, cutoff=0.6)
    hint = f' Close matches: {", ".join(close)}.' if close else ''
    return (f'{type(model).__name__} has no layer {name!r}.{hint} '
            'List them with mmdet_cam.list_layers(model) or --list-layers.')


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The canonical dotted name of ``layer`` inside ``model``."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f'{type(layer).__name__} is not a sub-module of {type(model).__name__}')


def predicting_detector(model: nn.Module) -> nn.Module:
    """The detector inside ``model`` that makes its predictions: the model itself, or for a
    semi-supervised wrapper (SoftTeacher and other ``SemiBaseDetector`` subclasses) its teacher or
    student, as ``semi_test_cfg.predict_on`` says."""
    semi_test_cfg = getattr(model, 'semi_test_cfg', None)
    if semi_test_cfg is not None:
        inner = getattr(model, semi_test_cfg.get('predict_on', 'teacher'), None)
        if isinstance(inner, nn.Module):
            return inner
    return model


def default_target_layers(model: nn.Module) -> List[str]:
    """Layers used when none are given (of the detector that predicts, for semi-supervised
    wrappers).

    DETR-style detectors (DETR, Deformable DETR, DINO, DDQ, Grounding DINO, ...): the last
    encoder layer, whose output is the image memory the decoder reads (mapped back onto the
    feature grids). A box's gradient there needs the decoder's backward only: DINO-R50 at
    800 px, 10 boxes, costs 2.1x its forward on a CPU against 17x at the neck, and on the
    trained DINO demo the maps are as faithful (deletion/insertion) as the neck's
    (docs/benchmarks.md). Other detectors: the whole neck (every pyramid level gets its own
    map, so each detection has a non-zero map whatever level produced it), else the whole
    backbone."""
    from mmdet.models.detectors import DetectionTransformer
    detector = predicting_detector(model)
    prefix = '' if detector is model else layer_name(model, detector) + '.'
    encoder_layers = getattr(getattr(detector, 'encoder', None), 'layers', None)
    if isinstance(detector, DetectionTransformer) and isinstance(encoder_layers, nn.ModuleList):
        # the last layer, not the encoder: Grounding DINO's encoder also returns text memory
        return [f'{prefix}encoder.layers.{len(encoder_layers) - 1}']
    for part in ('neck', 'backbone'):
        if getattr(detector, part, None) is not None:
            return [prefix + part]
    raise UnknownNameError(
        f'{type(model).__name__} has neither a neck nor a backbone: pass target_layers')


def resolve_layers(model: nn.Module,
                   layers: Optional[Union[str, nn.Module, Sequence[Union[str, nn.Module]]]]
                   ) -> List[nn.Module]:
    """Modules for ``layers``: names, modules, a mix of both, or None for the defaults."""
    if layers is None:
        layers = default_target_layers(model)
    elif isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not layers:
        raise UnknownNameError('target_layers is empty: give at least one layer or None')
    return [get_layer(model, layer) if isinstance(layer, str) else layer for layer in layers]


def layer_output_shapes(model: nn.Module, inputs, data_samples) -> List[Tuple[str, str, str]]:
    """``(name, type, output shape)`` of every layer for one preprocessed image, in call
    order of first use (layers the forward pass never calls are left out)."""
    rows, handles = {}, []

    def describe(output) -> str:
        if isinstance(output, torch.Tensor):
            return str(list(output.shape))
        if isinstance(output, (tuple, list)):
            return '(' + ', '.join(describe(o) for o in output) + ')'
        return type(output).__name__

    def record(name):
        def hook(module, inputs, output):
            rows.setdefault(name, (type(module).__name__, describe(output)))
        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model.predict(inputs, data_samples)
    finally:
        for handle in handles:
            handle.remove()
    return [(name, kind, shape) for name, (kind, shape) in rows.items()]
