"""ScoreCAM and AblationCAM for every detection of an image at once.

The channel weights are pytorch_grad_cam's: ScoreCAM scores the input masked by each
(upsampled, min-max scaled) activation channel and takes the softmax of the scores over
channels; AblationCAM replaces the layer's output by copies with one channel ablated (the
library's ``AblationLayer``) and takes the relative score drop. The library runs those
forwards once per target; here one batch of perturbed forwards is scored for *all* targets,
so an image costs one pass over the channels whatever the number of detections.

:class:`PerturbationPipeline` calls ``get_cam_image`` with :class:`Reruns` as ``targets``:
the detections' :class:`~mmdet_cam.engine.candidates.TrackedDetection` targets (or
``TrackedMask``, for the mask target), the
:class:`~mmdet_cam.engine.candidates.RawCandidatesModel` to re-run, and which output of the
target layer (pyramid level) is meant. AblationCAM
pushes the ablated activations through the rest of the detector only: when the target layer
is the whole neck (the default) or backbone, what comes before it runs once.
"""
import sys
from typing import Callable, List, Sequence

import numpy as np
import torch
from mmengine.utils import ProgressBar
from pytorch_grad_cam import AblationCAM, ScoreCAM
from pytorch_grad_cam.ablation_layer import AblationLayer
from torch import Tensor

from ..engine.candidates import RawCandidatesModel, TrackedDetection, TrackedMask
from ..engine.fusion import fuse
from ..engine.layer_maps import LayerMaps
from ..engine.request import Request
from ..engine.session import BoxCAMs, Session
from ..errors import UnsupportedModelError
from ..registry import CAM_METHODS
from .kinds import MethodKind
from .pipeline import ReRunningPipeline


class Reruns(list):
    """The ``targets`` of one perturbation-method call: the tracked detections (the list), the
    model that is re-run on perturbed inputs, and which output of a multi-output target layer
    (pyramid level) is perturbed."""

    def __init__(self, targets: Sequence[Callable], model, output_index: int = 0):
        super().__init__(targets)
        self.model, self.output_index = model, output_index


class PerturbationPipeline(ReRunningPipeline):
    """Channel weights from re-runs of the detector with the target layer's channels
    perturbed, scored per detection (ScoreCAM, AblationCAM): the forward captures the target
    layers (and, with ``fuse='own'``, each box's own levels from its gradients); the re-runs
    come after it."""

    kind = MethodKind.PERTURBATION

    def explain(self, session: Session, request: Request) -> BoxCAMs:
        how = session.settings.fuse
        own_levels = how == 'own'
        with session.forward(request) as forward:
            if not len(forward.detections):
                return forward.nothing()
            layer_maps = forward.layer_maps(self.method, gradients=own_levels)
            zero, own = [[] for _ in range(len(forward.detections))], None
            if own_levels:
                _, zero, own = forward.box_gradients()
        # re-runs the detector, so after the capture hooks are gone
        rerun = RawCandidatesModel(session.model, forward.pristine_sample,
                                   masks=request.reads_masks)
        per_output = _perturbed(layer_maps, rerun, forward.detections)
        return forward.result(fuse(per_output, how, own), zero, own)


def _perturbed(layer_maps: LayerMaps, candidates_model: RawCandidatesModel,
               detections) -> List[np.ndarray]:
    """Maps ``[(N, H_in, W_in)]`` per layer output for all ``detections`` at once (or their
    masks: ``detections.masks``, when ``candidates_model`` gives candidates with masks)."""
    if candidates_model.masks:  # the mask target
        tracked = [TrackedMask(mask, label) for mask, label in
                   zip(detections.masks.cpu().numpy(), detections.labels.tolist())]
    else:
        tracked = [TrackedDetection(box, label) for box, label in
                   zip(detections.bboxes.tolist(), detections.labels.tolist())]
    maps = []
    for index, (owner, act) in enumerate(layer_maps.outputs):
        output_index = sum(o == owner for o, _ in layer_maps.outputs[:index])
        no_gradient = np.zeros((len(tracked),) + act.shape[1:], act.dtype)
        maps.append(layer_maps.cam(index, no_gradient,
                                   Reruns(tracked, candidates_model, output_index)))
    return maps


class _SharedForwards:
    """Scores many targets from the same re-runs of the model."""

    kind = MethodKind.PERTURBATION  # the engine hands it Reruns as targets

    def _scores(self, outputs: Sequence, targets: Sequence[Callable]) -> np.ndarray:
        """``[len(outputs), len(targets)]`` float32, as the library reads each target."""
        return np.float32([[target(o).cpu().item() for target in targets] for o in outputs])

    def _bar(self, total: int):
        return ProgressBar(total, file=sys.stderr) if self.progress else None

    def __del__(self):
        if hasattr(self, 'activations_and_grads'):  # not when __init__ refused its options
            super().__del__()


