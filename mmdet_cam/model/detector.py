"""Build or load a detector and turn an image into its network input.

* Configs: a file path, or the name of a config shipped inside the installed mmdet package
  (``yolox_s_8xb8-300e_coco``, ``yolox/yolox_s_8xb8-300e_coco.py``, ``mmdet::yolox/...``).
* Checkpoints: a path or URL, loaded **weights-only** by default (see ``checkpoint.py``).
* No checkpoint: ``Pretrained`` init configs (downloads) are dropped and ``init_weights()``
  gives the model its proper random initialisation.
"""
import contextlib
import copy
import difflib
import logging
import warnings
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import mmcv
import numpy as np
import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from torch import nn

from ..errors import (
    BadImageError,
    DetCAMError,
    DetectorFailedError,
    DeviceError,
    InputNotFoundError,
    UnknownNameError,
    UntrainedModelWarning,
)
from .checkpoint import load_checkpoint

ConfigLike = Union[str, Path, Config]


def mmdet_config_root() -> Path:
    """The ``configs`` folder shipped inside the installed mmdet package."""
    import mmdet
    return Path(mmdet.__file__).parent / '.mim' / 'configs'


@lru_cache(maxsize=1)
def _shipped_configs() -> Tuple[Path, ...]:
    return tuple(sorted(p for p in mmdet_config_root().rglob('*.py') if '_base_' not in p.parts))


def resolve_config(config: ConfigLike) -> Config:
    """Load ``config`` from a file or from the configs shipped with mmdet (by name)."""
    if isinstance(config, Config):
        return copy.deepcopy(config)
    path = Path(config)
    if path.is_file():
        return Config.fromfile(str(path))
    name = str(config).replace('mmdet::', '', 1)
    name = name if name.endswith('.py') else name + '.py'
    root = mmdet_config_root()
    if (root / name).is_file():
        return Config.fromfile(str(root / name))
    by_stem = [p for p in _shipped_configs() if p.name == Path(name).name]
    if len(by_stem) == 1:
        return Config.fromfile(str(by_stem[0]))
    stems = [p.stem for p in _shipped_configs()]
    close = difflib.get_close_matches(Path(name).stem, stems, n=3, cutoff=0.6)
    hint = f' Close mmdet configs: {", ".join(close)}.' if close else ''
    raise InputNotFoundError(
        f'config not found: {config!r} is neither a file nor a config shipped with mmdet.{hint}')


