# The shapes demo's RTMDet fine-tuned on the evidence scenes (mmdet_cam/shapes.py,
# kind='evidence'): each object's class is set by a small cue alone (a cross or a ring inside
# the object, off its centre, or a tag beside it, outside its box), so the pixels that decide a
# detection are known. Silhouette, size and colour carry no information about the class.
#
#   python tools/make_shapes_dataset.py data/evidence --kind evidence       # data (seconds)
#   python tools/train.py demo/rtmdet_evidence.py --work-dir work_dirs/rtmdet_evidence
#   python tools/publish_checkpoint.py work_dirs/rtmdet_evidence/epoch_24.pth \
#       demo/rtmdet_evidence.pth --half
_base_ = './rtmdet_shapes.py'

classes = ('cross', 'ring', 'tagged')
metainfo = dict(classes=classes, palette=[(220, 20, 60), (0, 130, 230), (20, 160, 60)])
data_root = 'data/evidence/'

train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'val.json')
test_evaluator = val_evaluator

load_from = 'demo/rtmdet_shapes.pth'  # shapes and boxes known; the cues are new
