# UperNet with a VSSD-T backbone on ADE20K, 160k iterations at 512x512, 8 GPUs x 2 images. Upstream VSSD's
# segmentation configs inherit this Swin-T recipe (AdamW lr 6e-5, wd 0.01, no decay on norms, 1500-iteration linear
# warm-up then poly, fp32); only the backbone and the head input channels change. drop_path is the ImageNet rate,
# as upstream.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream VSSD release (HF YuhengSSS/VSSD: vssd_tiny_best_ema.pth; see configs/README.md).
pretrained = 'checkpoints/vssd_tiny_best_ema.pth'

model = dict(backbone=dict(_delete_=True, type='VSSD', arch='tiny', drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             decode_head=dict(in_channels=[64, 128, 256, 512]), auxiliary_head=dict(in_channels=256))
