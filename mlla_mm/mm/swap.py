"""Put one of our backbones into a stock MMDetection or MMSegmentation recipe.

``swap_backbone(cfg, 'mlla_t', pretrained=PATH)`` returns the recipe with
- ``model.backbone`` replaced with ``_delete_`` semantics (no key of the old backbone survives) and ``model.pretrained``
  (MMSegmentation) cleared;
- the levels the recipe used kept: the old backbone's ``out_indices`` (level i = stage i at stride 4 * 2**i, the
  ResNet/Swin convention, which every backbone here follows) become the new backbone's ``out_indices``, so DINO's
  3-level ChannelMapper gets (1, 2, 3) and a 4-level FPN or UPerHead (0, 1, 2, 3);
- the input channels of whatever consumes the backbone set from the model definition: ``model.neck`` when there is
  one (the first neck of a list), otherwise (MMSegmentation) every decode and auxiliary head by its ``in_index``,
  including the low-level ``c1_in_channels`` of DeepLabV3+ (which reads backbone output 0);
- the family's ``swap_rules`` (``register_family(swap_rules=...)`` over ``DEFAULT_SWAP_RULES``): input normalisation, optimizer custom keys
  merged into ``paramwise_cfg.custom_keys`` (mmengine applies only the longest matching key, so a recipe key such
  as DETR's 'backbone' lr_mult=0.1 still wins over 'norm' for backbone norms: that is reported as a warning, not
  changed), and the family's AdamW in place of an SGD optimizer. Transformer-like
  backbones are trained with AdamW upstream, so an SGD recipe is switched unless ``keep_optimizer=True``; the lr
  schedule is kept, with any absolute ``eta_min`` scaled by new lr / old lr so the schedule keeps its shape. A
  recipe that already uses another optimizer (AdamW for DETR-style detectors and SegFormer) keeps it;
- ``custom_imports`` extended with ``mlla_mm.mm``.
Everything else is untouched. ``swap_changes`` gives the same changes as a config dict to merge over the recipe;
``tools/swap_backbone.py`` writes it out as a config file that inherits the recipe.

A backbone class in ``BACKBONES`` must take ``out_indices`` and expose ``feature_info`` (channels and reduction of every
level it can return) and ``swap_rules``.
"""
import contextlib
import copy
import inspect
import logging

import torch.nn as nn

from . import BACKBONE_NAMES, BACKBONES, REGISTERED_IN

logger = logging.getLogger('mlla_mm')

IMPORT = 'mlla_mm.mm'
WARNING = 'WARNING: '  # notes that start with it are logged as warnings


def swap_backbone(cfg, name, pretrained=None, keep_optimizer=False, **overrides):
    """Return a copy of the loaded mmdet/mmseg Config ``cfg`` with the backbone ``name`` (a key of BACKBONE_NAMES).

    Args:
        pretrained: checkpoint path for ``init_cfg=dict(type='Pretrained', ...)``; None starts from random weights.
        keep_optimizer: keep an SGD optimizer instead of switching to the family's AdamW.
        overrides: backbone arguments (e.g. ``drop_path_rate=0.2``, ``with_cp=True``, ``out_indices=(1, 2, 3)``).
    Raises ValueError when the recipe cannot take the backbone, naming the recipe part and the levels on both sides.
    """
    changes, _ = swap_changes(cfg, name, pretrained, keep_optimizer, **overrides)
    swapped = copy.deepcopy(cfg)
    # mmengine's own merge (the one _base_ inheritance uses), so the in-memory swap equals the written config file.
    swapped.merge_from_dict(copy.deepcopy(changes))
    return swapped


