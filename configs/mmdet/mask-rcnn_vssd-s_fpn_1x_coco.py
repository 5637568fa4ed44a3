# Mask R-CNN with a VSSD-S backbone on COCO, 1x schedule: the VSSD-T recipe with the Small backbone (upstream's
# drop_path 0.4).
_base_ = './mask-rcnn_vssd-t_fpn_1x_coco.py'

pretrained = 'checkpoints/vssd_small_best_ema.pth'

model = dict(backbone=dict(arch='small', drop_path_rate=0.4, init_cfg=dict(checkpoint=pretrained)))
