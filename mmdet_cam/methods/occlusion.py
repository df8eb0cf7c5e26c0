"""``occlusion``: which pixels, hidden, take each detection's score away (Zeiler and Fergus,
ECCV 2014), computed by captum's ``Occlusion`` with every detection of the image at once.

A square window slides over the image as the test pipeline resized it; under it the pixels
are replaced by a baseline (by default the image blurred at the window's scale: a small part
vanishes into its surroundings, as the evidence benchmark's intervention removes a cue). The
function captum attributes is, per detection, its *tracked score*: the best IoU x probability
of its class among the raw candidates of the occluded image (``mmdet_cam.boxes.tracked_score``;
for the mask target, mask IoU), as D-RISE and the deletion metric follow a detection. captum
takes that ``[copies, detections]`` output whole, so every detection is explained by the same
forwards: an image costs about ``(h / stride) x (w / stride)`` forwards whatever the number of
detections. A pixel's value is the mean score drop of the windows that hide it; the map keeps
the drops (a hidden part that raises the score is not evidence for the box) and scales them to
[0, 1].
"""
import sys

import cv2
import numpy as np
import torch
from captum.attr import Occlusion as CaptumOcclusion
from mmengine.utils import ProgressBar

from ..engine.candidates import TrackedDetection, TrackedMask
from ..registry import CAM_METHODS
from .kinds import MethodKind


@CAM_METHODS.register_module(name='occlusion')
class Occlusion:
    """Occlusion maps for given detections.

    Args:
        window: side of the occluding square, in pixels of the network input (the image as
            the test pipeline resized it); about the size of the parts that should show.
            Several sizes (``[16, 48]``): the map adds theirs, each scaled to its maximum.
        stride: step of the window (default: half the window; one per window size). A map's
            detail is one stride; the cost is one forward per window position.
        baseline: what replaces hidden pixels: ``'blur'`` (the image blurred with a Gaussian
            of the window's scale: a part vanishes into its surroundings, what made the class),
            ``'mean'`` (the image's mean colour, as the deletion metric removes pixels) or a
            number (a grey level, 0-255).
        batch_size: occluded images per forward pass.
        progress: show a progress bar over the window positions.
    """

    kind = MethodKind.BLACK_BOX  # BlackBoxPipeline runs it on the image, no gradients

    def __init__(self, window=16, stride=None, baseline='blur',
                 batch_size: int = 16, progress: bool = True):
        self.windows = [int(w) for w in np.atleast_1d(window)]
        self.strides = ([int(s) for s in np.atleast_1d(stride)] if stride is not None else
                        [max(1, w // 2) for w in self.windows])
        if len(self.strides) != len(self.windows):
            raise ValueError(f'occlusion needs one stride per window, got windows '
                             f'{self.windows} and strides {self.strides}')
        if min(self.windows + self.strides) < 1 or batch_size < 1:
            raise ValueError('occlusion needs window, stride and batch_size >= 1, got '
                             f'{self.windows}, {self.strides} and {batch_size}')
        if not (baseline in ('blur', 'mean') or isinstance(baseline, (int, float))):
            raise ValueError(f"baseline must be 'blur', 'mean' or a grey level, got {baseline!r}")
        self.baseline = baseline
        self.batch_size, self.progress = batch_size, progress

    def baseline_of(self, image: torch.Tensor, window: int) -> torch.Tensor:
        """What replaces hidden pixels of ``image`` (``[3, h, w]``) under a window of side
        ``window``, the same shape."""
        if self.baseline == 'mean':
            return image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
        if self.baseline == 'blur':
            pixels = image.permute(1, 2, 0).numpy()
            blurred = cv2.GaussianBlur(pixels, (0, 0), sigmaX=window / 2,
                                       borderType=cv2.BORDER_REPLICATE)
            return torch.from_numpy(blurred.reshape(pixels.shape)).permute(2, 0, 1).contiguous()
        return torch.full_like(image, float(self.baseline))

    def drops(self, tracked, image: torch.Tensor, window, stride: int) -> np.ndarray:
        """``[N, h, w]`` score drops of one window size, smoothed and scaled to [0, 1] per
        detection, so that every size counts alike in the sum."""
        drops = CaptumOcclusion(tracked).attribute(
            image[None], sliding_window_shapes=(3, *window), strides=(3, stride, stride),
            baselines=self.baseline_of(image, max(window))[None],
            perturbations_per_eval=self.batch_size)
        maps = drops.reshape(-1, *image.shape).sum(dim=1).clamp(min=0).numpy()
        # constant on stride-sized cells: smoothed, so a peak is the middle of the windows
        # that hide the evidence, not the corner of a cell
        maps = np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), stride / 2)
                         for m in maps])
        peak = maps.max(axis=(1, 2), keepdims=True)
        return np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0)

    def __call__(self, size, bboxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                 candidates_fn, num_classes: int, instance_masks=None) -> np.ndarray:
        """``[N, height, width]`` maps in [0, 1] for the ``N`` detections ``(bboxes, labels)``
        of an image of network-input ``size = (height, width)``; ``candidates_fn`` is a
        ``MaskedCandidates`` (its ``resized`` image is occluded, its ``perturbed`` gives the
        raw candidates of the copies). With ``instance_masks`` (``[N, H, W]`` boolean), the
        detections' masks are followed instead of their boxes."""
        if len(bboxes) == 0:
            return np.zeros((0, *size), np.float32)
        image = candidates_fn.resized
        targets = ([TrackedDetection(box, label) for box, label in zip(bboxes, labels)]
                   if instance_masks is None else
                   [TrackedMask(mask, label) for mask, label in zip(instance_masks, labels)])
        # a window larger than the image is clamped to it
        scales = [([min(w, side) for side in size], s) for w, s in zip(self.windows, self.strides)]
        # captum's own progress bar counts something else than the forwards: ours counts them
        positions = sum(np.prod([-(-(side - w) // stride) + 1 for side, w in zip(size, window)])
                        for window, stride in scales)
        bar = ProgressBar(positions + len(scales), file=sys.stderr) if self.progress else None

        def tracked(images: torch.Tensor) -> torch.Tensor:  # [B, 3, h, w] -> [B, N]
            if bar is not None:
                bar.update(len(images))
            return torch.tensor([[float(target(c)) for target in targets]
                                 for c in candidates_fn.perturbed(images)], dtype=torch.float64)

        maps = sum(self.drops(tracked, image, window, stride) for window, stride in scales)
        if bar is not None:
            sys.stderr.write('\n')
        peak = maps.max(axis=(1, 2), keepdims=True)
        return np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0).astype(np.float32)
