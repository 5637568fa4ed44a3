# UperNet with a MambaVision-B backbone on ADE20K, 160k at 512x512: upstream's B recipe (49.1 mIoU; 16 GPUs x 1
# image, here 8 x 2), the T file with the B backbone (drop_path 0.2 as upstream effectively trains; its config writes
# 0.4; see the T file).
_base_ = './upernet_mambavision-t_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/mambavision_base_1k.pth.tar'

model = dict(backbone=dict(arch='base', init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[128, 256, 512, 1024]), auxiliary_head=dict(in_channels=512))
