# Cascade Mask R-CNN with an MLLA-T backbone on COCO, mmdet's multi-scale 3x recipe (36 epochs). Only the backbone
# (drop_path 0.3 as upstream's 3x models), the FPN input channels and the optimizer differ from the base. No upstream
# MLLA number exists for this detector.
_base_ = 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_ms-3x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# Upstream MLLA's detection optimizer: AdamW lr 1e-4, wd 0.05, no decay on norms.
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))

model = dict(backbone=dict(_delete_=True, type='MLLA', arch='tiny', drop_path_rate=0.3, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint='checkpoints/MLLA_T.pth')),
             neck=dict(in_channels=[64, 128, 256, 512]))
