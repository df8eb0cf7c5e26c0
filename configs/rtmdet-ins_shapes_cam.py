# The instance demo's test run, with each detection's *mask* explained (its own mask logits over
# its predicted mask) for every test image, and localisation scores against the ground-truth
# boxes and masks, and deletion / insertion with each mask followed by mask IoU, next to COCO bbox
# and segm mAP:
#   python tools/test_cam.py configs/rtmdet-ins_shapes_cam.py demo/rtmdet-ins_shapes.pth
_base_ = '../demo/rtmdet-ins_shapes.py'

custom_imports = dict(imports=['mmdet_cam'], allow_failed_imports=False)
custom_hooks = [
    dict(type='DetCAMHook', method='odam', target='mask', target_layers='neck', score_thr=0.3,
         interval=1, out_dir='cam', faithfulness_steps=10),
]
test_evaluator = [
    {{_base_.val_evaluator}},
    dict(type='CAMLocalizationMetric', iou_thr=0.5),
    dict(type='CAMFaithfulnessMetric'),
]
