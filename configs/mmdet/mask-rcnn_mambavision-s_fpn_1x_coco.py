# Mask R-CNN with a MambaVision-S backbone on COCO, 1x: the T recipe with the S backbone (drop_path 0.2 as upstream
# effectively trains every size; see the T file).
_base_ = './mask-rcnn_mambavision-t_fpn_1x_coco.py'

pretrained = 'checkpoints/mambavision_small_1k.pth.tar'

model = dict(backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[96, 192, 384, 768]))
