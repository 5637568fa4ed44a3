# Mask R-CNN on the synthetic demo set (tools/make_demo_data.py: circles, squares and triangles at 128x128), sized to
# train on a 2-core CPU in minutes. It is configs/mmdet/mask-rcnn_mlla-t_fpn_1x_coco.py with only the data, the
# classes, the image scale, the schedule and the backbone size changed (tiny 'test' MLLA, random init), plus the
# number of RoIs per image: mmdet samples 512 (training) and keeps 1000 proposals (test) for COCO's crowded scenes, and
# the RoI heads on them take most of a CPU step; these images hold 1-3 objects.
_base_ = '../mmdet/mask-rcnn_mlla-t_fpn_1x_coco.py'

# tools/train.py and tools/test.py create the data here when it is missing.
demo_data = 'data/demo'
data_root = 'data/demo/coco/'
metainfo = dict(classes=('circle', 'square', 'triangle'))
image_scale = (128, 128)

model = dict(
    backbone=dict(arch='test', init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256]),
    roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)),
    train_cfg=dict(rcnn=dict(sampler=dict(num=16))),
    test_cfg=dict(rpn=dict(max_per_img=100)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# Schedule: 4 epochs of the 300 training images, 2 per batch (600 iterations), with a higher lr than the COCO recipe
# since the backbone starts from random weights and the run is short. Validated after every epoch for the metric
# curve (tools/train.py validates on a copy of the random states, so this does not change the training).
max_epochs = 4
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[3], gamma=0.1),
]
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=max_epochs))

# Seeded, so a rerun on the same machine reproduces the figures in the README.
randomness = dict(seed=0)
