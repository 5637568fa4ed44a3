# Cascade Mask R-CNN with a MambaVision-T backbone on COCO, 3x (36 epochs), upstream's recipe
# (object_detection/configs/mamba_vision/cascade_mask_rcnn_mamba_vision_tiny_3x_coco.py: 51.1 box AP / 44.3 mask AP).
# It is mmdet's ConvNeXt cascade recipe (4conv1fc GIoU heads with SyncBN, DETR-style multi-scale crop, LR steps at
# 27 and 33) with upstream's backbone and optimizer: AdamW lr 1e-4, wd 0.05, no decay on norms, no layer-wise decay,
# windows (8, 8, 112, 56), drop_path 0.2 (upstream's configs write 0.2/0.3/0.5 for T/S/B, but its backbone never
# passes the value on). Upstream trains with AMP: add --amp. Windows are padded and masked by default; upstream's
# released cascade checkpoints were trained with unmasked zero padding (masked_windows=False reproduces it).
_base_ = 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

# replaces the base's mmpretrain import (its ConvNeXt backbone is replaced below)
custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# Upstream's optimizer in place of the base's layer-wise decay and AMP wrapper.
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                     paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))

# ImageNet weights from the upstream release (HF nvidia/MambaVision-T-1K; see configs/README.md).
pretrained = 'checkpoints/mambavision_tiny_1k.pth.tar'

model = dict(backbone=dict(_delete_=True, type='MambaVision', arch='tiny', window_size=(8, 8, 112, 56),
                           drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             neck=dict(in_channels=[80, 160, 320, 640]))
