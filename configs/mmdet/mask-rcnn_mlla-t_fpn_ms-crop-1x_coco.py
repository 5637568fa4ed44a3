# Mask R-CNN with an MLLA-T backbone on COCO: upstream MLLA's 1x recipe, the one behind its 46.8 box AP / 42.1 mask AP.
# Upstream trained its 1x models with the DETR-style multi-scale + crop pipeline of its 3x recipe, so the base is
# mmdet's Swin-T ms-crop-3x recipe (that pipeline, AdamW lr 1e-4, wd 0.05, 2 images x 8 GPUs) with upstream's 1x
# schedule (12 epochs, steps at 8 and 11, 500-iteration linear warm-up) and its only paramwise rule (no decay on norms).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, type='MLLA', arch='tiny', drop_path_rate=0.1, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint='checkpoints/MLLA_T.pth')),
             neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, custom_keys={'norm': dict(decay_mult=0.0)}))

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
warmup = dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500)
param_scheduler = [warmup, dict(type='MultiStepLR', by_epoch=True, milestones=[8, 11], end=max_epochs)]
