# Mask R-CNN with a Spatial-Mamba-T backbone on COCO, 1x schedule (12 epochs, 2 images x 8 GPUs): upstream
# Spatial-Mamba's recipe behind its 47.6 box AP / 42.9 mask AP. Upstream's detection configs inherit this Swin-T recipe
# unchanged (AdamW lr 1e-4, wd 0.05, no decay on norms, 1000-iteration warm-up, steps at epochs 8 and 11, fp32); only
# the backbone and the FPN input channels change. drop_path is the ImageNet rate, as upstream.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream Spatial-Mamba release (Google Drive links in its README; see configs/README.md).
model = dict(backbone=dict(_delete_=True, type='SpatialMamba', arch='tiny', drop_path_rate=0.2,
                           out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint='checkpoints/spatialmamba_tiny.pth')),
             neck=dict(in_channels=[64, 128, 256, 512]))
