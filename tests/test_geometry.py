"""Maps on the padded network input land on the right original-image pixels, for the
keep-ratio + pad-to-divisor pipeline (RetinaNet) and the pad-to-square one (YOLOX)."""
import numpy as np
import pytest

from mmdet_cam.engine.geometry import resized_image_size, to_original_image
from mmdet_cam.model.detector import build_test_pipeline, preprocess


@pytest.mark.parametrize('config', ['retinanet/retinanet_r18_fpn_1x_coco.py',
                                    'yolox/yolox_tiny_8xb8-300e_coco.py'])
@pytest.mark.parametrize('shape', [(240, 320), (300, 200)])
def test_a_point_on_the_input_maps_back_to_its_original_pixel(models, config, shape):
    model = models(config)
    image = np.zeros(shape + (3,), np.uint8)
    inputs, samples = preprocess(model, build_test_pipeline(model.cfg), image)
    meta = samples[0].metainfo
    in_h, in_w = inputs.shape[-2:]
    h, w = resized_image_size(meta)
    assert (in_h, in_w) != (h, w), 'the pipeline pads, so the padding must be cropped'
    scale_w, scale_h = meta['scale_factor']
    for oy, ox in [(10, 15), (shape[0] // 2, shape[1] - 20), (shape[0] - 12, 8)]:
        # a blob around the input position of original pixel (oy, ox), plus a decoy in
        # the padding that must not survive the crop
        maps = np.zeros((1, in_h, in_w), np.float32)
        cy, cx = (oy + 0.5) * scale_h - 0.5, (ox + 0.5) * scale_w - 0.5
        yy, xx = np.mgrid[:in_h, :in_w]
        maps[0] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        maps[0, h:, :] = maps[0, :, w:] = 5.0
        out = to_original_image(maps, meta)
        assert out.shape == (1,) + shape
        peak = np.unravel_index(out[0].argmax(), shape)
        assert abs(peak[0] - oy) <= 1 and abs(peak[1] - ox) <= 1
        assert 0 <= out.min() and out.max() <= 1
