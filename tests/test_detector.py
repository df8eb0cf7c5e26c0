"""Config names, weights-only checkpoint loading, image input."""
import collections

import cv2
import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from mmdet_cam import build_detector, resolve_config
from mmdet_cam.errors import BadImageError, CheckpointError, DeviceError, InputNotFoundError
from mmdet_cam.model.detector import build_test_pipeline, check_device, read_image

RETINANET = 'retinanet/retinanet_r18_fpn_1x_coco.py'


@pytest.mark.parametrize('name', ['retinanet_r18_fpn_1x_coco', RETINANET,
                                  'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'])
def test_shipped_configs_resolve_by_name(name):
    assert resolve_config(name).model.type == 'RetinaNet'


def test_unknown_config_names_close_matches():
    with pytest.raises(InputNotFoundError, match='retinanet_r18_fpn_1x_coco'):
        resolve_config('retinanet_r18_fpn_1x_cocoo')


class _Arbitrary:
    """Stands for any pickled object that a weights-only load must not rebuild."""


def _save(model, path, **extra):
    meta = dict(dataset_meta=dict(classes=tuple(f'c{i}' for i in range(80))), **extra)
    torch.save(dict(meta=meta, state_dict=model.state_dict()), path)


def test_runner_style_checkpoint_loads_weights_only(models, tmp_path):
    model = models(RETINANET)
    buffer = HistoryBuffer()
    buffer.update(0.5)
    ckpt = tmp_path / 'runner.pth'
    _save(model, ckpt, message_hub=dict(log_scalars={'loss': buffer}),
          seed=np.int64(3), hist=np.arange(4, dtype=np.float32))
    loaded = build_detector(resolve_config(RETINANET), str(ckpt))
    assert loaded.dataset_meta['classes'][0] == 'c0'
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_unsafe_checkpoint_needs_explicit_trust(models, tmp_path):
    model = models(RETINANET)
    ckpt = tmp_path / 'unsafe.pth'
    _save(model, ckpt, extra=_Arbitrary())
    with pytest.raises(CheckpointError, match='trust_checkpoint=True'):
        build_detector(resolve_config(RETINANET), str(ckpt))
    loaded = build_detector(resolve_config(RETINANET), str(ckpt), trust_checkpoint=True)
    assert torch.equal(loaded.bbox_head.retina_cls.weight, model.bbox_head.retina_cls.weight)


def test_missing_and_corrupt_checkpoints_name_the_path(tmp_path):
    with pytest.raises(InputNotFoundError, match='checkpoint not found: .*nope.pth'):
        build_detector(RETINANET, str(tmp_path / 'nope.pth'))
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='bad.pth'):
        build_detector(RETINANET, str(bad))


def test_images_of_any_common_layout_become_bgr_uint8(tmp_path):
    gray = np.tile(np.arange(64, dtype=np.uint8), (32, 1))
    cv2.imwrite(str(tmp_path / 'gray.png'), gray)
    cv2.imwrite(str(tmp_path / 'rgba.png'), np.dstack([gray, gray, gray, gray]))
    cv2.imwrite(str(tmp_path / 'deep.png'), gray.astype(np.uint16) * 256)
    for name in ('gray.png', 'rgba.png', 'deep.png'):
        image = read_image(tmp_path / name)
        assert image.shape == (32, 64, 3) and image.dtype == np.uint8
        assert (image[:, :, 0] == gray).all()
    assert read_image(gray).shape == (32, 64, 3)
    assert read_image(gray.astype(np.uint16) * 256)[..., 2].tolist() == gray.tolist()
    assert read_image(np.dstack([gray] * 4)).shape == (32, 64, 3)


def test_bad_images_get_clear_errors(tmp_path):
    with pytest.raises(InputNotFoundError, match='image not found: .*missing.jpg'):
        read_image(tmp_path / 'missing.jpg')
    corrupt = tmp_path / 'corrupt.jpg'
    corrupt.write_bytes(b'\xff\xd8 definitely not a jpeg')
    with pytest.raises(BadImageError, match='corrupt.jpg'):
        read_image(corrupt)
    with pytest.raises(BadImageError, match='float32'):
        read_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(BadImageError, match='shape'):
        read_image(np.zeros((4, 4, 5), np.uint8))


def test_dataset_meta_falls_back_to_the_config(models):
    meta = models(RETINANET).dataset_meta
    assert meta['classes'][0] == 'person' and len(meta['palette']) == 80
    assert isinstance(meta, collections.abc.Mapping)


def test_the_image_loader_keeps_every_option_of_the_configs_loader():
    # CenterNet's RandomCenterCropPad needs the float image its loader's to_float32 makes
    cfg = resolve_config('centernet/centernet_r18_8xb16-crop512-140e_coco.py')
    loader = build_test_pipeline(cfg).transforms[0]
    assert type(loader).__name__ == 'LoadImageFromNDArray'
    assert loader.to_float32 and loader.color_type == 'color'


@pytest.mark.parametrize('device, message', [
    ('cuda:99', 'cuda'), ('banana', 'bad device')])
def test_devices_this_host_lacks_get_a_clear_error(device, message):
    with pytest.raises(DeviceError, match=message):
        check_device(device)
    assert check_device('cpu').type == 'cpu'


def test_pretrained_downloads_are_dropped_in_every_form():
    from mmdet_cam.model.detector import _drop_pretrained
    model = dict(
        backbone=dict(init_cfg=dict(checkpoint='https://x/pvt.pth')),  # PVT: no type
        neck=dict(init_cfg=[dict(type='Xavier'), dict(type='Pretrained', checkpoint='a.pth')]),
        rfp_backbone=dict(pretrained='torchvision://resnet50'),  # DetectoRS
        timm=dict(pretrained=True))
    _drop_pretrained(model)
    assert model['backbone']['init_cfg'] is None
    assert model['neck']['init_cfg'] == [dict(type='Xavier')]
    assert model['rfp_backbone']['pretrained'] is None and model['timm']['pretrained'] is False


def test_syncbn_configs_build_for_one_process():
    # mmcv's MMSyncBN cannot be built without a process group; in eval mode BN is the same
    model = build_detector(
        'simple_copy_paste/mask-rcnn_r50_fpn_rpn-2conv_4conv1fc_syncbn-all_32xb2-ssj-90k_coco.py')
    norms = {type(m).__name__ for m in model.modules() if 'Norm' in type(m).__name__}
    assert 'BatchNorm2d' in norms and not any('Sync' in n for n in norms)
