# The DINO demo fine-tuned on the evidence scenes (mmdet_cam/shapes.py, kind='evidence'), the
# DETR-style twin of demo/rtmdet_evidence.py: each object's class is set by a small cue alone (a
# cross or a ring inside the object, off its centre, or a tag beside it, outside its box).
# Its start is the DINO demo with the RTMDet evidence demo's backbone, which already sees the cues:
#
#   python tools/make_shapes_dataset.py data/evidence --kind evidence       # data (seconds)
#   python tools/publish_checkpoint.py demo/dino_shapes.pth work_dirs/dino_evidence_start.pth \
#       --take backbone.=demo/rtmdet_evidence.pth
#   python tools/train.py demo/dino_evidence.py --work-dir work_dirs/dino_evidence
#   python tools/publish_checkpoint.py work_dirs/dino_evidence/epoch_8.pth \
#       demo/dino_evidence.pth --half
_base_ = './dino_shapes.py'

classes = ('cross', 'ring', 'tagged')
metainfo = dict(classes=classes, palette=[(220, 20, 60), (0, 130, 230), (20, 160, 60)])
data_root = 'data/evidence/'

model = dict(backbone=dict(init_cfg=None))
train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'val.json')
test_evaluator = val_evaluator

max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
# the backbone at the full rate: telling the classes apart is new, and it happens in fine detail
optim_wrapper = dict(optimizer=dict(lr=0.0002),
                     paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0)}))
param_scheduler = [dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100)]
load_from = 'work_dirs/dino_evidence_start.pth'
