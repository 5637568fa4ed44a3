# Mask R-CNN with a VMamba-T [s1l8] backbone on COCO, 1x schedule (12 epochs, 2 images x 8 GPUs): upstream VMamba's
# recipe behind its 47.3 box AP / 42.7 mask AP. Upstream's detection configs inherit this Swin-T recipe (AdamW lr 1e-4,
# wd 0.05, no decay on norms, 1000-iteration warm-up, steps at epochs 8 and 11); only the backbone and the FPN input
# channels change.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, type='VMamba', arch='tiny', drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vmamba_tiny.pth')),
             neck=dict(in_channels=[96, 192, 384, 768]))