def _every_dict(cfg):
    """Every dict nested anywhere in ``cfg`` (dicts, lists, tuples), ``cfg`` included."""
    if isinstance(cfg, dict):
        yield cfg
        for value in cfg.values():
            yield from _every_dict(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            yield from _every_dict(value)


def _drop_pretrained(model_cfg) -> None:
    """Remove pretrained-weight downloads anywhere in a model config: ``init_cfg`` dicts of type
    ``Pretrained`` or with a ``checkpoint`` (PVT's), the older ``pretrained='torchvision://...'``
    arguments and timm's ``pretrained=True``."""
    def downloads(init_cfg):
        return isinstance(init_cfg, dict) and (init_cfg.get('type') == 'Pretrained'
                                               or 'checkpoint' in init_cfg)

    for cfg in list(_every_dict(model_cfg)):
        init_cfg = cfg.get('init_cfg')
        if downloads(init_cfg):
            cfg['init_cfg'] = None
        elif isinstance(init_cfg, list):
            cfg['init_cfg'] = [c for c in init_cfg if not downloads(c)] or None
        if isinstance(cfg.get('pretrained'), str):
            cfg['pretrained'] = None
        elif cfg.get('pretrained') is True:
            cfg['pretrained'] = False


def _single_process_norms(model_cfg) -> None:
    """``SyncBN``/``MMSyncBN`` -> ``BN`` anywhere in a model config: mmcv's SyncBN cannot even
    be built outside a process group, and in eval mode both normalise with the same running
    statistics and parameters (mmdet's ``init_detector`` reverts SyncBN after building)."""
    for cfg in _every_dict(model_cfg):
        if cfg.get('type') in ('SyncBN', 'MMSyncBN'):
            cfg['type'] = 'BN'


def keep_all_detections(test_cfg, max_per_img: int = 0) -> None:
    """Remove score thresholds, minimum box sizes and corner-pairing distances from a model's
    ``test_cfg`` in place and raise ``max_per_img``/``nms_pre`` to at least ``max_per_img``:
    untrained models (tests, benchmarks) score below the usual thresholds, may predict empty
    boxes, and pair no corners (CornerNet)."""
    if isinstance(test_cfg, dict):
        for key, value in test_cfg.items():
            if key == 'score_thr':
                test_cfg[key] = 0.0
            elif key == 'distance_threshold':
                test_cfg[key] = float('inf')
            elif key == 'min_bbox_size':
                test_cfg[key] = -1
            elif key in ('max_per_img', 'nms_pre') and isinstance(value, int):
                test_cfg[key] = max(value, max_per_img)
            else:
                keep_all_detections(value, max_per_img)


def build_detector(config: ConfigLike,
                   checkpoint: Optional[str] = None,
                   device: str = 'cpu',
                   cfg_options: Optional[dict] = None,
                   trust_checkpoint: bool = False,
                   warn_untrained: bool = True) -> nn.Module:
    """Build an mmdet detector in eval mode with ``model.cfg`` and ``model.dataset_meta`` set.

    Args:
        config: config path, shipped config name, or :class:`Config`.
        checkpoint: path or URL; None (or ``'none'``) for an untrained model.
        cfg_options: overrides merged into the config (as ``--cfg-options``).
        trust_checkpoint: allow a full (unsafe) unpickle of a checkpoint that a weights-only
            load refuses. Only for files you trust.
        warn_untrained: warn (:class:`UntrainedModelWarning`) when there is no checkpoint.
    """
    check_device(device)
    cfg = resolve_config(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    _drop_pretrained(cfg.model)
    _single_process_norms(cfg.model)

    from mmdet.registry import MODELS
    from mmengine.model import revert_sync_batchnorm
    with mmdet_failure(cfg, 'build the model of'):
        model = revert_sync_batchnorm(MODELS.build(cfg.model))
    meta = {}
    if checkpoint is None or str(checkpoint).lower() == 'none':
        # init_weights logs every parameter at INFO level
        with _quiet_mmengine_logger(), mmdet_failure(cfg, 'initialise the model of'):
            model.init_weights()
        if warn_untrained:
            warnings.warn(UntrainedModelWarning(
                'no checkpoint: the detector has random weights, so its detections and maps '
                'carry no meaning (fine for testing the plumbing)'), stacklevel=2)
    else:
        meta = load_checkpoint(model, checkpoint, trust=trust_checkpoint).get('meta', {})
    model.cfg = cfg
    model.dataset_meta = _dataset_meta(cfg, meta)
    return model.to(device).eval()


def config_name(cfg: Config) -> str:
    """A short name of a config for messages: its file name, else ``'the config'``."""
    return Path(cfg.filename).name if getattr(cfg, 'filename', None) else 'the config'


@contextlib.contextmanager
def mmdet_failure(cfg: Config, doing: str):
    """Turn an exception raised by mmdet itself into a one-line :class:`DetectorFailedError`
    that names the config and the original error (mmdet-cam's own errors pass through)."""
    try:
        yield
    except DetCAMError:
        raise
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ''
        raise DetectorFailedError(
            f'mmdet cannot {doing} {config_name(cfg)}: {type(error).__name__}: {message} '
            '(mmdet fails here without mmdet-cam too)') from error


def check_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a ``torch.device``, if this host has it.

    Raises:
        DeviceError: for a malformed name, ``cuda`` without CUDA, or a GPU index out of range.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f'bad device {device!r}: {error} (e.g. cpu, cuda, cuda:0)') from None
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise DeviceError(f'device {device!r} asked for, but this host has no CUDA device '
                              '(or torch was built without CUDA): use --device cpu')
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f'device {device!r} asked for, but this host has {count} CUDA '
                              f'device(s): cuda:0 to cuda:{count - 1}')
    return dev


