"""mmdet-cam: per-detection class-activation maps for MMDetection 3.x detectors.

``import mmdet_cam`` (or ``custom_imports = dict(imports=['mmdet_cam'])`` in an mmdet config)
registers the plugin's CAM methods, targets and reshape transforms, and ``DetCAMHook``,
``CAMLocalizationMetric`` and ``CAMFaithfulnessMetric`` in mmdet's registries.
"""
from . import methods  # noqa: F401  (register the built-in entries)
from .api import DetCAM, DetCAMResult
from .engine import reshape, targets  # noqa: F401
from .errors import (
    DetCAMError,
    DetCAMWarning,
    NonFiniteGradientWarning,
    SaturatedScoreWarning,
    UntrainedModelWarning,
    ZeroGradientWarning,
)
from .model.detector import build_detector, resolve_config
from .model.layers import get_layer, list_layers
from .outputs import write_report
from .registry import CAM_METHODS, CAM_TARGETS, RESHAPE_TRANSFORMS
from .runner.evaluation import CAMFaithfulnessMetric, CAMLocalizationMetric
from .runner.hooks import DetCAMHook
from .settings import CAMSettings, OutputSettings
from .version import __version__

__all__ = [
    'DetCAM', 'DetCAMResult', 'DetCAMHook', 'CAMLocalizationMetric', 'CAMFaithfulnessMetric',
    'build_detector', 'resolve_config', 'get_layer', 'list_layers', 'DetCAMError',
    'DetCAMWarning', 'ZeroGradientWarning', 'NonFiniteGradientWarning', 'UntrainedModelWarning',
    'SaturatedScoreWarning',
    'CAM_METHODS', 'CAM_TARGETS', 'RESHAPE_TRANSFORMS', 'CAMSettings', 'OutputSettings',
    'write_report', '__version__'
]
