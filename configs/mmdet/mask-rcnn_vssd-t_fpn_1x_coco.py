# Mask R-CNN with a VSSD-T backbone on COCO, 1x schedule (12 epochs, 2 images x 8 GPUs). Upstream VSSD's detection
# configs inherit this Swin-T recipe (AdamW lr 1e-4, wd 0.05, no decay on norms, 1000-iteration warm-up, steps at
# epochs 8 and 11, fp32); only the backbone and the FPN input channels change. drop_path is the ImageNet rate, as
# upstream.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream VSSD release (HF YuhengSSS/VSSD: vssd_tiny_best_ema.pth; see configs/README.md).
pretrained = 'checkpoints/vssd_tiny_best_ema.pth'

model = dict(backbone=dict(_delete_=True, type='VSSD', arch='tiny', drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             neck=dict(in_channels=[64, 128, 256, 512]))
