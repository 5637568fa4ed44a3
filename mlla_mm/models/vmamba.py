"""VMamba v2 ("VMamba: Visual State Space Model", Liu et al., NeurIPS 2024), re-implemented channel-first with the
module names of the upstream code (``classification/models/vmamba.py``), so that its ImageNet checkpoints load by key.

Released v2 settings (reference/vmamba.md §1.7): SS2D ``v05_noz``, d_state 1, channel-first ``ln2d`` norms, stem
v2, downsampling v3, MLP ratio 4. Activations stay [B, C, H, W]; any input size works (each stride-2 conv rounds up),
and the scans flatten whatever H x W they receive.
"""
from collections import OrderedDict

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mlla_mm.layers import DropPath, init_linear_and_layernorm
from mlla_mm.layers.ss2d import SS2D, LayerNorm2d, Linear2d, Mlp2d
from mlla_mm.utils import check_images, log_report, strip_wrapper_prefixes

from .registry import feature_take_indices, pretrained_cfg, register_family, register_model, to_format

# Settings of the released v2 models; 'test' is a tiny variant for fast CPU tests.
VMAMBA_ARCHS = {
    'tiny': dict(embed_dim=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, drop_path_rate=0.2),    # VMamba-T [s1l8]
    'small': dict(embed_dim=96, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.3),  # VMamba-S [s2l15]
    'base': dict(embed_dim=128, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.6),  # VMamba-B [s2l15]
    'test': dict(embed_dim=16, depths=(1, 1, 2, 1), ssm_ratio=2.0, drop_path_rate=0.1),
}


