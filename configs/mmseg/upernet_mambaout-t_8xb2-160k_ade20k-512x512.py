# UperNet with a MambaOut-T backbone on ADE20K, 160k iterations at 512x512, 8 GPUs x 2 images. MambaOut's authors
# released no segmentation config; this is our choice, following what the author says in yuweihao/MambaOut#251
# (Swin's ADE20K config, a LayerNorm on each stage output, lr 1e-4 for all sizes, drop_path 0.3 for T, no layer-wise
# decay; the paper reports 47.4 mIoU single-scale for T): mmseg's Swin-T UperNet recipe (AdamW wd 0.01, no decay on
# norms, poly with a 1500-iteration linear warm-up) at lr 1e-4. Only the backbone, the head input channels and the lr
# differ from the base.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

optim_wrapper = dict(optimizer=dict(lr=1e-4))

# ImageNet weights from the upstream release (yuweihao/MambaOut GitHub release assets; see configs/README.md).
pretrained = 'checkpoints/mambaout_tiny.pth'

model = dict(backbone=dict(_delete_=True, type='MambaOut', arch='tiny', drop_path_rate=0.3, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             decode_head=dict(in_channels=[96, 192, 384, 576]), auxiliary_head=dict(in_channels=384))
