# Cascade Mask R-CNN with a MambaVision-S backbone on COCO, 3x: upstream's recipe (52.3 box AP / 45.2 mask AP), the
# T file with the S backbone (drop_path 0.2 as upstream effectively trains; see the T file).
_base_ = './cascade-mask-rcnn_mambavision-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

pretrained = 'checkpoints/mambavision_small_1k.pth.tar'

model = dict(backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[96, 192, 384, 768]))
