"""Errors caused by what the user asked for. The CLI prints them as one line, no traceback."""


class DetCAMError(Exception):
    """Base class of mmdet-cam's user-facing errors (bad names, paths, inputs)."""

    def __str__(self):  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ''


class UnknownNameError(DetCAMError, KeyError):
    """A method, target, layer or config name that does not exist."""


class UnsupportedModelError(DetCAMError, RuntimeError):
    """The detector (or the chosen layer) cannot give exact per-detection gradients."""


class CheckpointError(DetCAMError, RuntimeError):
    """A checkpoint that is missing, unreadable, or refused by a weights-only load."""


class InputNotFoundError(DetCAMError, FileNotFoundError):
    """A config, checkpoint or image path that does not exist."""


class BadImageError(DetCAMError, ValueError):
    """An image that cannot be read or has an unsupported layout."""


class DeviceError(DetCAMError, RuntimeError):
    """A device this host does not have (``cuda`` without CUDA, ``cuda:3`` with one GPU)."""


class DetectorFailedError(DetCAMError, RuntimeError):
    """mmdet itself cannot build or run the detector (same failure without mmdet-cam)."""


class BadInputError(DetCAMError, ValueError):
    """An argument whose value cannot be used (an empty or out-of-image box, ...)."""
