# UperNet with a VSSD-B backbone on ADE20K: the VSSD-T recipe with the Base backbone (channels 96-768). Upstream
# released no VSSD-B segmentor; drop_path is B's ImageNet rate, following upstream's rule for T/S.
_base_ = './upernet_vssd-t_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/vssd_base_best_ema.pth'

model = dict(backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[96, 192, 384, 768]), auxiliary_head=dict(in_channels=384))
