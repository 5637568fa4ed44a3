# Mask R-CNN with a MambaOut-B backbone on COCO, 1x: the T recipe (our choice; no upstream config) with the B backbone
# and drop_path 0.6 (#251).
_base_ = './mask-rcnn_mambaout-t_fpn_1x_coco.py'

pretrained = 'checkpoints/mambaout_base.pth'

model = dict(backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[128, 256, 512, 768]))
