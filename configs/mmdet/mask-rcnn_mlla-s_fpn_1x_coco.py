# Mask R-CNN with an MLLA-S backbone on COCO, 1x schedule (12 epochs, 2 images x 8 GPUs). Only what the backbone
# requires differs from the base: the backbone, the FPN input channels and upstream MLLA's optimizer (AdamW lr 1e-4,
# wd 0.05, no decay on norms). Upstream trained its 1x models with the multi-scale crop pipeline of the 3x recipe;
# this file keeps mmdet's 1x pipeline unchanged.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream release (raw or converted with tools/convert_checkpoint.py; see configs/README.md).
pretrained = 'checkpoints/MLLA_S.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='MLLA',
        arch='small',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
