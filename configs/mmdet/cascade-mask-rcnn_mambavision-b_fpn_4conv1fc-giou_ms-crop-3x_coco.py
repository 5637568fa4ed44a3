# Cascade Mask R-CNN with a MambaVision-B backbone on COCO, 3x: upstream's recipe (52.8 box AP / 45.7 mask AP), the
# T file with the B backbone and what upstream's B config changes: lr 2e-4 (its config and the config dumped beside its
# B training log both train B at 2e-4; T and S at 1e-4). drop_path 0.2 as upstream effectively trains; see the T file.
_base_ = './cascade-mask-rcnn_mambavision-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

pretrained = 'checkpoints/mambavision_base_1k.pth.tar'

model = dict(backbone=dict(arch='base', init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[128, 256, 512, 1024]))

optim_wrapper = dict(optimizer=dict(lr=2e-4))
