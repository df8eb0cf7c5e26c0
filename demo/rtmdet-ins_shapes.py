# A small RTMDet-Ins trained on the synthetic "shapes" dataset (mmdet_cam/shapes.py) with the
# shapes' exact masks: the instance-segmentation demo of mmdet-cam (`--target mask`). The RTMDet
# demo's backbone, neck and box head (its trained weights as the start, `load_from`) plus
# RTMDet-Ins's kernel and prototype branches.
#
#   python tools/make_shapes_dataset.py data/shapes          # data (seconds)
#   python tools/train.py demo/rtmdet-ins_shapes.py --work-dir work_dirs/rtmdet-ins_shapes \
#       [--resume]
#   python tools/publish_checkpoint.py work_dirs/rtmdet-ins_shapes/epoch_12.pth \
#       demo/rtmdet-ins_shapes.pth
_base_ = './rtmdet_shapes.py'

norm_cfg = dict(type='BN')
act_cfg = dict(type='SiLU', inplace=True)
model = dict(
    bbox_head=dict(
        _delete_=True,
        type='RTMDetInsSepBNHead',
        num_classes=3,
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        share_conv=True,
        pred_kernel_size=1,
        anchor_generator=dict(type='MlvlPointGenerator', offset=0, strides=[8, 16, 32]),
        bbox_coder=dict(type='DistancePointBBoxCoder'),
        loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        loss_mask=dict(type='DiceLoss', loss_weight=2.0, eps=5e-6, reduction='mean'),
        norm_cfg=norm_cfg,
        act_cfg=act_cfg),
    test_cfg=dict(mask_thr_binary=0.5))

image_size = (320, 320)
# poly2mask: bitmaps, because the few shapes with another shape inside them are RLE
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, poly2mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.7, 1.2), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size, recompute_bbox=True, allow_negative_crop=False),
    dict(type='YOLOXHSVRandomAug'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1)),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, poly2mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
optim_wrapper = dict(optimizer=dict(lr=0.001))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', eta_min=0.00005, begin=1, end=max_epochs, T_max=max_epochs - 1,
         by_epoch=True, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=2))
load_from = '{{ fileDirname }}/rtmdet_shapes.pth'
