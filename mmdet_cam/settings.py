"""The settings of a run, each default in one place.

:class:`CAMSettings` says what is explained and how (``DetCAM`` takes its fields as keyword
arguments); :class:`OutputSettings` how results are written (the CLI's and the hook's files).
The API, the CLI and ``DetCAMHook`` all build them with :meth:`CAMSettings.of` /
:meth:`OutputSettings.of`, so none of them repeats a default.
"""
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .errors import BadInputError, UnknownNameError

# The default method, chosen by benchmarks/faithfulness.py (docs/benchmarks.md, Faithfulness)
DEFAULT_METHOD = 'odam'
# The method that finds the pixels that decided a box, chosen by benchmarks/evidence.py
# (docs/benchmarks.md, Evidence known by construction): slower, so not the default
PIXEL_EVIDENCE_METHOD = 'occlusion'
FUSE_MODES = ('mean', 'max', 'own')


class _Settings:
    @classmethod
    def names(cls) -> List[str]:
        """The option names, in order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def of(cls, base: Optional['_Settings'] = None, **changes):
        """``base`` (default: all defaults) with ``changes``; unknown names are refused with
        the names there are."""
        if base is not None and not isinstance(base, cls):
            raise BadInputError(f'expected {cls.__name__} settings, got {type(base).__name__} '
                                f'{base!r}: pass single options by name (e.g. target_layers=...)')
        unknown = sorted(set(changes) - set(cls.names()))
        if unknown:
            raise UnknownNameError(f"unknown {cls.__name__} option(s) {', '.join(unknown)}; "
                                   f"the options are {', '.join(cls.names())}")
        return dataclasses.replace(base or cls(), **changes)

    @classmethod
    def split(cls, options: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """``options`` as (those that are fields of ``cls``, the rest)."""
        names = set(cls.names())
        return ({k: v for k, v in options.items() if k in names},
                {k: v for k, v in options.items() if k not in names})


@dataclass(frozen=True)
class CAMSettings(_Settings):
    """What is explained and how.

    Args:
        method: a ``CAM_METHODS`` name (any case), a config dict (``dict(type='drise',
            num_masks=2000)``), a class or an instance. Defaults to the method the
            faithfulness benchmark chose (``DEFAULT_METHOD``).
        target_layers: layer names or modules; None: every neck level (for DETR-style
            detectors the last encoder layer; ``model.layers.default_target_layers``).
        target: ``'score'``, ``'logit'``, ``'bbox'`` (a ``CAM_TARGETS`` name), a config dict
            (``dict(type='bbox', coord='x2')``) or a callable ``pred_instances -> values``.
            Defaults to ``'score'``.
        score_thr: explain detections scoring at least this much. Defaults to 0.3.
        topk: explain at most this many (highest scores). Defaults to None (all).
        classes: keep only these class ids or names. Defaults to None (all).
        fuse: ``'mean'`` or ``'max'`` over layers and pyramid levels, or ``'own'``: each
            detection's own level only. Defaults to ``'mean'``, and to ``'own'`` for the
            ``mask`` target: a box score's gradient reaches one pyramid level (the others add
            zero maps), a mask's reaches them all through the mask feature branch, and the
            coarse levels blur its map (instance demo: pointing in the GT mask 0.90 with
            ``'mean'``, 0.99 with ``'own'``; docs/masks.md).
        eigen_smooth: pytorch_grad_cam's first-principal-component smoothing.
        reshape_transform: ``'auto'`` (token sequences -> maps) or a callable.
        batch_size: detections whose gradients are kept in memory at once. Defaults to 16.
        local_replay: back-propagate each detection through the part of the box head it
            depends on instead of the whole head, and at a deformable DETR's encoder memory
            through the decoder's queries only for ODAM, HiResCAM and GradCAM (same maps).
            Defaults to True.
        batched_backward: where no local replay applies (DETR-style heads, the mask target),
            back-propagate many detections in one vmapped pass (``is_grads_batched``; same
            maps). Defaults to False: for DINO-R50 at 800 px it saved nothing measurable on a
            CPU (peak memory 6.4 -> 11.9 GB) and about 10% on an H200 GPU (CUDA memory 4.4 ->
            9.7 GB; docs/benchmarks.md).
        memory_budget: what the paths that read every raw candidate (D-RISE, the perturbation
            methods, faithfulness metrics, named boxes, mask tracking) may hold at once: bytes
            or a size such as ``'4GB'``. They run as many perturbed copies per forward as fit,
            and one image whose candidates alone exceed it is refused with one line
            (``engine.memory``). Defaults to ``'4GB'``.
        texts: the prompt of a text-prompted detector (Grounding DINO, GLIP): entities
            separated by ``' . '`` (``'cat . dog'``) or a list of entity names. Defaults to None:
            the model's class names, as mmdet's test configs prompt it.
    """
    method: Any = DEFAULT_METHOD
    target_layers: Any = None
    target: Union[str, dict, Callable] = 'score'
    score_thr: float = 0.3
    topk: Optional[int] = None
    classes: Optional[Sequence[Union[int, str]]] = None
    fuse: Optional[str] = None
    eigen_smooth: bool = False
    reshape_transform: Union[str, Callable] = 'auto'
    batch_size: int = 16
    local_replay: bool = True
    batched_backward: bool = False
    memory_budget: Union[int, str] = '4GB'
    texts: Optional[Union[str, Sequence[str]]] = None

    def __post_init__(self):
        from .engine.memory import parse_size
        parse_size(self.memory_budget)  # a bad size is refused here, in one line
        if self.fuse is not None and self.fuse not in FUSE_MODES:
            raise UnknownNameError(
                f"fuse must be one of {', '.join(FUSE_MODES)}, got {self.fuse!r}")


@dataclass(frozen=True)
class OutputSettings(_Settings):
    """How results are written (``ResultWriter``: the CLI and ``DetCAMHook``).

    Args:
        alpha: heatmap opacity in overlays. Defaults to 0.5.
        renormalize: min-max scale each map inside its box (the rest set to 0).
        per_box: also write one image per detection.
        save_npy: also write the maps as ``.npy``.
        save_all: also write ``<stem>_original.jpg`` and ``<stem>_detection.jpg``.
        html: also write the interactive report (``index.html``).
        atlas: also write the evidence atlas at the end of the run: per class, the mean map
            in the box frame and its mass inside / around / outside the boxes
            (``atlas.json``, ``atlas_<class>.jpg``).
    """
    alpha: float = 0.5
    renormalize: bool = False
    per_box: bool = False
    save_npy: bool = False
    save_all: bool = False
    html: bool = False
    atlas: bool = False

    def __post_init__(self):
        if not 0 <= self.alpha <= 1:
            raise BadInputError(f'alpha must be between 0 and 1, got {self.alpha}')