@contextlib.contextmanager
def _quiet_mmengine_logger():
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dataset_meta(cfg: Config, checkpoint_meta: dict) -> dict:
    """Class names and palette: the checkpoint's, else the test dataset's, else COCO's."""
    from mmdet.evaluation import get_classes
    from mmdet.registry import DATASETS
    meta = {k.lower(): v for k, v in checkpoint_meta.get('dataset_meta', {}).items()}
    try:
        dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
        dataset_cfg['lazy_init'] = True
        dataset_meta = DATASETS.build(dataset_cfg).metainfo
    except Exception:  # a config without a usable test dataset still describes a model
        dataset_meta = {}
    for key in ('classes', 'palette'):
        if key not in meta and key in dataset_meta:
            meta[key] = dataset_meta[key]
    meta.setdefault('classes', get_classes('coco'))
    meta.setdefault('palette', 'random')
    return meta


def num_classes_of(model) -> int:
    """The number of classes a detector predicts (from its dataset meta or its head)."""
    classes = (getattr(model, 'dataset_meta', None) or {}).get('classes')
    if classes:
        return len(classes)
    for module in model.modules():
        count = getattr(module, 'num_classes', None)
        if isinstance(count, int) and count > 0:
            return count
    raise ValueError('cannot tell how many classes the model predicts')


def read_image(img: Union[str, Path, np.ndarray]) -> np.ndarray:
    """An ``H x W x 3`` BGR uint8 image from a path or an array (like ``mmcv.imread``).

    Grayscale and RGBA files or arrays are converted to BGR, 16-bit ones scaled to 8 bits.
    """
    if isinstance(img, (str, Path)):
        if not Path(img).is_file():
            raise InputNotFoundError(f'image not found: {img}')
        try:
            array = mmcv.imread(str(img), flag='color')
        except Exception:
            array = None
        if array is None:
            raise BadImageError(f'cannot read image {img}: not a valid image file')
        return array
    if not isinstance(img, np.ndarray):
        raise BadImageError(f'expected an image path or a numpy array, got {type(img).__name__}')
    array = img
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise BadImageError(f'expected a uint8 (or uint16) image array, got {array.dtype}')
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        return mmcv.gray2bgr(array.reshape(array.shape[:2]))
    if array.ndim == 3 and array.shape[2] == 4:
        return np.ascontiguousarray(array[..., :3])
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    raise BadImageError(f'expected an HxW, HxWx3 or HxWx4 image array, got shape {array.shape}')


def build_test_pipeline(cfg: Config) -> Compose:
    """The config's test pipeline, fed with arrays and without annotation loading.

    The image-loading step becomes ``LoadImageFromNDArray`` with every option of the config's
    own loader (``to_float32``, ``color_type``, ...), which later transforms may rely on.
    """
    from mmdet.utils import get_test_pipeline_cfg
    pipeline = copy.deepcopy(get_test_pipeline_cfg(cfg))
    pipeline = [t for t in pipeline if 'LoadAnnotations' not in t['type']]
    loaders = [i for i, t in enumerate(pipeline) if 'LoadImageFrom' in t['type']]
    if not loaders:
        raise UnknownNameError('the test pipeline has no image loading transform')
    pipeline[loaders[0]] = dict(pipeline[loaders[0]], type='mmdet.LoadImageFromNDArray')
    with mmdet_failure(cfg, 'build the test pipeline of'):
        return Compose(pipeline)


def preprocess(model: nn.Module, pipeline: Compose,
               images: Union[np.ndarray, Sequence[np.ndarray]]) -> Tuple[torch.Tensor, List]:
    """Network input ``[N, 3, H, W]`` and data samples for one BGR image (N = 1) or a list."""
    images = [images] if isinstance(images, np.ndarray) else list(images)
    data = [pipeline(dict(img=image, img_id=i)) for i, image in enumerate(images)]
    batch = model.data_preprocessor(dict(inputs=[d['inputs'] for d in data],
                                         data_samples=[d['data_samples'] for d in data]), False)
    return batch['inputs'], batch['data_samples']
