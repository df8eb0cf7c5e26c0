"""What kind of method a CAM method is (as captum's ``GradientAttribution`` /
``PerturbationAttribution`` types say): it picks the method's pipeline (``pipeline.py``), and
nothing else asks it."""
from enum import Enum

from pytorch_grad_cam.base_cam import BaseCAM

from ..errors import UnknownNameError


class MethodKind(str, Enum):
    """How a method makes its maps.

    * ``GRADIENT``: each detection's own gradients at the target layers, through the method's
      ``get_cam_image`` (GradCAM, HiResCAM, ODAM, ...): box-specific inputs.
    * ``ACTIVATION``: the target layers' activations only (EigenCAM, KPCA-CAM, FEM): the same
      map for every detection of an image.
    * ``PERTURBATION``: channel weights from re-runs of the detector with the target layer's
      channels perturbed, scored per detection (ScoreCAM, AblationCAM).
    * ``BLACK_BOX``: the detector on perturbed copies of the image, no layers (D-RISE).
    * ``ATTENTION``: each detection's gradients at a transformer's attention probabilities,
      captured in the same forward (relevancy); no target layers.
    """
    GRADIENT = 'gradient'
    ACTIVATION = 'activation'
    PERTURBATION = 'perturbation'
    BLACK_BOX = 'black-box'
    ATTENTION = 'attention'

    @property
    def reruns_detector(self) -> bool:
        """Whether the method scores re-runs of the detector (perturbed channels or images),
        following each detection by its box (or, for the mask target, its mask) among the raw
        candidates."""
        return self in (MethodKind.PERTURBATION, MethodKind.BLACK_BOX)

    @property
    def uses_layers(self) -> bool:
        """Whether the method reads target layers (black-box and attention ones do not)."""
        return self not in (MethodKind.BLACK_BOX, MethodKind.ATTENTION)


def method_kind(method) -> MethodKind:
    """The kind of a method instance: its ``kind`` attribute if it has one, else, for any
    ``BaseCAM`` (a user's own subclass too), gradient or activation as its ``uses_gradients``
    says."""
    kind = getattr(method, 'kind', None)
    if kind is not None:
        return MethodKind(kind)
    if isinstance(method, BaseCAM):
        return MethodKind.GRADIENT if method.uses_gradients else MethodKind.ACTIVATION
    raise UnknownNameError(
        f'{type(method).__name__} is not a CAM method: give a pytorch_grad_cam BaseCAM '
        "subclass, or a class with a 'kind' attribute (a mmdet_cam.methods.MethodKind)")
