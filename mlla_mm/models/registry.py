"""Model registry (timm style) and the family table that the mm adapters, the timm bridge and the tools read.

See ``README.md`` beside this file for the contract a family file follows.
"""
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn

from mlla_mm.utils.checkpoint import load_checkpoint

_ENTRYPOINTS = {}   # model name -> constructor
_FAMILIES = {}      # mm type name -> Family
_MODEL_FAMILY = {}  # model name -> Family


def pretrained_cfg(file: str, url: str = '', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                   input_size=(3, 224, 224), crop_pct: float = 0.875, num_classes: int = 1000,
                   state_dict_key: str = 'model', **extra) -> dict:
    """Where a released checkpoint comes from and how it was trained to be fed (timm's pretrained_cfg fields)."""
    return dict(file=file, url=url, mean=tuple(mean), std=tuple(std), input_size=tuple(input_size),
                crop_pct=crop_pct, num_classes=num_classes, state_dict_key=state_dict_key, **extra)


@dataclass(frozen=True)
class Family:
    """What the OpenMMLab adapter and the tools need beyond the model class itself.

    Attributes:
        name: the mm backbone type (``type='MLLA'``).
        model_cls: the model class.
        archs: arch name -> model name, e.g. ``{'tiny': 'mlla_t', 'test': 'mlla_test'}``.
        checkpoint_filter: ``(state_dict, model) -> state_dict`` mapping upstream keys onto the model's.
        out_norm: name prefix of upstream's per-output norms in downstream checkpoints ('norm' gives norm0..3), or
            None when upstream's downstream backbone has none.
        out_norm_layer: channels -> module applied to a channels-last [B, H, W, C] map; None means nn.LayerNorm.
        swap_rules: what ``swap_backbone`` applies to a recipe (see ``DEFAULT_SWAP_RULES``); keys given here
            replace the defaults.
        mm_defaults: constructor defaults of the mm backbone that differ from the classification model (e.g. the
            detection drop_path_rate).
    """
    name: str
    model_cls: type
    archs: dict
    checkpoint_filter: Callable
    out_norm: Optional[str] = None
    out_norm_layer: Optional[Callable] = None
    swap_rules: dict = field(default_factory=dict)
    mm_defaults: dict = field(default_factory=dict)

    def model_name(self, arch: str) -> str:
        if arch not in self.archs:
            raise KeyError(f'{self.name}: unknown arch {arch!r}; known archs: {", ".join(self.archs)}')
        return self.archs[arch]

    def rules(self) -> dict:
        return {**DEFAULT_SWAP_RULES, **self.swap_rules}


# What `swap_backbone` applies to a recipe that takes a backbone of a family: ImageNet RGB normalisation, no weight
# decay on norm layers (and the model's no_weight_decay parameters), and the AdamW of the upstream
# detection/segmentation configs, per library, in place of SGD.
DEFAULT_SWAP_RULES = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    custom_keys={'norm': dict(decay_mult=0.0)},
    adamw=dict(mmdet=dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
               mmseg=dict(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)))


def register_model(fn):
    """Register a named constructor; its module's ``default_cfgs`` may describe its released checkpoint."""
    if fn.__name__ in _ENTRYPOINTS:
        raise ValueError(f'model {fn.__name__!r} is registered twice')
    _ENTRYPOINTS[fn.__name__] = fn
    return fn


def register_family(name: str, model_cls: type, archs: dict, checkpoint_filter: Callable, **kwargs) -> Family:
    """Declare a family (the last statement of a family file); every model it names must be registered."""
    if name in _FAMILIES:
        raise ValueError(f'family {name!r} is registered twice')
    unknown = [m for m in archs.values() if m not in _ENTRYPOINTS]
    if unknown:
        raise ValueError(f'family {name!r} names unregistered models {unknown}')
    family = Family(name, model_cls, dict(archs), checkpoint_filter, **kwargs)
    _FAMILIES[name] = family
    for model_name in archs.values():
        _MODEL_FAMILY[model_name] = family
    return family


