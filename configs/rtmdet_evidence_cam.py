# The evidence demo's test run: per-detection maps of every test image scored on the pixels that
# decided each object (its cue, recorded in the annotations), next to COCO mAP. Occlusion is
# the method that finds them (docs/benchmarks.md, Evidence known by construction):
#   python tools/make_shapes_dataset.py data/evidence --kind evidence
#   python tools/test_cam.py configs/rtmdet_evidence_cam.py demo/rtmdet_evidence.pth
_base_ = '../demo/rtmdet_evidence.py'

custom_imports = dict(imports=['mmdet_cam'], allow_failed_imports=False)
custom_hooks = [
    dict(type='DetCAMHook', method=dict(type='occlusion', progress=False), score_thr=0.3,
         interval=1, out_dir='cam'),
]
test_evaluator = [
    {{_base_.val_evaluator}},
    dict(type='CAMLocalizationMetric', iou_thr=0.5, evidence_file='data/evidence/val.json'),
]
