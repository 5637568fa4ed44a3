# UperNet with a Spatial-Mamba-T backbone on ADE20K, 160k iterations at 512x512, 16 images per iteration: upstream
# Spatial-Mamba's recipe behind its 48.6 / 49.4 mIoU (single / multi-scale). Upstream's segmentation configs inherit
# this Swin-T recipe unchanged (AdamW lr 6e-5, wd 0.01, no decay on norms, poly with a 1500-iteration linear warm-up,
# 2 images per GPU: its '4xb4' file name is not what the recipe sets); only the backbone and the head input channels
# change.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream Spatial-Mamba release (Google Drive links in its README; see configs/README.md).
model = dict(backbone=dict(_delete_=True, type='SpatialMamba', arch='tiny', drop_path_rate=0.2,
                           out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint='checkpoints/spatialmamba_tiny.pth')),
             decode_head=dict(in_channels=[64, 128, 256, 512]), auxiliary_head=dict(in_channels=256))
