# RetinaNet with an MLLA-T backbone on COCO, 1x schedule. As mmdet's Swin-T RetinaNet, the backbone returns strides
# 8/16/32 (out_indices 1-3) and the FPN starts at its first input; otherwise only the backbone, the FPN input channels
# and the optimizer (upstream MLLA's AdamW lr 1e-4, wd 0.05, no decay on norms) differ from the base. No upstream MLLA
# number exists for this detector.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, type='MLLA', arch='tiny', drop_path_rate=0.1, out_indices=(1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint='checkpoints/MLLA_T.pth')),
             neck=dict(in_channels=[128, 256, 512], start_level=0))

optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                     paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
