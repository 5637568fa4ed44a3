# Mask R-CNN with a VMamba-S [s2l15] backbone, upstream VMamba's 1x recipe (48.7 box AP / 43.7 mask AP): the VMamba-T
# file with the S arch, drop path and checkpoint.
_base_ = './mask-rcnn_vmamba-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint='checkpoints/vmamba_small.pth')))
