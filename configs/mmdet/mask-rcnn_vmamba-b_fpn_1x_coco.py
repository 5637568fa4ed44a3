# Mask R-CNN with a VMamba-B [s2l15] backbone, upstream VMamba's 1x recipe (49.2 box AP / 44.1 mask AP): the VMamba-T
# file with the B arch, drop path, checkpoint and wider outputs.
_base_ = './mask-rcnn_vmamba-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(checkpoint='checkpoints/vmamba_base.pth')),
             neck=dict(in_channels=[128, 256, 512, 1024]))
