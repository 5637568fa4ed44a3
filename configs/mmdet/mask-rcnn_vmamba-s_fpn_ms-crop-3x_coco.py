# Mask R-CNN with a VMamba-S [s2l15] backbone, upstream VMamba's 3x recipe (49.9 box AP / 44.2 mask AP): the VMamba-T
# file with the S arch, drop path and checkpoint.
_base_ = './mask-rcnn_vmamba-t_fpn_ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint='checkpoints/vmamba_small.pth')))
