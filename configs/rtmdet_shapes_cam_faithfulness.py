# The demo test run of rtmdet_shapes_cam.py, plus each map's deletion / insertion AUC on the
# detector (2 x 11 extra forwards per detection):
#   python tools/test_cam.py configs/rtmdet_shapes_cam_faithfulness.py demo/rtmdet_shapes.pth
_base_ = './rtmdet_shapes_cam.py'

custom_hooks = [
    dict(type='DetCAMHook', method='hirescam', target_layers='neck', score_thr=0.3, interval=1,
         out_dir='cam', faithfulness_steps=10),
]
test_evaluator = [
    {{_base_.val_evaluator}},
    dict(type='CAMLocalizationMetric', iou_thr=0.5),
    dict(type='CAMFaithfulnessMetric'),
]