def swap_changes(cfg, name, pretrained=None, keep_optimizer=False, **overrides):
    """The changes ``swap_backbone`` makes, as (a config dict to merge over ``cfg``, a list of notes saying what
    changed and why). The notes are logged; a custom key of the recipe that overrides a family rule is a warning."""
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise ValueError(f"swap_backbone: the recipe's default_scope is {scope!r}; only mmdet and mmseg recipes "
                         'are supported')
    model = cfg.get('model') or {}
    if 'backbone' not in model:
        raise ValueError('swap_backbone: the recipe has no model.backbone')
    backbone = new_backbone_cfg(name, pretrained, **overrides)
    cls = BACKBONES[backbone['type']]
    probe = build_empty(cls, {k: v for k, v in backbone.items() if k not in ('type', 'out_indices')})
    rules = getattr(probe, 'swap_rules', None)
    if rules is None:
        raise TypeError(f'swap_backbone: {cls.__name__} defines no swap_rules (data_preprocessor, custom_keys, adamw); '
                        'every class in mlla_mm.mm.BACKBONES needs them')
    # The recipe's levels are matched by stride to the new backbone's feature_info.
    by_stride = {info['reduction']: (i, info['num_chs']) for i, info in enumerate(probe.feature_info)}

    if 'out_indices' in overrides:
        levels, source = tuple(overrides['out_indices']), 'the out_indices override asks for'
        new_indices = levels
    else:
        levels = recipe_levels(model.backbone, scope)
        source = f"the recipe's backbone ({model.backbone.get('type')}) feeds"
        new_indices = tuple(by_stride.get(s, (None,))[0] for s in recipe_strides(model.backbone, levels))
    if not levels or any(i not in range(len(probe.feature_info)) for i in new_indices):
        raise ValueError(
            f'swap_backbone: model.backbone.out_indices: {source} levels {levels} (strides '
            f'{recipe_strides(model.backbone, levels)}), but {name} ({backbone["type"]}) produces strides '
            f'{sorted(by_stride)} with channels {[c for _, c in sorted(by_stride.values())]}')
    backbone = new_backbone_cfg(name, pretrained, out_indices=new_indices,
                                **{k: v for k, v in overrides.items() if k != 'out_indices'})
    stage_channels = [info['num_chs'] for info in probe.feature_info]
    channels = [stage_channels[i] for i in new_indices]

    model_changes = dict(backbone=dict(_delete_=True, **backbone))
    notes = [f'model.backbone: {backbone["type"]} ({name}), levels {levels}, channels {channels}']
    if model.get('pretrained') is not None:
        model_changes['pretrained'] = None
        notes.append(f'model.pretrained: {model.pretrained!r} (a weight of the old backbone) -> None')
    model_changes.update(consumer_changes(model, scope, channels, levels, notes))
    preprocessor = data_preprocessor_changes(model, rules['data_preprocessor'], notes)
    if preprocessor:
        model_changes['data_preprocessor'] = preprocessor

    changes = dict(custom_imports=custom_imports(cfg), model=model_changes)
    if 'optim_wrapper' in cfg:
        changes.update(optimizer_changes(cfg, scope, rules, keep_optimizer, backbone['type'], probe, notes))
    for note in notes:
        (logger.warning if note.startswith(WARNING) else logger.info)('swap_backbone: %s', note)
    return changes, notes


def new_backbone_cfg(name, pretrained=None, **overrides):
    """The backbone dict for a short name (BACKBONE_NAMES[name], or 'timm:NAME' for any timm model), the overrides,
    and init_cfg for ``pretrained``."""
    if name.startswith('timm:'):
        backbone = dict(type='TimmBackbone', model_name=name[len('timm:'):], **overrides)
    elif name in BACKBONE_NAMES:
        backbone = {**BACKBONE_NAMES[name], **overrides}
    else:
        raise KeyError(f'unknown backbone {name!r}; known backbones: {", ".join(BACKBONE_NAMES)}, or timm:NAME '
                       'for a timm model')
    if pretrained is not None:
        backbone['init_cfg'] = dict(type='Pretrained', checkpoint=pretrained)
    return backbone


@contextlib.contextmanager
def _parameters_on_meta():
    """Parameters and buffers registered inside go to the 'meta' device: building a model then allocates and
    initialises nothing. (torch.device('meta') as a context is not enough: constructors read tensors such as the
    stochastic-depth rates with .tolist().) Not thread-safe: it patches nn.Module for the duration."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter_on_meta(module, name, param):
        if param is not None:
            param = nn.Parameter(param.to('meta'), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer_on_meta(module, name, tensor, persistent=True):
        register_buffer(module, name, None if tensor is None else tensor.to('meta'), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter_on_meta, buffer_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def build_empty(cls, kwargs):
    """Build the backbone with its parameters on the 'meta' device, to read its structure in milliseconds."""
    with _parameters_on_meta():
        return cls(**kwargs)


# Backbones whose output index i is not the map at stride 4 * 2**i (the ResNet/Swin convention): CSPDarknet and
# CSPNeXt count the stride-2 stem as index 0.
STRIDE_OF_INDEX = {'CSPDarknet': lambda i: 2 ** (i + 1), 'CSPNeXt': lambda i: 2 ** (i + 1)}
# Backbones without an out_indices argument, and the levels they always return.
FIXED_LEVELS = {'MSCAN': (0, 1, 2, 3)}
# Backbones a single-pyramid backbone cannot stand in for, and why.
REFUSED = {'HRNet': 'HRNet is multi-branch: its recipes (OCRNet, FCN-HR) concatenate all branches resized to the '
                    'finest and size their heads for that; swap the backbone of a UperNet or FPN recipe instead'}


def recipe_strides(backbone, levels):
    """The strides of the recipe backbone's output levels. Dilated ResNets (d8) keep their nominal pyramid levels:
    their heads resize whatever they get."""
    stride = STRIDE_OF_INDEX.get(str(backbone.get('type')).split('.')[-1], lambda i: 4 * 2 ** i)
    return [stride(i) for i in levels]


def recipe_levels(backbone, scope):
    """The stage indices the recipe's backbone returns: its out_indices, or its class default."""
    kind = str(backbone.get('type')).split('.')[-1]
    if kind in REFUSED:
        raise ValueError(f'swap_backbone: model.backbone ({kind}) cannot be replaced: {REFUSED[kind]}')
    if 'out_indices' in backbone:
        return tuple(backbone['out_indices'])
    if kind in FIXED_LEVELS:
        return FIXED_LEVELS[kind]
    cls = REGISTERED_IN[scope].get(backbone.get('type'))
    default = inspect.signature(cls).parameters.get('out_indices') if cls is not None else None
    if default is None or default.default is inspect.Parameter.empty:
        raise ValueError(f"swap_backbone: cannot tell which levels the recipe's backbone ({backbone.get('type')}) "
                         'returns: it sets no out_indices and has no default; pass out_indices=... explicitly')
    return tuple(default.default)


