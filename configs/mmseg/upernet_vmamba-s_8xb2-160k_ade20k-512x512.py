# UperNet with a VMamba-S [s2l15] backbone on ADE20K (upstream 50.6 / 51.2 mIoU): the VMamba-T file with the S arch,
# drop path and checkpoint.
_base_ = './upernet_vmamba-t_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint='checkpoints/vmamba_small.pth')))
