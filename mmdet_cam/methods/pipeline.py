"""How a kind of method makes its maps: one pipeline class per :class:`MethodKind`.

A pipeline wraps a method instance and has one entry point, ``pipeline(session, request)``:
the :class:`~mmdet_cam.engine.session.Session` of one image and the
:class:`~mmdet_cam.engine.request.Request` (which boxes, which value) in, per-box maps out
(:class:`~mmdet_cam.engine.session.BoxCAMs`). :class:`Pipeline` is the template (as
pytorch_grad_cam's ``BaseCAM`` is): it checks what the kind can honour and tells a detector
failure from ours; each kind overrides :meth:`Pipeline.explain` alone:

* :class:`GradientPipeline` (``gradient.py``): each box's own gradients -> the formula;
* :class:`ActivationPipeline` (``gradient.py``): activations only, the same map for every box;
* ``PerturbationPipeline`` (``perturbation.py``): re-runs with channels perturbed;
* ``AttentionPipeline`` (``relevancy.py``): gradients at the attention probabilities;
* ``BlackBoxPipeline`` (``drise.py``): the detector on perturbed copies of the image.

:func:`~mmdet_cam.methods.build_pipeline` picks the pipeline of a method's kind.
"""
from torch import nn

from ..engine.mask_logits import check_candidate_masks, check_mask_head
from ..engine.request import Request
from ..engine.session import BoxCAMs, Session
from ..errors import BadInputError, DetCAMError
from .kinds import MethodKind


class Pipeline:
    """A method of one kind, run on a session for a request.

    Args:
        method: the method instance (a ``BaseCAM`` or one of this package's methods).
        name: the method's name, for messages.
    """

    kind: MethodKind
    uses_layers = True  # whether the method reads target layers

    def __init__(self, method, name: str = ''):
        self.method = method
        self.name = name or type(method).__name__

    def refusal(self, request: Request) -> str:
        """Why this kind cannot explain what ``request`` asks, in one line; ``''`` where it
        can."""
        return ''

    def refuse(self, request: Request) -> None:
        """Raise ``BadInputError`` with :meth:`refusal`'s line, if there is one."""
        refusal = self.refusal(request)
        if refusal:
            raise BadInputError(f'{self.name}: {refusal}')

    def check(self, request: Request, detector: nn.Module) -> None:
        """Refuse, before any image, a request this method cannot honour for ``detector``."""
        self.refuse(request)
        if request.reads_masks:
            check_mask_head(detector)

    def __call__(self, session: Session, request: Request) -> BoxCAMs:
        """The maps of ``request``'s boxes in ``session``'s image."""
        self.refuse(request)
        try:
            return self.explain(session, request)
        except DetCAMError:
            raise
        except Exception:
            session.check_detector()  # mmdet's own inference fails too: the detector's fault
            raise

    def explain(self, session: Session, request: Request) -> BoxCAMs:
        """The kind's own way from session and request to maps."""
        raise NotImplementedError


class ReRunningPipeline(Pipeline):
    """A kind that scores re-runs of the detector (perturbed channels or images), following
    each detection by its tracked score (or, for the mask target, its mask) among the raw
    candidates of each re-run: it explains the score or the mask of one class."""

    def refusal(self, request: Request) -> str:
        if request.target_name not in ('score', 'mask'):
            return ('it follows each detection by its score among re-runs of the detector, so it '
                    f'explains the score or the mask, not the {request.target_name} target; a '
                    'gradient method (e.g. odam) explains that')
        if request.contrast:
            return ("it follows each detection by one class's score among re-runs of the "
                    'detector: it cannot explain a contrast of two classes')
        return ''

    def check(self, request: Request, detector: nn.Module) -> None:
        super().check(request, detector)
        if request.reads_masks:  # they follow each mask among the raw candidates' masks
            check_candidate_masks(detector, self.name)