def patch_embed_v2(in_chans: int, embed_dim: int) -> nn.Sequential:
    """Stem, stride 4: conv3x3 s2 -> LN -> GELU -> conv3x3 s2 -> LN. [B, 3, H, W] -> [B, C, ceil(H/4), ceil(W/4)].

    The Identity slots stand where upstream permutes for channel-last norms, so the keys are upstream's
    ``patch_embed.{0,2,5,7}``."""
    return nn.Sequential(
        nn.Conv2d(in_chans, embed_dim // 2, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(embed_dim // 2),
        nn.Identity(), nn.GELU(),
        nn.Conv2d(embed_dim // 2, embed_dim, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(embed_dim))


def downsample_v3(dim: int, out_dim: int) -> nn.Sequential:
    """conv3x3 s2 -> LN: [B, C, H, W] -> [B, C', ceil(H/2), ceil(W/2)]; keys ``downsample.{1,3}`` as upstream."""
    return nn.Sequential(nn.Identity(), nn.Conv2d(dim, out_dim, 3, stride=2, padding=1), nn.Identity(),
                         LayerNorm2d(out_dim))


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))), then x + DropPath(MLP(LN(x))). [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, dim, drop_path=0.0, d_state=1, ssm_ratio=1.0, mlp_ratio=4.0, drop=0.0, backend=None):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, backend=backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp2d(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VSSStage(nn.Sequential):
    """``blocks`` then ``downsample`` (Identity after the last stage), named as upstream's
    ``nn.Sequential(OrderedDict(blocks=..., downsample=...))``. Returns (stage output, input of the next stage)."""

    def __init__(self, dim, out_dim, depth, drop_path, d_state, ssm_ratio, mlp_ratio, drop, downsample, backend):
        super().__init__(OrderedDict(
            blocks=nn.Sequential(*[VSSBlock(dim, drop_path[i], d_state, ssm_ratio, mlp_ratio, drop, backend)
                                   for i in range(depth)]),
            downsample=downsample_v3(dim, out_dim) if downsample else nn.Identity()))
        self.with_cp = False

    def forward(self, x: torch.Tensor):
        for block in self.blocks:
            if self.with_cp and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x, self.downsample(x)


class VMamba(nn.Module):
    """VMamba v2 with an ImageNet head (``classifier``: norm -> pool -> head, as upstream).

    Args:
        embed_dim: channels of stage 1; stage i has embed_dim * 2**i.
        depths: blocks per stage.
        d_state: SSM state size (1 in the released models).
        ssm_ratio: SS2D expansion d_inner / C.
        mlp_ratio: MLP hidden / C.
        num_classes: classifier size; 0 keeps the final norm and pooling with an Identity head.
        with_cp: gradient checkpointing per block.
        backend: scan-kernel backend ('auto' | 'triton' | 'torch'; None reads MLLA_MM_BACKEND).
    """

    def __init__(self, embed_dim=96, depths=(2, 2, 8, 2), d_state=1, ssm_ratio=1.0, mlp_ratio=4.0, drop_rate=0.0,
                 drop_path_rate=0.2, in_chans=3, num_classes=1000, with_cp=False, backend=None):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.num_features = dims[-1]
        self.patch_embed = patch_embed_v2(in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            first = sum(depths[:i])
            last = i == len(depths) - 1
            self.layers.append(VSSStage(
                dim, None if last else dims[i + 1], depth, rates[first:first + depth], d_state, ssm_ratio,
                mlp_ratio, drop_rate, downsample=not last, backend=backend))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f'layers.{i}'))
        self.classifier = nn.Sequential(OrderedDict(
            norm=LayerNorm2d(self.num_features),
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            head=nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()))
        self.set_grad_checkpointing(with_cp)
        # As upstream (Linear2d included); SS2D's own parameters keep SS2D.reset_ssm_parameters' values.
        self.apply(init_linear_and_layernorm)


    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.layers:
            stage.with_cp = enable

    def no_weight_decay(self):
        # Upstream's SS2D marks its A_logs and Ds (the SSM's decay and skip) as no-decay.
        return {name for name, _ in self.named_parameters() if name.endswith(('A_logs', 'Ds'))}

    def stage_prefixes(self):
        return [('patch_embed.',)] + [(f'layers.{i}.',) for i in range(len(self.layers))]

    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int):
        self.num_classes = num_classes
        self.classifier.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """Per-stage maps taken before downsampling, [B, C_i, ceil(H/s), ceil(W/s)] at strides s = 4, 8, 16, 32
        (each stride-2 conv rounds up; NHWC with output_fmt='NHWC'); see models/README.md."""
        check_images(x, self.in_chans, type(self).__name__)
        take = feature_take_indices(len(self.layers), indices)
        last = max(take) if stop_early else len(self.layers) - 1
        x = self.patch_embed(x)
        intermediates = []
        for i, stage in enumerate(self.layers[:last + 1]):
            out, x = stage(x)
            if i in take:
                out = self.classifier.norm(out) if norm and i == len(self.layers) - 1 else out
                intermediates.append(to_format(out, 'NCHW', output_fmt))
        if intermediates_only:
            return intermediates
        return out, intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take = feature_take_indices(len(self.layers), indices)
        if prune_norm:
            self.classifier.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> the last-stage map [B, C, H/32, W/32] (before the classifier's norm)."""
        check_images(x, self.in_chans, type(self).__name__)
        x = self.patch_embed(x)
        for stage in self.layers:
            out, x = stage(x)
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier.flatten(self.classifier.avgpool(self.classifier.norm(x)))
        return x if pre_logits else self.classifier.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an upstream VMamba v2 state dict (classification ``VSSM`` or detection/segmentation ``Backbone_VSSM``)
    onto ``model``'s keys.

    Strips ``module.`` and ``backbone.`` prefixes; skips ``classifier.*`` when ``model`` has no classifier; reshapes
    Linear2d weights saved as 1x1 conv kernels [out, in, 1, 1] to upstream's usual [out, in].
    """
    own = model.state_dict()
    linear2d = {f'{name}.weight' for name, module in model.named_modules() if isinstance(module, Linear2d)}
    kept, classifier, reshaped = {}, [], 0
    for key, value in state_dict.items():
        key = strip_wrapper_prefixes(key)
        if key.startswith('classifier.') and key not in own:
            classifier.append(key)
            continue
        if key in linear2d and value.dim() == 4 and value.shape[2:] == (1, 1):
            value = value[:, :, 0, 0]
            reshaped += 1
        kept[key] = value
    if reshaped:
        log_report(f'checkpoint: reshaped {reshaped} 1x1-conv weights to Linear2d [out, in]')
    if classifier:
        log_report(f'checkpoint: skipped the classifier keys {classifier} (not part of this model)')
    return kept


# The released v2 ImageNet-1K checkpoints (MzeroMiko/VMamba README, GitHub release assets; weights under 'model').
_RELEASE = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/'
default_cfgs = {
    'vmamba_t': pretrained_cfg('vssm1_tiny_0230s_ckpt_epoch_264.pth', _RELEASE + 'vssm1_tiny_0230s_ckpt_epoch_264.pth'),
    'vmamba_s': pretrained_cfg('vssm_small_0229_ckpt_epoch_222.pth', _RELEASE + 'vssm_small_0229_ckpt_epoch_222.pth'),
    'vmamba_b': pretrained_cfg('vssm_base_0229_ckpt_epoch_237.pth', _RELEASE + 'vssm_base_0229_ckpt_epoch_237.pth'),
}


def _create_vmamba(arch: str, **kwargs) -> VMamba:
    return VMamba(**{**VMAMBA_ARCHS[arch], **kwargs})


@register_model
def vmamba_t(**kwargs) -> VMamba:
    """VMamba-T [s1l8]: 30.25M params (1000 classes), upstream ``vmamba_tiny_s1l8``."""
    return _create_vmamba('tiny', **kwargs)


@register_model
def vmamba_s(**kwargs) -> VMamba:
    """VMamba-S [s2l15]: 50.15M params, upstream ``vmamba_small_s2l15``."""
    return _create_vmamba('small', **kwargs)


@register_model
def vmamba_b(**kwargs) -> VMamba:
    """VMamba-B [s2l15]: 88.56M params, upstream ``vmamba_base_s2l15``."""
    return _create_vmamba('base', **kwargs)


@register_model
def vmamba_test(**kwargs) -> VMamba:
    """A tiny VMamba (embed 16, depths 1-1-2-1, ssm_ratio 2) for fast CPU tests; not a released model."""
    return _create_vmamba('test', **kwargs)


register_family('VMamba', VMamba, archs=dict(tiny='vmamba_t', small='vmamba_s', base='vmamba_b', test='vmamba_test'),
                checkpoint_filter=checkpoint_filter_fn, out_norm='outnorm', mm_defaults=dict(drop_path_rate=0.2))
