"""The installed stack works together: imports, compiled mmcv ops on CPU, real mmdet configs,
and mmdet configs that load the plugin through ``custom_imports``."""
import subprocess
import sys
import textwrap

import torch


def test_stack_imports_and_torchvision_ops_run():
    import mmcv.ops  # noqa: F401
    import mmdet  # noqa: F401
    import pytorch_grad_cam  # noqa: F401
    import torchvision
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # torchvision's own compiled op: fails when torch and torchvision builds do not match
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0, 2]


def test_mmcv_compiled_nms_runs_on_cpu():
    from mmcv.ops import batched_nms, nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torch.allclose(dets[:, 4], torch.tensor([0.9, 0.7]))
    # different classes never suppress each other
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(iou_threshold=0.5))
    assert sorted(keep.tolist()) == [0, 1, 2]


def test_detector_from_shipped_config_is_initialised(models):
    model = models('retinanet/retinanet_r18_fpn_1x_coco.py')
    # RetinaNet's init_cfg puts the classifier bias at the focal-loss prior -log((1-p)/p)
    prior = -torch.log(torch.tensor((1 - 0.01) / 0.01))
    bias = model.bbox_head.retina_cls.bias
    assert torch.allclose(bias, prior.expand_as(bias), atol=1e-5)
    assert not model.training
    assert len(model.dataset_meta['classes']) == 80


def test_config_with_custom_imports_loads_the_plugin(tmp_path):
    config = tmp_path / 'retinanet_cam.py'
    config.write_text(textwrap.dedent("""
        _base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'
        custom_imports = dict(imports=['mmdet_cam'], allow_failed_imports=False)
    """))
    code = (f'from mmengine.config import Config; import sys\n'
            f'cfg = Config.fromfile({str(config)!r})\n'
            f'assert "mmdet_cam" in sys.modules, "custom_imports did not import mmdet_cam"\n'
            f'from mmdet_cam import CAM_METHODS\n'
            f'assert CAM_METHODS.get("gradcam") is not None\n'
            f'print(cfg.model.type)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'RetinaNet'
