# UperNet with a MambaOut-T backbone on ADE20K, 160k iterations at 512x512, 8 GPUs x 2 images. MambaOut's authors
# released no segmentation config; this is our choice, following what the author says in yuweihao/MambaOut#251
# (Swin's ADE20K config, a LayerNorm on each stage output, lr 1e-4 for all sizes, drop_path 0.3 for T, no layer-wise
# decay; the paper reports 47.4 mIoU single-scale for T): Swin's AdamW (wd 0.01, no decay on norms) and poly schedule
# with a 1500-iteration linear warm-up. Only the backbone, the head input channels and the optimizer differ from the
# base.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream release (yuweihao/MambaOut GitHub release assets; see configs/README.md).
pretrained = 'checkpoints/mambaout_tiny.pth'

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='MambaOut',
        arch='tiny',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 576]),
    auxiliary_head=dict(in_channels=384))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]

# 8 GPUs x 2 images (the base recipe is 4 x 4)
train_dataloader = dict(batch_size=2)
