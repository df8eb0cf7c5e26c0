"""Errors caused by what the user asked for (the CLI prints them as one line, no traceback),
and the warnings mmdet-cam gives (each with the attributes a caller filters on)."""


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


class DetCAMWarning(UserWarning):
    """Base class of mmdet-cam's warnings."""


class UntrainedModelWarning(DetCAMWarning):
    """A detector built without a checkpoint: random weights, maps without meaning."""


class ZeroGradientWarning(DetCAMWarning):
    """A target layer received no gradient from a detection (its map there is all zero).

    Attributes:
        detection: the detection's index in the result.
        label: its class id.
        layers: the target layers that got no gradient from it.
    """

    def __init__(self, message: str, detection: int = -1, label: int = -1, layers=()):
        super().__init__(message)
        self.detection, self.label, self.layers = detection, label, list(layers)


class SaturatedScoreWarning(DetCAMWarning):
    """Detections whose score is saturated (within 1e-4 of 1, so its gradient is 0 or nearly):
    the ``score`` target explains their log-odds instead, which has the logit's gradient.

    Attributes:
        detections: their indices in the result.
    """

    def __init__(self, message: str, detections=()):
        super().__init__(message)
        self.detections = list(detections)


class NonFiniteGradientWarning(DetCAMWarning):
    """Detections whose gradient held NaN or inf values, which were set to 0 in their maps.

    Attributes:
        detections: their indices in the result.
    """

    def __init__(self, message: str, detections=()):
        super().__init__(message)
        self.detections = list(detections)
