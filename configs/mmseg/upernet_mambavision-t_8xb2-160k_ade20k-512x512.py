# UperNet with a MambaVision-T backbone on ADE20K, 160k iterations at 512x512, batch 16, upstream's recipe
# (semantic_segmentation/configs/mamba_vision/mamba_vision_160k_ade20k-512x512_tiny.py: 46.0 mIoU; it ran 16 GPUs x
# 1 image, here 8 x 2). That recipe is mmseg's Swin-T UperNet one (AdamW wd 0.01, no decay on norms, no layer-wise
# decay, poly with a 1500-iteration linear warm-up) at lr 5e-5; only the backbone (windows (8, 8, 64, 32), drop_path
# 0.2: upstream's config writes 0.3, but its backbone never passes the value on and trains at 0.2), the head input
# channels and the lr differ from the base. Upstream trains with AMP: add --amp. Windows are padded and masked by
# default (masked_windows=False is upstream's unmasked zero padding, which its released ADE20K checkpoints were
# trained with).
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

optim_wrapper = dict(optimizer=dict(lr=5e-5))

# ImageNet weights from the upstream release (HF nvidia/MambaVision-T-1K; see configs/README.md).
pretrained = 'checkpoints/mambavision_tiny_1k.pth.tar'

model = dict(backbone=dict(_delete_=True, type='MambaVision', arch='tiny', window_size=(8, 8, 64, 32),
                           drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             decode_head=dict(in_channels=[80, 160, 320, 640]), auxiliary_head=dict(in_channels=320))