def list_models():
    return sorted(_ENTRYPOINTS)


def list_families():
    return dict(_FAMILIES)


def _check_name(name: str):
    if name not in _ENTRYPOINTS:
        raise KeyError(f'unknown model {name!r}; known models: {", ".join(list_models())}')


def get_family(name: str) -> Family:
    """The family of a model name ('mlla_t') or an mm type name ('MLLA')."""
    if name in _FAMILIES:
        return _FAMILIES[name]
    _check_name(name)
    return _MODEL_FAMILY[name]


def get_pretrained_cfg(name: str) -> dict:
    """The ``default_cfgs`` entry of a model name ({} for test variants and models without a release)."""
    _check_name(name)
    module = sys.modules[_ENTRYPOINTS[name].__module__]
    return dict(getattr(module, 'default_cfgs', {}).get(name, {}))


def create_model(name: str, pretrained: Optional[str] = None, features_only: bool = False, out_indices=None,
                 **kwargs) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a name of ``list_models()``.
        pretrained: checkpoint path or URL (anything mmengine's CheckpointLoader reads), loaded strictly through the
            family's checkpoint filter; a missing, corrupted or ill-fitting file raises.
        features_only: return a :class:`FeatureMaps` of the model, whose forward gives NCHW maps.
        out_indices: the levels ``features_only`` returns (default: all).
        **kwargs: constructor arguments (num_classes, drop_path_rate, backend, ...).
    """
    _check_name(name)
    model = _ENTRYPOINTS[name](**kwargs)
    if pretrained:
        load_checkpoint(model, pretrained, checkpoint_filter=get_family(name).checkpoint_filter)
    if features_only:
        model = FeatureMaps(model, out_indices)
    return model


def feature_take_indices(num_levels: int, indices=None) -> list:
    """timm's index convention: None = all levels, int n = the last n, a sequence = those levels (negative ok)."""
    if indices is None:
        return list(range(num_levels))
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f'indices={indices} must be in 1..{num_levels} (the number of last levels to take)')
        return list(range(num_levels - indices, num_levels))
    taken = [i + num_levels if i < 0 else i for i in indices]
    if not taken or any(i not in range(num_levels) for i in taken):
        raise ValueError(f'indices {tuple(indices)} must be a non-empty subset of levels 0..{num_levels - 1}')
    return taken


def to_format(x: torch.Tensor, have: str, want: str) -> torch.Tensor:
    """Convert a map between 'NCHW' and 'NHWC'."""
    if want not in ('NCHW', 'NHWC'):
        raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {want!r}")
    if have == want:
        return x
    return x.permute(0, 3, 1, 2) if have == 'NHWC' else x.permute(0, 2, 3, 1)


class FeatureMaps(nn.Module):
    """A model's multi-scale NCHW maps, as timm's ``features_only=True`` gives them.

    ``feature_info.channels()`` / ``reduction()`` describe the returned levels.
    """

    def __init__(self, model: nn.Module, out_indices=None):
        super().__init__()
        self.out_indices = feature_take_indices(len(model.feature_info), out_indices)
        model.prune_intermediate_layers(self.out_indices, prune_norm=True, prune_head=True)
        self.model = model
        self.feature_info = FeatureInfo([model.feature_info[i] for i in self.out_indices])

    def forward(self, x: torch.Tensor) -> list:
        return self.model.forward_intermediates(x, indices=self.out_indices, stop_early=True, output_fmt='NCHW',
                                                intermediates_only=True)


class FeatureInfo(list):
    """``feature_info`` entries with timm's accessors."""

    def channels(self):
        return [info['num_chs'] for info in self]

    def reduction(self):
        return [info['reduction'] for info in self]

    def module_name(self):
        return [info['module'] for info in self]
