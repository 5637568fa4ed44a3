# Mask R-CNN with an MLLA-S backbone, upstream MLLA's 3x recipe (50.5 box AP / 44.9 mask AP): the MLLA-T file with the
# S arch and checkpoint.
_base_ = './mask-rcnn_mlla-t_fpn_ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='small', init_cfg=dict(checkpoint='checkpoints/MLLA_S.pth')))
