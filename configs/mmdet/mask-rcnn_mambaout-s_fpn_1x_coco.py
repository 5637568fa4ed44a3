# Mask R-CNN with a MambaOut-S backbone on COCO, 1x: the T recipe (our choice; no upstream config) with the S backbone
# and drop_path 0.4 (#251: "0.3 or 0.4" for S).
_base_ = './mask-rcnn_mambaout-t_fpn_1x_coco.py'

pretrained = 'checkpoints/mambaout_small.pth'

model = dict(backbone=dict(arch='small', drop_path_rate=0.4, init_cfg=dict(checkpoint=pretrained)))
