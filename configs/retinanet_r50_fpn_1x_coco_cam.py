# mmdet's own RetinaNet config, unchanged, plus per-detection GradCAM++ maps for the COCO val
# images the test loop sees, and their pointing-game scores next to COCO mAP:
#   python tools/test_cam.py configs/retinanet_r50_fpn_1x_coco_cam.py retinanet_r50.pth
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_cam'], allow_failed_imports=False)
custom_hooks = [
    dict(type='DetCAMHook', method='gradcam++', target_layers='neck', score_thr=0.3,
         interval=50, out_dir='cam'),
]
test_evaluator = [
    {{_base_.test_evaluator}},
    dict(type='CAMLocalizationMetric', iou_thr=0.5),
]
