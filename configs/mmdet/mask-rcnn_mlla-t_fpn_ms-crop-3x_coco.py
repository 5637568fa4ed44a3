# Mask R-CNN with an MLLA-T backbone on COCO, upstream MLLA's 3x recipe (48.8 box AP / 43.8 mask AP): its 1x recipe
# (multi-scale + crop pipeline) for 36 epochs with steps at 27 and 33, and drop_path 0.3 as upstream's 3x models.
_base_ = './mask-rcnn_mlla-t_fpn_ms-crop-1x_coco.py'

model = dict(backbone=dict(drop_path_rate=0.3))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [{{_base_.warmup}}, dict(type='MultiStepLR', by_epoch=True, milestones=[27, 33], end=max_epochs)]
