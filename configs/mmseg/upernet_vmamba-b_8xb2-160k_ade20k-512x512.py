# UperNet with a VMamba-B backbone on ADE20K, 160k iterations at 512x512, 8 GPUs x 2 images. Upstream VMamba's
# segmentation configs inherit this Swin-T recipe (AdamW lr 6e-5, wd 0.01, no decay on norms, poly schedule with a
# 1500-iteration linear warm-up); only the backbone and the head input channels change.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream VMamba v2 release (see README "Pretrained weights").
pretrained = 'checkpoints/vmamba_base.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='VMamba',
        arch='base',
        drop_path_rate=0.6,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
