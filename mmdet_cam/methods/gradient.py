"""The pipelines of methods that read the target layers in the detector's own forward: each
box's gradients through pytorch_grad_cam's formula (:class:`GradientPipeline`), or the
activations alone (:class:`ActivationPipeline`)."""
import numpy as np
from pytorch_grad_cam.base_cam import BaseCAM

from ..engine.fusion import FusedMaps, fuse
from ..engine.request import Request
from ..engine.session import BoxCAMs, Session
from ..errors import BadInputError
from .kinds import MethodKind
from .pipeline import Pipeline

# BaseCAM's steps that mmdet-cam does itself, per box: a subclass that overrides one of them
# would be silently ignored, so it is refused (override get_cam_image or get_cam_weights)
_STEPS_DONE_HERE = ('forward', '__call__', 'compute_cam_per_layer', 'aggregate_multi_layers')


class _LayerPipeline(Pipeline):
    def __init__(self, method, name: str = ''):
        super().__init__(method, name)
        if isinstance(method, BaseCAM):
            _refuse_own_aggregation(type(method))


def _refuse_own_aggregation(cls: type) -> None:
    """Refuse a ``BaseCAM`` subclass of a user's that overrides a step mmdet-cam replaces."""
    for step in _STEPS_DONE_HERE:
        owner = next(c for c in cls.__mro__ if step in vars(c))
        if not owner.__module__.startswith(('pytorch_grad_cam', 'mmdet_cam')):
            raise BadInputError(
                f'{cls.__name__} overrides BaseCAM.{step}, which mmdet-cam does not call: it '
                'makes each box\'s map from get_cam_image and fuses layers itself (fuse='
                "'mean', 'max' or 'own'); override get_cam_image or get_cam_weights instead")


class GradientPipeline(_LayerPipeline):
    """Each box's own gradients at the target layers, through the method's
    ``get_cam_image`` (GradCAM, HiResCAM, ODAM, ...), chunk by chunk of boxes."""

    kind = MethodKind.GRADIENT

    def explain(self, session: Session, request: Request) -> BoxCAMs:
        how = session.settings.fuse
        with session.forward(request) as forward:
            if not len(forward.detections):
                return forward.nothing()
            layer_maps = forward.layer_maps(self.method)
            pairs, zero, own = forward.box_gradients(layer_maps.maps)
        return forward.result(FusedMaps(layer_maps.fusion(how, own), pairs), zero, own)


class ActivationPipeline(_LayerPipeline):
    """The target layers' activations only (EigenCAM, KPCA-CAM, FEM): one map per image, the
    same for every box; with ``fuse='own'`` each box's gradients only choose its levels."""

    kind = MethodKind.ACTIVATION

    def explain(self, session: Session, request: Request) -> BoxCAMs:
        how = session.settings.fuse
        own_levels = how == 'own'
        with session.forward(request) as forward:
            if not len(forward.detections):
                return forward.nothing()
            layer_maps = forward.layer_maps(self.method, gradients=own_levels)
            shared = layer_maps.shared()
            count = len(forward.detections)
            if not own_levels:
                return forward.result(np.repeat(fuse(shared, how), count, axis=0),
                                      [[]] * count)
            maps, zero, own = forward.box_gradients(lambda grads: fuse(
                [np.repeat(m, len(grads.boxes), axis=0) for m in shared], how, grads.own))
        return forward.result(maps, zero, own)
