# Semantic FPN on the ADE20K-layout synthetic demo set (tools/make_demo_data.py: background, circle, square, triangle
# at 128x128), sized to train on a 2-core CPU in minutes. UperNet's 512-channel head costs about ten times more per
# image than the FPN head, too much for a CPU demo, so the base is mmseg's Semantic FPN ADE20K recipe with the MLLA
# changes of configs/mmseg (backbone, neck input channels, AdamW with no decay on norms, warm-up then poly) and the
# demo's data, classes, image scale, schedule and backbone size (tiny 'test' MLLA, random init).
_base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# tools/train.py and tools/test.py create the data here when it is missing.
demo_data = 'data/demo'
data_root = 'data/demo/ade'
# ADE20K's label maps use 0 for "other" (ignored through reduce_zero_label); the demo's start at 1 = background.
# The classes are not ADE20K's, so the dataset is the generic BaseSegDataset with ADE20K's file layout.
metainfo = dict(classes=('background', 'circle', 'square', 'triangle'),
                palette=[[120, 120, 120], [230, 25, 75], [60, 180, 75], [0, 130, 200]])
crop_size = (128, 128)

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(_delete_=True, type='MLLA', arch='test', drop_path_rate=0.1, out_indices=(0, 1, 2, 3), init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256]),
    decode_head=dict(num_classes=4))

dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo, reduce_zero_label=True,
               img_suffix='.jpg', seg_map_suffix='.png')
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=1,
    dataset=dict(**dataset, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=1,
    dataset=dict(**dataset, data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

# Schedule: a short warm-up then poly decay, with a higher lr than the ADE20K recipe since the backbone starts from
# random weights and the run is short; 800 iterations take about 6 minutes on 2 CPU cores. Validated every 200
# iterations for the metric curve (on a copy of the random states: the training is the same as without).
max_iters = 800
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=200)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=50, end=max_iters),
]
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=max_iters))

# Seeded, so a rerun on the same machine reproduces the figures in the README.
randomness = dict(seed=0)
