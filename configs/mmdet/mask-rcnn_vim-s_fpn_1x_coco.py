# Mask R-CNN with a Vim-S backbone on COCO, 1x schedule: the Vim-Ti recipe with the S arch and checkpoint
# (upstream's cascade_mask_rcnn_vimdet_s_100ep.py keeps drop path 0.1 and layer decay 0.837).
_base_ = './mask-rcnn_vim-t_fpn_1x_coco.py'

pretrained = 'checkpoints/vim_s_midclstok_80p5acc.pth'
embed_dim = 384

model = dict(backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)), neck=dict(in_channels=[embed_dim] * 4))