def _level_error(part, head, taken, levels):
    return ValueError(f'swap_backbone: {part} ({head.get("type")}) takes {taken} but the backbone returns '
                      f'{len(levels)} level(s) (out_indices {levels})')


def consumer_changes(model, scope, channels, levels, notes):
    """in_channels for what reads the backbone outputs: the neck, or (mmseg without a neck) the heads."""
    neck = model.get('neck')
    if neck:
        first = neck[0] if isinstance(neck, (list, tuple)) else neck
        part = 'model.neck[0]' if isinstance(neck, (list, tuple)) else 'model.neck'
        wanted = first.get('in_channels')
        if isinstance(wanted, (list, tuple)):
            if len(wanted) != len(channels):
                raise _level_error(part, first, f'{len(wanted)} levels (in_channels {list(wanted)})', levels)
            new = list(channels)
        elif isinstance(wanted, int):
            if len(channels) != 1:
                raise _level_error(part, first, f'one level (in_channels {wanted})', levels)
            new = channels[0]
        else:
            raise ValueError(f'swap_backbone: {part} ({first.get("type")}) has no in_channels to set')
        notes.append(f'{part}.in_channels: {wanted} -> {new}')
        if isinstance(neck, (list, tuple)):
            # A list in a config replaces the whole list, so state every neck.
            return dict(neck=[dict(first, in_channels=new)] + [dict(n) for n in neck[1:]])
        return dict(neck=dict(in_channels=new))
    head = model.get('panoptic_head')  # MaskFormer / Mask2Former: the pixel decoder sits inside the head
    if head and isinstance(head.get('in_channels'), (list, tuple)):
        return dict(panoptic_head=_all_levels_changes('model.panoptic_head', head, channels, levels, notes))
    if scope == 'mmdet':
        raise ValueError('swap_backbone: the recipe has no model.neck and no panoptic_head with in_channels; '
                         'for mmdet recipes the backbone must feed a neck (FPN, ChannelMapper, ...) or a '
                         'MaskFormer-style head, whose in_channels are set')
    changes = {}
    for key in ('decode_head', 'auxiliary_head'):
        heads = model.get(key)
        if not heads:
            continue
        as_list = isinstance(heads, (list, tuple))
        new_heads = []
        for i, head in enumerate(heads if as_list else [heads]):
            part = f'model.{key}[{i}]' if as_list else f'model.{key}'
            new_heads.append(_head_changes(part, head, channels, levels, notes, full=as_list))
        changes[key] = new_heads if as_list else new_heads[0]
    return changes


def _all_levels_changes(part, head, channels, levels, notes):
    """A head that reads every backbone level (MaskFormer, Mask2Former): in_channels is the list of all."""
    wanted = list(head['in_channels'])
    if len(wanted) != len(channels):
        raise _level_error(part, head, f'{len(wanted)} levels (in_channels {wanted})', levels)
    notes.append(f'{part}.in_channels: {wanted} -> {list(channels)}')
    return dict(in_channels=list(channels))


