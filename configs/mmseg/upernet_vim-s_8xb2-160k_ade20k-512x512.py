# UperNet with a Vim-S backbone on ADE20K: the Vim-Ti recipe with the S arch, checkpoint and width (UPerHead at 384
# channels, as upstream). Upstream's Vim-S segmentation run used RoPE and residual-stream features (which this
# backbone does not have) and layer decay 0.95, which, as for Ti, scaled only pos_embed and patch_embed.
_base_ = './upernet_vim-t_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/vim_s_midclstok_80p5acc.pth'
embed_dim = 384
embedding_lr_mult = 0.95 ** 25

model = dict(backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[embed_dim] * 4, channels=embed_dim),
             auxiliary_head=dict(in_channels=embed_dim))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'pos_embed': dict(lr_mult=embedding_lr_mult, decay_mult=0.0),
    'patch_embed': dict(lr_mult=embedding_lr_mult)}))
