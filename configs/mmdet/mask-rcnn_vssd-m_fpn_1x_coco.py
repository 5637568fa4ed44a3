# Mask R-CNN with a VSSD-Micro backbone on COCO, 1x schedule: the VSSD-T recipe with the Micro backbone (channels
# 48-384, upstream's drop_path 0.1).
_base_ = './mask-rcnn_vssd-t_fpn_1x_coco.py'

pretrained = 'checkpoints/vssd_micro_best.pth'

model = dict(backbone=dict(arch='micro', drop_path_rate=0.1, init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[48, 96, 192, 384]))
