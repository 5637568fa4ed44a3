"""The one OpenMMLab backbone adapter, generated per registered family, and the timm bridge (``TimmBackbone``).

``backbone_class(family)`` returns the class registered as ``family.name`` (``type='MLLA'``). Its instances are the
family's model itself (the built model's modules are adopted, so state-dict keys stay upstream's top-level ones:
``patch_embed.*``, ``layers.*``) plus upstream's per-output norms (``norm0``.. / ``outnorm0``..).
"""
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mlla_mm.models import create_model, get_family
from mlla_mm.models.registry import DEFAULT_SWAP_RULES
from mlla_mm.utils import load_checkpoint, log_report, read_state_dict


class FamilyBackbone(nn.Module):
    """Multi-scale backbone of a registered model family (see ``backbone_class``).

    Args:
        arch: an arch name of the family ('tiny', 'small', 'base', 'test', ...) or a dict of model settings.
        out_indices: levels to return; NCHW maps at the reductions of ``feature_info`` (ceil rounding), each
            through upstream's per-output norm where the family has one.
        frozen_stages: -1 trains everything; k >= 0 freezes the stem and the first k levels (with their output
            norms), kept frozen through ``train()``.
        norm_eval: keep every BatchNorm in eval mode while training.
        with_cp: gradient checkpointing per block.
        compile: True runs the backbone through ``torch.compile(fullgraph=True, dynamic=True)`` (one graph for every
            input size; the kernels are custom ops inside it); a dict gives more torch.compile options (e.g.
            ``dict(backend='inductor', mode='max-autotune')``). mmengine's ``compile=True`` compiles the whole train
            step instead.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads an upstream checkpoint (classification
            or detection/segmentation) strictly through the family's filter; a missing, corrupted or ill-fitting
            file raises. ``allow_code_execution=True`` in it unpickles a trusted local file fully (runs its code).
        **model_kwargs: settings of the model (drop_path_rate, backend, ...).
    """

    family = None  # set by backbone_class

    def __init__(self, arch='tiny', out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, with_cp=False,
                 compile=False, init_cfg=None, **model_kwargs):
        family = self.family
        kwargs = {**family.mm_defaults, **model_kwargs, 'num_classes': 0}
        if isinstance(arch, dict):
            model = family.model_cls(**{**arch, **kwargs})
        else:
            model = create_model(family.model_name(arch), **kwargs)
        num_levels = len(model.feature_info)
        model.prune_intermediate_layers(list(range(num_levels)), prune_norm=True, prune_head=True)
        nn.Module.__init__(self)  # not the model class's __init__: the model is built above
        # Adopt the built model's modules and attributes so keys stay upstream's (patch_embed.*, layers.*).
        self.__dict__.update(model.__dict__)
        if not out_indices or any(i not in range(num_levels) for i in out_indices):
            raise ValueError(f'{family.name}: out_indices {tuple(out_indices)} must be a non-empty subset of '
                             f'{tuple(range(num_levels))}')
        self.out_indices = tuple(out_indices)
        if frozen_stages not in range(-1, num_levels + 1):
            raise ValueError(f'{family.name}: frozen_stages={frozen_stages} must be in -1..{num_levels}')
        self.out_channels = [self.feature_info[i]['num_chs'] for i in self.out_indices]
        if family.out_norm:
            make_norm = family.out_norm_layer or nn.LayerNorm
            for i in self.out_indices:
                self.add_module(f'{family.out_norm}{i}', make_norm(self.feature_info[i]['num_chs']))
        self.set_grad_checkpointing(with_cp)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.init_cfg = init_cfg
        self._freeze_stages()
        options = dict(fullgraph=True, dynamic=True, **(compile if isinstance(compile, dict) else {}))
        self._compiled_maps = torch.compile(self._maps, **options) if compile else None

    def forward(self, x: torch.Tensor):
        return (self._compiled_maps or self._maps)(x)

    def _maps(self, x: torch.Tensor):
        maps = self.forward_intermediates(x, indices=list(self.out_indices), stop_early=True, output_fmt='NHWC',
                                          intermediates_only=True)
        if self.family.out_norm:
            maps = [getattr(self, f'{self.family.out_norm}{i}')(m) for i, m in zip(self.out_indices, maps)]
        return tuple(m.permute(0, 3, 1, 2).contiguous() for m in maps)

    def init_weights(self):
        """Load ``init_cfg``'s checkpoint; returns the keys left at their initial values (new output norms)."""
        if not self.init_cfg:
            return []
        cfg = dict(self.init_cfg)
        if cfg.get('type') != 'Pretrained' or 'checkpoint' not in cfg:
            raise ValueError(f"{self.family.name}: init_cfg must be dict(type='Pretrained', checkpoint=PATH), "
                             f'got {self.init_cfg}')
        out_norms = tuple(f'{self.family.out_norm}{i}.' for i in self.out_indices) if self.family.out_norm else ()
        # The output norms are new in a classification checkpoint: they may stay at their initial values.
        return load_checkpoint(self, cfg['checkpoint'], checkpoint_filter=self.family.checkpoint_filter,
                        allowed_missing=out_norms, allow_code_execution=cfg.get('allow_code_execution', False))

    def _frozen_modules(self):
        prefixes = [p for group in self.stage_prefixes()[:self.frozen_stages + 1] for p in group]
        if self.family.out_norm:
            prefixes += [f'{self.family.out_norm}{i}.' for i in self.out_indices if i < self.frozen_stages]
        return tuple(prefixes)

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        prefixes = self._frozen_modules()
        for name, param in self.named_parameters():
            if name.startswith(prefixes):
                param.requires_grad = False
        for name, module in self.named_modules():
            if f'{name}.'.startswith(prefixes):
                module.eval()

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self


