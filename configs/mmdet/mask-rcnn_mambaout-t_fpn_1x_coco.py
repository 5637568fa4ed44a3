# Mask R-CNN with a MambaOut-T backbone on COCO, 1x schedule (12 epochs, 2 images x 8 GPUs). MambaOut's authors
# released no detection config (yuweihao/MambaOut#280 is open); this is our choice, following what the author says in
# #251 (Swin-based configs, a LayerNorm on each stage output, lr 1e-4 for all sizes, drop_path 0.3 for T, no layer-wise
# decay) and the paper's setting (Mask R-CNN 1x, 45.1 box AP / 41.0 mask AP for T): Swin's AdamW (wd 0.05, no decay
# on norms) and mmdet's 1x pipeline. Only the backbone, the FPN input channels and the optimizer differ from the base.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                     paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))

# ImageNet weights from the upstream release (yuweihao/MambaOut GitHub release assets; see configs/README.md).
pretrained = 'checkpoints/mambaout_tiny.pth'

model = dict(backbone=dict(_delete_=True, type='MambaOut', arch='tiny', drop_path_rate=0.3, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             neck=dict(in_channels=[96, 192, 384, 576]))
