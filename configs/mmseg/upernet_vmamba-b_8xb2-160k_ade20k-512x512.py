# UperNet with a VMamba-B [s2l15] backbone on ADE20K (upstream 51.0 / 51.6 mIoU): the VMamba-T file with the B arch,
# drop path, checkpoint and wider outputs.
_base_ = './upernet_vmamba-t_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(checkpoint='checkpoints/vmamba_base.pth')),
             decode_head=dict(in_channels=[128, 256, 512, 1024]), auxiliary_head=dict(in_channels=512))
