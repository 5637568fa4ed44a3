# UperNet with a MambaOut-B backbone on ADE20K, 160k at 512x512: the T recipe (our choice; no upstream config) with
# the B backbone and drop_path 0.6 (#251; the paper reports 49.6 mIoU).
_base_ = './upernet_mambaout-t_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/mambaout_base.pth'

model = dict(backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[128, 256, 512, 768]), auxiliary_head=dict(in_channels=512))
