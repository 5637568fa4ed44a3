# Mask R-CNN with a VMamba-T [s1l8] backbone on COCO, upstream VMamba's 3x recipe (48.8 box AP / 43.7 mask AP): mmdet's
# Swin-T ms-crop-3x recipe (DETR-style multi-scale + crop pipeline, 36 epochs, steps at 27 and 33), which upstream's
# 3x config inherits; only the backbone and the FPN input channels change.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, type='VMamba', arch='tiny', drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vmamba_tiny.pth')),
             neck=dict(in_channels=[96, 192, 384, 768]))
