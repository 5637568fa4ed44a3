# UperNet with an MLLA-S backbone on ADE20K: the MLLA-T file with the S arch, drop path and checkpoint.
_base_ = './upernet_mlla-t_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint='checkpoints/MLLA_S.pth')))
