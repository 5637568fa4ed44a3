# Mask R-CNN with an MLLA-T backbone on COCO, mmdet's plain 1x recipe (single-scale 1333x800, 12 epochs, 2 images x 8
# GPUs) with only what the backbone requires changed: the backbone, the FPN input channels and upstream MLLA's
# optimizer (AdamW lr 1e-4, wd 0.05, no decay on norms). Upstream's 46.8 / 42.1 come from its multi-scale crop
# pipeline: mask-rcnn_mlla-t_fpn_ms-crop-1x_coco.py reproduces them. This file is the base of the CPU demo.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, type='MLLA', arch='tiny', drop_path_rate=0.1, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint='checkpoints/MLLA_T.pth')),
             neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
