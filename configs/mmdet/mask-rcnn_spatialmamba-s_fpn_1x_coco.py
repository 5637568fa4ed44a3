# Mask R-CNN with a Spatial-Mamba-S backbone, upstream Spatial-Mamba's 1x recipe (49.2 box AP / 44.0 mask AP): the
# Spatial-Mamba-T file with the S arch, drop path and checkpoint.
_base_ = './mask-rcnn_spatialmamba-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3,
                           init_cfg=dict(checkpoint='checkpoints/spatialmamba_small.pth')))