def backbone_class(family) -> type:
    """The mm backbone class of a family: FamilyBackbone before the model class, named as the family."""
    return type(family.name, (FamilyBackbone, family.model_cls),
                {'family': family, 'swap_rules': family.rules(), '__module__': __name__,
                 '__doc__': f'{family.name} backbone (archs: {", ".join(family.archs)}). ' + FamilyBackbone.__doc__})


class TimmBackbone(nn.Module):
    """Any timm model that supports ``features_only`` as a backbone: ``type='TimmBackbone', model_name=NAME``.

    Args:
        model_name: a timm model name (``timm.list_models()``), e.g. 'convnext_tiny', 'mambaout_tiny'.
        out_indices: levels to return (indices into the model's feature_info).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH_OR_URL)``: a classification checkpoint of the model,
            loaded strictly by timm (through the model's own checkpoint filter).
        **kwargs: passed to ``timm.create_model`` (drop_path_rate, ...).
    Outputs are NCHW whatever the model's own layout; ``out_channels`` and ``reductions`` come from feature_info.
    """

    def __init__(self, model_name: str, out_indices=None, frozen_stages=-1, norm_eval=False, init_cfg=None,
                 **kwargs):
        super().__init__()
        import timm
        if not timm.is_model(model_name):
            raise KeyError(f'TimmBackbone: unknown timm model {model_name!r}; see timm.list_models() (e.g. '
                           f'convnext_tiny, mambaout_tiny, efficientvit_b1)')
        if frozen_stages != -1:
            raise ValueError('TimmBackbone: frozen_stages is not supported (timm models name their stages '
                             'differently); use -1')
        self.model_name = model_name
        self.timm_kwargs = dict(kwargs, **({} if out_indices is None else dict(out_indices=tuple(out_indices))))
        self.model = timm.create_model(model_name, features_only=True, **self.timm_kwargs)
        self.out_indices = tuple(self.model.feature_info.out_indices)
        self.feature_info = [dict(num_chs=c, reduction=r, module=m) for c, r, m in zip(
            self.model.feature_info.channels(), self.model.feature_info.reduction(),
            self.model.feature_info.module_name())]
        self.out_channels = self.model.feature_info.channels()
        # The model's own input normalisation (timm pretrained cfg, 0-1 scale) in mmdet/mmseg's 0-255 scale.
        cfg = self.model.pretrained_cfg
        self.swap_rules = dict(DEFAULT_SWAP_RULES, data_preprocessor=dict(
            mean=[round(m * 255, 3) for m in cfg.get('mean', (0.485, 0.456, 0.406))],
            std=[round(s * 255, 3) for s in cfg.get('std', (0.229, 0.224, 0.225))], bgr_to_rgb=True))
        self.norm_eval = norm_eval
        self.init_cfg = init_cfg

    def forward(self, x: torch.Tensor):
        maps = self.model(x)
        # Some timm models (MambaOut, ...) give channels-last maps; their feature getters say so in output_fmt.
        if getattr(self.model, 'output_fmt', 'NCHW') == 'NHWC':
            maps = [m.permute(0, 3, 1, 2) for m in maps]
        return tuple(m.contiguous() for m in maps)

    def init_weights(self):
        if not self.init_cfg:
            return
        cfg = dict(self.init_cfg)
        if cfg.get('type') != 'Pretrained' or 'checkpoint' not in cfg:
            raise ValueError(f"TimmBackbone: init_cfg must be dict(type='Pretrained', checkpoint=PATH), "
                             f'got {self.init_cfg}')
        import timm
        state_dict = read_state_dict(cfg['checkpoint'])
        # timm applies the model's checkpoint filter and loads strictly into the full model, then cuts it down.
        loaded = timm.create_model(self.model_name, features_only=True, pretrained=True,
                                   pretrained_cfg_overlay=dict(state_dict=state_dict), **self.timm_kwargs)
        self.model.load_state_dict(loaded.state_dict())
        log_report(f'TimmBackbone {self.model_name}: loaded {cfg["checkpoint"]} through timm')

    def train(self, mode=True):
        super().train(mode)
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self


def family_of_backbone(backbone_type: str):
    """The model family registered under an mm type name, or None."""
    try:
        return get_family(backbone_type)
    except KeyError:
        return None
