# Mask R-CNN with a MambaVision-B backbone on COCO, 1x: the T recipe with the B backbone (drop_path 0.2 as upstream
# effectively trains every size; see the T file).
_base_ = './mask-rcnn_mambavision-t_fpn_1x_coco.py'

pretrained = 'checkpoints/mambavision_base_1k.pth.tar'

model = dict(backbone=dict(arch='base', init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[128, 256, 512, 1024]))
