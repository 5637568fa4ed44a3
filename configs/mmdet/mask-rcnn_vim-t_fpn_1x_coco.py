# Mask R-CNN with a Vim-Ti backbone on COCO, 1x schedule (12 epochs, 2 images x 8 GPUs). Only what the backbone
# requires differs from the base: the backbone (its stride-4/8/16/32 pyramid is upstream's fpn1..fpn4: deconvs,
# identity and max pool over the mixer outputs of blocks 6/12/18/24, 192 channels each), the FPN input channels and
# upstream Vim's detection optimizer (det/projects/ViTDet/configs/COCO/cascade_mask_rcnn_vimdet_t_100ep_adj1.py:
# AdamW lr 1e-4, wd 0.1, no decay on pos_embed and norms, drop path 0.1, layer-wise lr decay 0.837 with
# get_vim_lr_decay_rate's ids: pos_embed / patch_embed 0, layers.i i+1, everything else 25). Upstream trained Cascade
# Mask R-CNN with ViTDet's simple feature pyramid at 1024 LSJ for 100 epochs in detectron2; this file keeps mmdet's
# Mask R-CNN 1x recipe unchanged.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

# ImageNet weights from the upstream release (hustvl/Vim-tiny-midclstok on Hugging Face; see configs/README.md).
# The fpn1/fpn2 weights are new; pos_embed keeps its 14x14 table and is resized to every input on the fly.
pretrained = 'checkpoints/vim_t_midclstok_76p1acc.pth'
embed_dim = 192
depth = 24
layer_decay_rate = 0.837

model = dict(backbone=dict(_delete_=True, type='Vim', arch='tiny', drop_path_rate=0.1, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             neck=dict(in_channels=[embed_dim] * 4))

# mmengine matches custom_keys as substrings, longest first, and applies only the first match: each block gets its
# lr scale from 'layers.{i}.', and its RMSNorm both the scale and no decay from 'layers.{i}.norm'.
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(custom_keys={
        'norm': dict(decay_mult=0.0),
        'pos_embed': dict(lr_mult=layer_decay_rate ** (depth + 1), decay_mult=0.0),
        'patch_embed': dict(lr_mult=layer_decay_rate ** (depth + 1)),
        **{f'layers.{i}.': dict(lr_mult=layer_decay_rate ** (depth - i)) for i in range(depth)},
        **{f'layers.{i}.norm': dict(lr_mult=layer_decay_rate ** (depth - i), decay_mult=0.0) for i in range(depth)},
    }))

# fpn1's BatchNorm sees 2 images per GPU: synchronise it across GPUs, as upstream's SyncBatchNorm (single-process
# runs keep plain BatchNorm).
sync_bn = 'torch'
