# Mask R-CNN with a VSSD-B backbone on COCO, 1x schedule: the VSSD-T recipe with the Base backbone (channels
# 96-768). Upstream released no VSSD-B detector; drop_path is B's ImageNet rate, following upstream's rule for M/T/S.
_base_ = './mask-rcnn_vssd-t_fpn_1x_coco.py'

pretrained = 'checkpoints/vssd_base_best_ema.pth'

model = dict(backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[96, 192, 384, 768]))
