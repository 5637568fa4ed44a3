# UperNet with a VSSD-Micro backbone on ADE20K: the VSSD-T recipe with the Micro backbone (channels 48-384,
# drop_path 0.1, its ImageNet rate; upstream's Micro segmentation config is not in its repository).
_base_ = './upernet_vssd-t_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/vssd_micro_best.pth'

model = dict(backbone=dict(arch='micro', drop_path_rate=0.1, init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[48, 96, 192, 384]), auxiliary_head=dict(in_channels=192))
