# UperNet with a VMamba-T [s1l8] backbone on ADE20K, 160k iterations at 512x512, 8 GPUs x 2 images: upstream VMamba's
# recipe behind its 47.9 / 48.8 mIoU (single / multi-scale). Upstream's segmentation configs inherit this Swin-T recipe
# (AdamW lr 6e-5, wd 0.01, no decay on norms, poly with a 1500-iteration linear warm-up); only the backbone and the
# head input channels change.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, type='VMamba', arch='tiny', drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vmamba_tiny.pth')),
             decode_head=dict(in_channels=[96, 192, 384, 768]), auxiliary_head=dict(in_channels=384))