def _head_changes(part, head, channels, levels, notes, full):
    if 'kernel_generate_head' in head:  # K-Net: the iterative head wraps the head that reads the backbone
        inner = _head_changes(f'{part}.kernel_generate_head', head['kernel_generate_head'], channels, levels, notes,
                              full)
        return dict(head, kernel_generate_head=inner) if full else dict(kernel_generate_head=inner)
    if 'in_index' not in head and isinstance(head.get('in_channels'), (list, tuple)):
        return _all_levels_changes(part, head, channels, levels, notes)
    if 'in_channels' not in head:
        raise ValueError(f'swap_backbone: {part} ({head.get("type")}) has no in_channels to set')
    index = head.get('in_index', -1)  # BaseDecodeHead's default
    indexes = list(index) if isinstance(index, (list, tuple)) else [index]
    if any(not -len(channels) <= i < len(channels) for i in indexes):
        raise _level_error(part, head, f'in_index {index}', levels)
    new = dict(in_channels=[channels[i] for i in index] if isinstance(index, (list, tuple)) else channels[index])
    if head.get('c1_in_channels'):  # DeepLabV3+ low-level branch: reads backbone output 0 whatever in_index is
        new['c1_in_channels'] = channels[0]
    notes.append(f'{part}: ' + ', '.join(f'{k} {head.get(k)} -> {v}' for k, v in new.items()))
    return dict(head, **new) if full else new


def data_preprocessor_changes(model, wanted, notes):
    """The family's input normalisation where the recipe differs (e.g. the BGR caffe-style FCOS recipe)."""
    current = model.get('data_preprocessor')
    if not current:
        return {}
    changes = {k: v for k, v in wanted.items() if _normalised(current.get(k)) != _normalised(v)}
    if changes:
        notes.append('model.data_preprocessor: ' + ', '.join(f'{k} {current.get(k)} -> {v}' for k, v in changes.items())
                     + ' (the normalisation the backbone was trained with)')
    return changes


def _normalised(value):
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def custom_imports(cfg):
    existing = cfg.get('custom_imports') or {}
    imports = existing.get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    return dict(imports=imports + [IMPORT] * (IMPORT not in imports),
                allow_failed_imports=existing.get('allow_failed_imports', False))


def optimizer_changes(cfg, scope, rules, keep_optimizer, family, probe, notes):
    """The family's custom keys, and its AdamW in place of an SGD optimizer (with eta_min scaled to the new lr)."""
    optim_wrapper = cfg.optim_wrapper
    recipe_keys = dict((optim_wrapper.get('paramwise_cfg') or {}).get('custom_keys') or {})
    family_keys = copy.deepcopy(rules['custom_keys'])
    _warn_shadowed(recipe_keys, family_keys, family, probe, notes)
    changes = dict(optim_wrapper=dict(paramwise_cfg=dict(custom_keys=family_keys)))
    notes.append(f'optim_wrapper.paramwise_cfg.custom_keys: + {family_keys} ({family} rule)')

    optimizer = optim_wrapper.get('optimizer') or {}
    if keep_optimizer or str(optimizer.get('type', '')).split('.')[-1] != 'SGD':
        return changes
    adamw = dict(rules['adamw'][scope])
    changes['optim_wrapper']['optimizer'] = dict(_delete_=True, type='AdamW', **adamw)
    notes.append(f'optim_wrapper.optimizer: SGD (lr {optimizer.get("lr")}) -> AdamW {adamw} ({family} is trained '
                 f'with AdamW upstream; keep_optimizer=True / --keep-optimizer keeps SGD)')
    schedulers = cfg.get('param_scheduler')
    if schedulers and optimizer.get('lr'):
        as_list = isinstance(schedulers, (list, tuple))
        scale = adamw['lr'] / optimizer['lr']
        scaled = [dict(s, eta_min=float(f"{s['eta_min'] * scale:.6g}")) if s.get('eta_min') else dict(s)
                  for s in (schedulers if as_list else [schedulers])]
        if any(s.get('eta_min') for s in scaled):
            changes['param_scheduler'] = scaled if as_list else scaled[0]
            notes.append(f'param_scheduler: eta_min scaled by {scale:g} with the lr, so the schedule keeps its shape')
    return changes


def _warn_shadowed(recipe_keys, family_keys, family, probe, notes):
    """mmengine applies only the longest matching custom key to a parameter: a recipe key such as DETR's 'backbone'
    (lr_mult=0.1) then wins over the family's 'norm' for backbone norms. Say so instead of failing silently."""
    keys = {**recipe_keys, **family_keys}
    ordered = sorted(sorted(keys), key=len, reverse=True)  # mmengine's DefaultOptimWrapperConstructor order
    shadowed = {}
    for param_name, _ in probe.named_parameters():
        full_name = f'backbone.{param_name}'
        winner = next((k for k in ordered if k in full_name), None)
        for key in family_keys:
            if key in full_name and winner not in family_keys:
                shadowed[(winner, key)] = shadowed.get((winner, key), 0) + 1
    for (winner, key), count in shadowed.items():
        message = (f"optim_wrapper.paramwise_cfg.custom_keys: the recipe's key {winner!r} {recipe_keys[winner]} "
                   f"takes precedence over {family}'s {key!r} {family_keys[key]} for {count} backbone parameters "
                   '(mmengine applies only the longest matching key); they keep the recipe setting')
        notes.append(WARNING + message)
