"""MLLA as an MMDetection / MMSegmentation backbone (registered as ``MLLA``)."""
import logging
import os

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mlla_mm.models.mlla import MLLA, MLLA_ARCHS, checkpoint_filter_fn
from mlla_mm.utils import load_state_dict_reported, read_state_dict

logger = logging.getLogger('mlla_mm')


class MLLABackbone(MLLA):
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

    # What `swap_backbone` applies to a recipe that takes this backbone (upstream MLLA detection/segmentation
    # configs): ImageNet RGB normalisation, no weight decay on norm layers, and the AdamW that replaces an SGD
    # recipe's optimizer, per library.
    swap_rules = dict(
        data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
        custom_keys={'norm': dict(decay_mult=0.0)},
        adamw=dict(mmdet=dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                   mmseg=dict(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)))

    def __init__(self, arch='tiny', out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, with_cp=False,
                 drop_path_rate=0.1, drop_rate=0.0, in_chans=3, backend=None, init_cfg=None):
        settings = self.arch_settings(arch)
        num_stages = len(settings['depths'])
        super().__init__(**settings, drop_rate=drop_rate, drop_path_rate=drop_path_rate, in_chans=in_chans,
                         num_classes=None, with_cp=with_cp, backend=backend)
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(i not in range(num_stages) for i in self.out_indices):
            raise ValueError(f'MLLA: out_indices {out_indices} must be a non-empty subset of {tuple(range(num_stages))}')
        if frozen_stages not in range(-1, num_stages + 1):
            raise ValueError(f'MLLA: frozen_stages={frozen_stages} must be in -1..{num_stages}')
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))
        self.out_channels = [self.num_features[i] for i in self.out_indices]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.init_cfg = init_cfg
        self._freeze_stages()

    @staticmethod
    def arch_settings(arch):
        if isinstance(arch, dict):
            needed = {'embed_dim', 'depths', 'num_heads'}
            if not needed <= set(arch):
                raise ValueError(f'MLLA: an arch dict needs the keys {sorted(needed)}, got {sorted(arch)}')
            return {k: v for k, v in arch.items() if k != 'drop_path_rate'}
        if arch not in MLLA_ARCHS:
            raise KeyError(f'MLLA: unknown arch {arch!r}; known archs: {", ".join(MLLA_ARCHS)}')
        return {k: v for k, v in MLLA_ARCHS[arch].items() if k != 'drop_path_rate'}

    def forward(self, x):
        stages = self.forward_stages(x, last_stage=max(self.out_indices))
        return tuple(getattr(self, f'norm{i}')(stages[i]).permute(0, 3, 1, 2).contiguous() for i in self.out_indices)

    def init_weights(self):
        if not self.init_cfg:
            return
        cfg = dict(self.init_cfg)
        if cfg.get('type') != 'Pretrained' or 'checkpoint' not in cfg:
            raise ValueError(f"MLLA: init_cfg must be dict(type='Pretrained', checkpoint=PATH), got {self.init_cfg}")
        path = cfg['checkpoint']
        if not os.path.isfile(path):
            logger.warning('!' * 100 + '\nMLLA: pretrained checkpoint %r not found: THE BACKBONE STARTS FROM RANDOM '
                           'WEIGHTS. Download it (README "Pretrained weights") or set '
                           'model.backbone.init_cfg=None to silence this.\n' + '!' * 100, path)
            return
        state_dict = checkpoint_filter_fn(read_state_dict(path), self)
        # The output norms are new in a classification checkpoint: they may stay at their initial values.
        load_state_dict_reported(self, state_dict, allowed_missing=tuple(f'norm{i}.' for i in self.out_indices),
                                 source=path)

    def _freeze_stages(self):
        frozen = [self.patch_embed] if self.frozen_stages >= 0 else []
        for i in range(self.frozen_stages):
            frozen.append(self.layers[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self
