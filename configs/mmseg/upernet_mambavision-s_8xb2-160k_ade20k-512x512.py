# UperNet with a MambaVision-S backbone on ADE20K, 160k at 512x512: upstream's S recipe (48.2 mIoU, 8 GPUs x 2
# images), the T file with the S backbone and what upstream's S config changes: windows (8, 8, 160, 56) and lr 6e-5
# (drop_path 0.2 as upstream effectively trains; its config writes 0.7; see the T file).
_base_ = './upernet_mambavision-t_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/mambavision_small_1k.pth.tar'

model = dict(backbone=dict(arch='small', window_size=(8, 8, 160, 56), init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[96, 192, 384, 768]), auxiliary_head=dict(in_channels=384))

optim_wrapper = dict(optimizer=dict(lr=6e-5))
