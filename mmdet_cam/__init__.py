"""mmdet-cam: per-detection class-activation maps for MMDetection 3.x."""
from .version import __version__

__all__ = ['__version__']
