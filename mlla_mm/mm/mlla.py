"""MLLA as an MMDetection / MMSegmentation backbone (registered as ``MLLA``)."""
import torch.nn as nn

from mlla_mm.models.mlla import MLLA, MLLA_ARCHS, checkpoint_filter_fn

from .base import BackboneAdapter


class MLLABackbone(BackboneAdapter, MLLA):
    """Multi-scale MLLA backbone with the state-dict keys of the upstream downstream backbone
    (``patch_embed.*``, ``layers.*``, ``norm{i}.*``), so upstream classification and backbone checkpoints load.

    Args:
        arch: one of ``MLLA_ARCHS`` ('tiny', 'small', 'base', 'test') or a dict with embed_dim, depths, num_heads.
        out_indices: stages to return; each gets a LayerNorm ``norm{i}``. Outputs are NCHW maps at strides
            4, 8, 16, 32 with ceil rounding, channels embed_dim * 2**i.
        frozen_stages: -1 trains everything; k >= 0 freezes the stem and stages 0..k-1 (and their output norms),
            kept frozen through ``train()``.
        norm_eval: keep the BatchNorms (stem, downsampling) in eval mode while training.
        with_cp: gradient checkpointing per block.
        drop_path_rate, drop_rate: stochastic depth and dropout.
        backend: linear-attention backend ('auto' | 'triton' | 'torch'; None reads MLLA_MM_BACKEND).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads an upstream MLLA checkpoint (classification or
            backbone; ``state_dict`` / ``model`` / ``state_dict_ema`` entries or a raw dict). Missing and unexpected
            keys are reported; it raises when nothing matches or trunk weights are missing. A missing file is
            reported loudly and the backbone keeps its random initialisation.
    """

    family = 'MLLA'
    archs = MLLA_ARCHS
    arch_keys = ('embed_dim', 'depths', 'num_heads')
    out_norm_prefix = 'norm'
    checkpoint_filter = staticmethod(checkpoint_filter_fn)

    def __init__(self, arch='tiny', out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, with_cp=False,
                 drop_path_rate=0.1, drop_rate=0.0, in_chans=3, backend=None, init_cfg=None):
        super().__init__(arch, out_indices, frozen_stages, norm_eval, init_cfg, with_cp=with_cp,
                         drop_path_rate=drop_path_rate, drop_rate=drop_rate, in_chans=in_chans, backend=backend)

    @staticmethod
    def make_out_norm(channels):
        return nn.LayerNorm(channels)

    def forward(self, x):
        stages = self.forward_stages(x, last_stage=max(self.out_indices))
        return tuple(self.out_norm(i)(stages[i]).permute(0, 3, 1, 2).contiguous() for i in self.out_indices)
