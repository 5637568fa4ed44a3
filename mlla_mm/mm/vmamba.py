"""VMamba as an MMDetection / MMSegmentation backbone (registered as ``VMamba``)."""
from mlla_mm.layers.ss2d import LayerNorm2d
from mlla_mm.models.vmamba import VMAMBA_ARCHS, VMamba, checkpoint_filter_fn

from .base import BackboneAdapter


class VMambaBackbone(BackboneAdapter, VMamba):
    """Multi-scale VMamba v2 backbone with the state-dict keys of upstream's ``Backbone_VSSM``
    (``patch_embed.*``, ``layers.*``, ``outnorm{i}.*``), so upstream classification and backbone checkpoints load.

    Args:
        arch: one of ``VMAMBA_ARCHS`` ('tiny', 'small', 'base', 'test') or a dict with embed_dim, depths, ssm_ratio
            (optionally d_state, mlp_ratio).
        out_indices: stages to return; each gets a LayerNorm2d ``outnorm{i}``. Outputs are NCHW maps at strides
            4, 8, 16, 32 with ceil rounding, channels embed_dim * 2**i.
        frozen_stages: -1 trains everything; k >= 0 freezes the stem and stages 0..k-1 (with their downsampling
            and output norms), kept frozen through ``train()``.
        norm_eval: accepted for the mm backbone interface. VMamba normalises only with LayerNorms, which keep no
            running statistics, so there is nothing to hold in eval mode.
        with_cp: gradient checkpointing per block.
        drop_path_rate, drop_rate: stochastic depth and dropout.
        backend: scan-kernel backend ('auto' | 'triton' | 'torch'; None reads MLLA_MM_BACKEND).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads an upstream VMamba v2 checkpoint
            (classification or backbone; ``state_dict`` / ``model`` / ``state_dict_ema`` entries or a raw dict).
            Missing and unexpected keys are reported; it raises when nothing matches, trunk weights are missing or
            shapes differ (e.g. a T [s2l5] checkpoint for T [s1l8]). A missing file is reported loudly and the
            backbone keeps its random initialisation.
    """

    family = 'VMamba'
    archs = VMAMBA_ARCHS
    arch_keys = ('embed_dim', 'depths', 'ssm_ratio')
    out_norm_prefix = 'outnorm'
    checkpoint_filter = staticmethod(checkpoint_filter_fn)

    def __init__(self, arch='tiny', out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, with_cp=False,
                 drop_path_rate=0.2, drop_rate=0.0, in_chans=3, backend=None, init_cfg=None):
        super().__init__(arch, out_indices, frozen_stages, norm_eval, init_cfg, with_cp=with_cp,
                         drop_path_rate=drop_path_rate, drop_rate=drop_rate, in_chans=in_chans, backend=backend)

    @staticmethod
    def make_out_norm(channels):
        return LayerNorm2d(channels)

    def forward(self, x):
        stages = self.forward_stages(x, last_stage=max(self.out_indices))
        return tuple(self.out_norm(i)(stages[i]).contiguous() for i in self.out_indices)
