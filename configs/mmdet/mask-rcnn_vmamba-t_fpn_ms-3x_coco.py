# Mask R-CNN with a VMamba-T backbone on COCO, 3x schedule with the DETR-style multi-scale + crop pipeline (36 epochs,
# steps at 27 and 33). Upstream VMamba's 3x config inherits this Swin-T recipe; only the backbone and the FPN input
# channels change.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream VMamba v2 release (see README "Pretrained weights").
pretrained = 'checkpoints/vmamba_tiny.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='VMamba',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
