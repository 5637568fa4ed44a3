# UperNet with an MLLA-B backbone on ADE20K, upstream MLLA's released recipe (51.9 mIoU single-scale, 52.5
# multi-scale): the MLLA-T file with the B arch, upstream's drop path 0.5, the B checkpoint and wider outputs.
_base_ = './upernet_mlla-t_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.5, init_cfg=dict(checkpoint='checkpoints/MLLA_B.pth')),
             decode_head=dict(in_channels=[96, 192, 384, 768]), auxiliary_head=dict(in_channels=384))
