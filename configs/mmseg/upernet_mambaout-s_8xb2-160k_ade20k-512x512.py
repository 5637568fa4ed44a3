# UperNet with a MambaOut-S backbone on ADE20K, 160k at 512x512: the T recipe (our choice; no upstream config) with
# the S backbone and drop_path 0.4 (#251: "0.3 or 0.4" for S; the paper reports 49.5 mIoU).
_base_ = './upernet_mambaout-t_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/mambaout_small.pth'

model = dict(backbone=dict(arch='small', drop_path_rate=0.4, init_cfg=dict(checkpoint=pretrained)))
