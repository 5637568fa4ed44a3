# Mask R-CNN with an MLLA-S backbone on COCO, 3x schedule (36 epochs) with the multi-scale crop (DETR-style) training
# pipeline, as upstream MLLA. The base is mmdet's Swin-T recipe of the same schedule, which already uses AdamW lr 1e-4,
# wd 0.05: only the backbone, the FPN input channels and the paramwise rules (no decay on norms; Swin's own keys
# dropped) differ from it.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream release (raw or converted with tools/convert_checkpoint.py; see configs/README.md).
pretrained = 'checkpoints/MLLA_S.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='MLLA',
        arch='small',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, custom_keys={'norm': dict(decay_mult=0.0)}))
