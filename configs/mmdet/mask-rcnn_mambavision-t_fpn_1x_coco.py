# Mask R-CNN with a MambaVision-T backbone on COCO, 1x schedule (12 epochs, 2 images x 8 GPUs). Upstream released no
# Mask R-CNN; this recipe changes only what the backbone requires, with the backbone settings and optimizer of
# upstream's detection configs (NVlabs/MambaVision object_detection/configs/mamba_vision): AdamW lr 1e-4, wd 0.05, no
# decay on norms, no layer-wise decay, windows (8, 8, 112, 56), drop_path 0.2 (upstream's configs write 0.2/0.3/0.5
# for T/S/B, but its backbone never passes the value on and always trains at 0.2). Upstream trains with AMP: add --amp.
# Windows are padded and masked (masked_windows=True): at COCO sizes stages 3-4 are one global window over the map;
# set masked_windows=False for upstream's unmasked zero padding (e.g. to evaluate upstream's own det checkpoints).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream release (HF nvidia/MambaVision-T-1K; see configs/README.md).
pretrained = 'checkpoints/mambavision_tiny_1k.pth.tar'

model = dict(backbone=dict(_delete_=True, type='MambaVision', arch='tiny', window_size=(8, 8, 112, 56),
                           drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             neck=dict(in_channels=[80, 160, 320, 640]))

optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                     paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
