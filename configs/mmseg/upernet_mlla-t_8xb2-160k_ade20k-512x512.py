# UperNet with an MLLA-T backbone on ADE20K, 160k iterations at 512x512, 8 GPUs x 2 images: upstream MLLA's recipe
# (its mlla_b_upernet.py with the T backbone). Upstream built it on the Swin UperNet recipe, as this file does (AdamW
# lr 6e-5, wd 0.01, no decay on norms, poly with a 1500-iteration linear warm-up); only the backbone and the head input
# channels change. Upstream released only B (drop_path 0.5); T and S use the drop_path of their ImageNet training.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mlla_mm.mm'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, type='MLLA', arch='tiny', drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type='Pretrained', checkpoint='checkpoints/MLLA_T.pth')),
             decode_head=dict(in_channels=[64, 128, 256, 512]), auxiliary_head=dict(in_channels=256))
