# UperNet with a Vim-Ti backbone on ADE20K, 160k iterations at 512x512, 8 GPUs x 2 images. Only what the backbone
# requires differs from the base: the backbone (a 512 position table, as upstream's VisionMambaSeg, and the
# stride-4/8/16/32 pyramid fpn1..fpn4 over the mixer outputs of blocks 6/12/18/24), the head channels (upstream's
# UPerHead runs at the backbone width, 192: that is the paper's 13M-parameter model) and Vim's optimizer: AdamW lr
# 6e-5, wd 0.01, poly with a 1500-iteration linear warm-up (the paper, App. B; upstream's scripts ran 60k iterations
# at batch 32, lr 2e-4, wd 0.1), drop path 0.1 (VisionMamba's default; the seg config sets none). Upstream's
# LayerDecayOptimizerConstructor (rate 0.92) keys on `backbone.blocks`, which Vim does not have, so it scaled only
# pos_embed and patch_embed, by 0.92 ** 25; that is what the custom_keys below reproduce. Upstream tested in slide
# mode because its backbone only took 512x512; Vim here takes any size, so the base's whole-image test stays.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream release (hustvl/Vim-tiny-midclstok on Hugging Face; see configs/README.md).
# The 14x14 position table is resized to 32x32 at load time and the fpn1/fpn2 weights are new.
pretrained = 'checkpoints/vim_t_midclstok_76p1acc.pth'
embed_dim = 192
embedding_lr_mult = 0.92 ** 25

model = dict(pretrained=None,
             backbone=dict(_delete_=True, type='Vim', arch='tiny', img_size=512, drop_path_rate=0.1,
                           out_indices=(0, 1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             decode_head=dict(in_channels=[embed_dim] * 4, channels=embed_dim),
             auxiliary_head=dict(in_channels=embed_dim))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'norm': dict(decay_mult=0.0),
        'pos_embed': dict(lr_mult=embedding_lr_mult, decay_mult=0.0),
        'patch_embed': dict(lr_mult=embedding_lr_mult),
    }))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]

# 8 GPUs x 2 images (the base recipe is 4 x 4)
train_dataloader = dict(batch_size=2)

# fpn1's BatchNorm: synchronised across GPUs, as upstream's SyncBatchNorm (single-process runs keep BatchNorm).
sync_bn = 'torch'
