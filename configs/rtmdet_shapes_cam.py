# The shipped demo detector's test run, with per-detection CAMs for every test image and their
# localisation scores next to COCO mAP (HiResCAM: the best localiser in benchmarks/localization.py):
#   python tools/test_cam.py configs/rtmdet_shapes_cam.py demo/rtmdet_shapes.pth
_base_ = '../demo/rtmdet_shapes.py'

custom_imports = dict(imports=['mmdet_cam'], allow_failed_imports=False)
custom_hooks = [
    dict(type='DetCAMHook', method='hirescam', target_layers='neck', score_thr=0.3, interval=1,
         out_dir='cam'),
]
test_evaluator = [
    {{_base_.val_evaluator}},
    dict(type='CAMLocalizationMetric', iou_thr=0.5),
]
