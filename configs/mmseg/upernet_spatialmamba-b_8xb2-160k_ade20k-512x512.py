# UperNet with a Spatial-Mamba-B backbone on ADE20K (upstream 51.8 / 52.6 mIoU): the Spatial-Mamba-T file with the B
# arch, drop path, checkpoint and wider outputs.
_base_ = './upernet_spatialmamba-t_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.5,
                           init_cfg=dict(checkpoint='checkpoints/spatialmamba_base.pth')),
             decode_head=dict(in_channels=[96, 192, 384, 768]), auxiliary_head=dict(in_channels=384))
