# UperNet with a VSSD-S backbone on ADE20K: the VSSD-T recipe with the Small backbone (upstream's drop_path 0.4).
# Upstream's Small config loads the 'model_ema' entry of its checkpoint; the loader here takes 'model' first (pass a
# file holding only the EMA weights to use those).
_base_ = './upernet_vssd-t_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/vssd_small_best_ema.pth'

model = dict(backbone=dict(arch='small', drop_path_rate=0.4, init_cfg=dict(checkpoint=pretrained)))