@CAM_METHODS.register_module(name='scorecam')
class BoxScoreCAM(_SharedForwards, ScoreCAM):
    """ScoreCAM (Wang et al., CVPR-W 2020) per detection; one masked forward per channel.

    Args:
        batch_size: masked images per forward pass.
        progress: show a progress bar over the channels.
    """

    def __init__(self, model, target_layers, reshape_transform=None, batch_size: int = 16,
                 progress: bool = False):
        super().__init__(model, target_layers, reshape_transform=reshape_transform)
        self.batch_size, self.progress = batch_size, progress

    def get_cam_weights(self, input_tensor: Tensor, target_layer, targets, activations,
                        grads) -> np.ndarray:
        # every row of ``activations`` is the same image: one set of masks serves all targets
        channels = activations.shape[1]
        upsample = torch.nn.UpsamplingBilinear2d(size=input_tensor.shape[-2:])
        scores, bar = [], self._bar(channels)
        with torch.no_grad():
            first = 0
            while first < channels:  # as many masked copies as the memory budget holds
                step = targets.model.step(self.batch_size)
                part = torch.from_numpy(activations[:1, first:first + step].copy())
                first += part.shape[1]
                part = part.to(input_tensor.device)
                masks = upsample(part)[0]  # [b, H, W], scaled per channel as the library does
                flat = masks.reshape(len(masks), -1)
                low, high = flat.min(dim=1)[0], flat.max(dim=1)[0]
                masks = (masks - low[:, None, None]) / (high - low + 1e-8)[:, None, None]
                scores.append(self._scores(targets.model(input_tensor[:1] * masks[:, None]),
                                           targets))
                if bar is not None:
                    bar.update(len(masks))
        scores = torch.from_numpy(np.concatenate(scores).T.copy())  # [targets, channels]
        return torch.softmax(scores, dim=-1).numpy()


class ZeroAblationLayer(AblationLayer):
    """Ablation as the AblationCAM paper does it: the channel is set to 0. (The library's
    ``AblationLayer`` uses ``min - 1e7`` wherever activations can be negative, as after
    SiLU, which there wipes out every detection whichever channel is ablated.)"""

    def __call__(self, x):
        for row, channel in enumerate(self.indices[:len(self.activations)]):
            self.activations[row, channel] = 0
        return self.activations


@CAM_METHODS.register_module(name='ablationcam')
class BoxAblationCAM(_SharedForwards, AblationCAM):
    """AblationCAM (Desai and Ramaswamy, WACV 2020) per detection; one forward of the rest of
    the detector per ablated channel.

    Args:
        ablation: ``'zero'`` sets the ablated channel to 0 (the paper, :class:`ZeroAblationLayer`);
            ``'library'`` uses pytorch_grad_cam's ``AblationLayer``; or an ablation layer.
        batch_size: ablated copies per forward pass.
        ratio_channels_to_ablate: the library's option (1.0: every channel).
        progress: show a progress bar over the channels.
    """

    ABLATIONS = {'zero': ZeroAblationLayer, 'library': AblationLayer}

    def __init__(self, model, target_layers, reshape_transform=None, ablation='zero',
                 batch_size: int = 32, ratio_channels_to_ablate: float = 1.0,
                 progress: bool = False):
        if isinstance(ablation, str):
            if ablation not in self.ABLATIONS:
                raise ValueError(f"ablation must be one of {', '.join(self.ABLATIONS)} or an "
                                 f'ablation layer, got {ablation!r}')
            ablation = self.ABLATIONS[ablation]()
        super().__init__(model, target_layers, reshape_transform, ablation, batch_size,
                         ratio_channels_to_ablate)
        self.progress = progress

    def get_cam_weights(self, input_tensor: Tensor, target_layer, targets, activations,
                        grads) -> np.ndarray:
        image = input_tensor[:1]
        original = self._scores(targets.model(image), targets)[0]  # [targets]
        layer_output = torch.from_numpy(activations[:1].copy()).to(image.device)
        channels = self.ablation_layer.activations_to_be_ablated(
            activations[0], self.ratio_channels_to_ablate)
        ablated_scores, bar = [], self._bar(len(channels))
        with torch.no_grad():
            first = 0
            while first < len(channels):  # as many copies as the memory budget holds
                count = min(targets.model.step(self.batch_size), len(channels) - first)
                # the library's ablation layer, fed as the library feeds it
                self.ablation_layer.set_next_batch(input_batch_index=0,
                                                   activations=layer_output,
                                                   num_channels_to_ablate=count)
                self.ablation_layer.indices = channels[first:]
                ablated = self.ablation_layer(None)
                outputs = targets.model.with_layer_output(
                    image, target_layer, _Substitute(ablated, targets.output_index), count)
                ablated_scores.append(self._scores(outputs, targets))
                first += count
                if bar is not None:
                    bar.update(count)
        ablated_scores = np.concatenate(ablated_scores)  # [ablated channels, targets]
        weights = np.float32([
            self.assemble_ablation_scores(list(ablated_scores[:, k]), original[k], channels,
                                          activations.shape[1])
            for k in range(len(targets))])
        return (original[:, None] - weights) / original[:, None]


class _Substitute:
    """Forward-hook body: the layer's output with output ``index`` (a tensor, or one
    element of a tuple/list) replaced by ``maps``, the other elements repeated to match."""

    def __init__(self, maps: Tensor, index: int):
        self.maps, self.index = maps, index

    def __call__(self, output):
        items = [output] if isinstance(output, Tensor) else list(output)
        tensors = [k for k, item in enumerate(items) if isinstance(item, Tensor)]
        if self.index >= len(tensors) or items[tensors[self.index]].shape[1:] != \
                self.maps.shape[1:]:
            shapes = [tuple(items[k].shape) for k in tensors]
            raise UnsupportedModelError(
                f'ablationcam replaces [B, C, H, W] feature maps of shape '
                f'{tuple(self.maps.shape[1:])}, but the target layer outputs {shapes}: choose '
                'a convolutional layer (or the neck), or use scorecam')
        count = len(self.maps)
        # copies, not views: a consumer may write into its input in place
        out: List = [item.expand(count, *item.shape[1:]).contiguous()
                     if isinstance(item, Tensor) and len(item) == 1 else item for item in items]
        out[tensors[self.index]] = self.maps
        if isinstance(output, Tensor):
            return out[0]
        return tuple(out) if isinstance(output, tuple) else out
