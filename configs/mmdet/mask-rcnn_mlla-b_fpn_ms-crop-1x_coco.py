# Mask R-CNN with an MLLA-B backbone, upstream MLLA's 1x recipe (50.5 box AP / 45.0 mask AP): the MLLA-T file with the
# B arch, its checkpoint and its wider outputs.
_base_ = './mask-rcnn_mlla-t_fpn_ms-crop-1x_coco.py'

model = dict(backbone=dict(arch='base', init_cfg=dict(checkpoint='checkpoints/MLLA_B.pth')),
             neck=dict(in_channels=[96, 192, 384, 768]))
