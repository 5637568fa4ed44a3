# Mask R-CNN with a Spatial-Mamba-B backbone, upstream Spatial-Mamba's 1x recipe (50.4 box AP / 45.1 mask AP): the
# Spatial-Mamba-T file with the B arch, drop path, checkpoint and wider outputs.
_base_ = './mask-rcnn_spatialmamba-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.5,
                           init_cfg=dict(checkpoint='checkpoints/spatialmamba_base.pth')),
             neck=dict(in_channels=[96, 192, 384, 768]))
