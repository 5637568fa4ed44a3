"""What every mm backbone adapter shares: arch lookup, per-output norms, Pretrained loading and frozen stages."""
import logging
import os

from torch.nn.modules.batchnorm import _BatchNorm

from mlla_mm.utils import load_state_dict_reported, read_state_dict

logger = logging.getLogger('mlla_mm')


class BackboneAdapter:
    """Mixed in before a model class: ``class MLLABackbone(BackboneAdapter, MLLA)``.

    The model class takes its arch settings plus ``num_classes=None`` (trunk only) and the keyword arguments passed
    through here, defines ``patch_embed``, ``layers`` and ``num_features``, and has ``forward_stages``. A subclass
    sets the class attributes below and ``make_out_norm(channels)``.
    """

    family = None          # the registered type name, used in messages
    archs = None           # arch name -> settings of the model class
    arch_keys = ()         # the keys an arch dict must give
    out_norm_prefix = None  # upstream's name of the per-output norms: 'norm' gives norm0, norm1, ...
    checkpoint_filter = None  # the family's (state_dict, model) -> state_dict

    # What `swap_backbone` applies to a recipe that takes the backbone: ImageNet RGB normalisation, no weight decay on
    # norm layers, and the AdamW of the upstream detection/segmentation configs, per library, in place of SGD.
    swap_rules = dict(
        data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
        custom_keys={'norm': dict(decay_mult=0.0)},
        adamw=dict(mmdet=dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                   mmseg=dict(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)))

    def __init__(self, arch, out_indices, frozen_stages, norm_eval, init_cfg, **model_kwargs):
        super().__init__(**self.arch_settings(arch), num_classes=None, **model_kwargs)
        num_stages = len(self.num_features)
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(i not in range(num_stages) for i in self.out_indices):
            raise ValueError(f'{self.family}: out_indices {out_indices} must be a non-empty subset of '
                             f'{tuple(range(num_stages))}')
        if frozen_stages not in range(-1, num_stages + 1):
            raise ValueError(f'{self.family}: frozen_stages={frozen_stages} must be in -1..{num_stages}')
        for i in self.out_indices:
            self.add_module(f'{self.out_norm_prefix}{i}', self.make_out_norm(self.num_features[i]))
        self.out_channels = [self.num_features[i] for i in self.out_indices]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.init_cfg = init_cfg
        self._freeze_stages()

    @classmethod
    def arch_settings(cls, arch):
        """The model settings of an arch name or dict, without the ImageNet drop_path_rate."""
        if isinstance(arch, dict):
            if not set(cls.arch_keys) <= set(arch):
                raise ValueError(f'{cls.family}: an arch dict needs the keys {sorted(cls.arch_keys)}, '
                                 f'got {sorted(arch)}')
            settings = arch
        elif arch in cls.archs:
            settings = cls.archs[arch]
        else:
            raise KeyError(f'{cls.family}: unknown arch {arch!r}; known archs: {", ".join(cls.archs)}')
        return {k: v for k, v in settings.items() if k != 'drop_path_rate'}

    def out_norm(self, i):
        return getattr(self, f'{self.out_norm_prefix}{i}')

    def init_weights(self):
        if not self.init_cfg:
            return
        cfg = dict(self.init_cfg)
        if cfg.get('type') != 'Pretrained' or 'checkpoint' not in cfg:
            raise ValueError(f"{self.family}: init_cfg must be dict(type='Pretrained', checkpoint=PATH), "
                             f'got {self.init_cfg}')
        path = cfg['checkpoint']
        if not os.path.isfile(path):
            logger.warning('!' * 100 + '\n%s: pretrained checkpoint %r not found: THE BACKBONE STARTS FROM RANDOM '
                           'WEIGHTS. Download it (README "Pretrained weights") or set '
                           'model.backbone.init_cfg=None to silence this.\n' + '!' * 100, self.family, path)
            return
        state_dict = type(self).checkpoint_filter(read_state_dict(path), self)
        # The output norms are new in a classification checkpoint: they may stay at their initial values.
        load_state_dict_reported(self, state_dict, source=path,
                                 allowed_missing=tuple(f'{self.out_norm_prefix}{i}.' for i in self.out_indices))

    def _freeze_stages(self):
        frozen = [self.patch_embed] if self.frozen_stages >= 0 else []
        for i in range(self.frozen_stages):
            frozen.append(self.layers[i])
            if i in self.out_indices:
                frozen.append(self.out_norm(i))
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
