# UperNet with an MLLA-T backbone on ADE20K, 160k iterations at 512x512, 8 GPUs x 2 images. Only what the
# backbone requires differs from the base: the backbone, the head input channels and upstream MLLA's optimizer
# (AdamW lr 6e-5, wd 0.01, no decay on norms, poly with a 1500-iteration linear warm-up). Upstream released only B
# (drop_path 0.5); T and S use the drop_path of their ImageNet training.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream release (raw or converted with tools/convert_checkpoint.py; see configs/README.md).
pretrained = 'checkpoints/MLLA_T.pth'

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='MLLA',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]

# 8 GPUs x 2 images (the base recipe is 4 x 4)
train_dataloader = dict(batch_size=2)
