"""MLLA: Mamba-Like Linear Attention (Han et al., "Demystify Mamba in Vision: A Linear Attention Perspective",
NeurIPS 2024), re-implemented channels-last with the module names of the upstream code, so that its ImageNet
checkpoints load by key.

Activations stay [B, H, W, C] from the stem to the last stage; any input size works (the stem pads to a multiple of 4
and each downsampling rounds up), and RoPE is computed for the runtime H x W inside the attention op.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mlla_mm.layers import (ConvNormAct, DepthwiseConv2d, DropPath, LinearAttention, Mlp,
                            init_linear_and_layernorm)
from mlla_mm.utils import check_images, log_report, strip_wrapper_prefixes

from .registry import feature_take_indices, pretrained_cfg, register_family, register_model, to_format

# Settings of the released models (reference/mlla.md §1.1); 'test' is a tiny variant for fast CPU tests.
MLLA_ARCHS = {
    'tiny': dict(embed_dim=64, depths=(2, 4, 8, 4), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
    'small': dict(embed_dim=64, depths=(3, 6, 21, 6), num_heads=(2, 4, 8, 16), drop_path_rate=0.3),
    'base': dict(embed_dim=96, depths=(3, 6, 21, 6), num_heads=(3, 6, 12, 24), drop_path_rate=0.5),
    'test': dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.1),
}


class Stem(nn.Module):
    """Conv stem, stride 4: [B, 3, H, W] -> [B, ceil(H/4), ceil(W/4), C] (input zero-padded to a multiple of 4)."""

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        half = embed_dim // 2
        self.conv1 = ConvNormAct(in_chans, half, 3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Sequential(
            ConvNormAct(half, half, 3, padding=1, bias=False),
            ConvNormAct(half, half, 3, padding=1, bias=False, act=False),
        )
        self.conv3 = nn.Sequential(
            ConvNormAct(half, embed_dim * 4, 3, stride=2, padding=1, bias=False),
            ConvNormAct(embed_dim * 4, embed_dim, 1, bias=False, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % 4, 0, -height % 4))
        x = self.conv1(x)
        x = self.conv2(x) + x
        return self.conv3(x).permute(0, 2, 3, 1)


class PatchMerging(nn.Module):
    """Inverted-residual downsampling C -> 2C, stride 2: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C].

    Odd sizes are zero-padded at the bottom/right before the first 1x1 conv, as upstream.
    """

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(2 * dim * ratio)
        self.conv = nn.Sequential(
            ConvNormAct(dim, hidden, 1, norm=False),
            ConvNormAct(hidden, hidden, 3, stride=2, padding=1, groups=hidden, norm=False),
            ConvNormAct(hidden, 2 * dim, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MLLABlock(nn.Module):
    """CPE -> [LN -> (SiLU(dwc(in_proj)) -> linear attention) * SiLU(act_proj) -> out_proj] -> CPE -> [LN -> MLP].

    x: [B, H, W, C] -> [B, H, W, C].
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 drop_path: float = 0.0, backend=None):
        super().__init__()
        self.cpe1 = DepthwiseConv2d(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, dim)
        self.act_proj = nn.Linear(dim, dim)
        self.dwc = DepthwiseConv2d(dim)
        self.attn = LinearAttention(dim, num_heads, qkv_bias=qkv_bias, backend=backend)
        self.out_proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.cpe2 = DepthwiseConv2d(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe1(x)
        shortcut = x
        x = self.norm1(x)
        gate = F.silu(self.act_proj(x))
        x = self.attn(F.silu(self.dwc(self.in_proj(x))))
        x = shortcut + self.drop_path(self.out_proj(x * gate))
        x = x + self.cpe2(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MLLAStage(nn.Module):
    """``depth`` blocks, then an optional PatchMerging. Returns (stage output, downsampled input of the next)."""

    def __init__(self, dim, depth, num_heads, mlp_ratio, qkv_bias, drop, drop_path, downsample, backend):
        super().__init__()
        self.with_cp = False
        self.blocks = nn.ModuleList([
            MLLABlock(dim, num_heads, mlp_ratio, qkv_bias, drop, drop_path[i], backend) for i in range(depth)
        ])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor):
        for block in self.blocks:
            if self.with_cp and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class MLLA(nn.Module):
    """MLLA with an ImageNet head.

    Args:
        embed_dim: channels of stage 1; stage i has embed_dim * 2**i.
        depths, num_heads: per stage.
        num_classes: classifier size; 0 keeps the final norm and pooling with an Identity head.
        with_cp: gradient checkpointing per block.
        backend: linear-attention backend ('auto' | 'triton' | 'torch'; None reads MLLA_MM_BACKEND).
    """

    def __init__(self, embed_dim=64, depths=(2, 4, 8, 4), num_heads=(2, 4, 8, 16), mlp_ratio=4.0, qkv_bias=True,
                 drop_rate=0.0, drop_path_rate=0.2, in_chans=3, num_classes=1000, with_cp=False, backend=None):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f'MLLA: depths {depths} and num_heads {num_heads} differ in length')
        self.in_chans = in_chans
        self.num_classes = num_classes
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.num_features = dims[-1]
        self.patch_embed = Stem(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            first = sum(depths[:i])
            self.layers.append(MLLAStage(
                dim, depth, num_heads[i], mlp_ratio, qkv_bias, drop_rate, rates[first:first + depth],
                downsample=i < len(depths) - 1, backend=backend))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f'layers.{i}'))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.set_grad_checkpointing(with_cp)
        self.apply(init_linear_and_layernorm)


    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.layers:
            stage.with_cp = enable

    def no_weight_decay(self):
        return set()

    def stage_prefixes(self):
        return [('patch_embed.',)] + [(f'layers.{i}.',) for i in range(len(self.layers))]

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int):
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """Per-stage maps taken before downsampling, [B, C_i, ceil(H/s), ceil(W/s)] at strides s = 4, 8, 16, 32
        (NHWC with output_fmt='NHWC'); see models/README.md."""
        check_images(x, self.in_chans, type(self).__name__)
        take = feature_take_indices(len(self.layers), indices)
        last = max(take) if stop_early else len(self.layers) - 1
        x = self.pos_drop(self.patch_embed(x))
        intermediates = []
        for i, stage in enumerate(self.layers[:last + 1]):
            out, x = stage(x)
            if i in take:
                out = self.norm(out) if norm and i == len(self.layers) - 1 else out
                intermediates.append(to_format(out, 'NHWC', output_fmt))
        if intermediates_only:
            return intermediates
        return self.norm(out), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take = feature_take_indices(len(self.layers), indices)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> the normalised last-stage map [B, H/32, W/32, C] (channels-last)."""
        check_images(x, self.in_chans, type(self).__name__)
        x = self.pos_drop(self.patch_embed(x))
        for stage in self.layers:
            out, x = stage(x)
        return self.norm(out)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an upstream MLLA state dict (classification or mmdet/mmseg backbone) onto ``model``'s keys.

    Drops the RoPE tables (``*.attn.rope.rotations``: recomputed per input size) and, when ``model`` has no
    classifier, ``head.*`` and the classifier ``norm.*``. Strips ``module.`` and ``backbone.`` prefixes.
    """
    own = model.state_dict()
    kept, rope, classifier = {}, 0, []
    for key, value in state_dict.items():
        key = strip_wrapper_prefixes(key)
        if key.endswith('attn.rope.rotations'):
            rope += 1
        elif (key.startswith('head.') or key.startswith('norm.')) and key not in own:
            classifier.append(key)
        else:
            kept[key] = value
    if rope:
        log_report(f'checkpoint: dropped {rope} RoPE tables (attn.rope.rotations); they are computed per input size')
    if classifier:
        log_report(f'checkpoint: skipped the classifier keys {classifier} (not part of this model)')
    return kept


# The released ImageNet-1K checkpoints (LeapLabTHU/MLLA README: Tsinghua Cloud links; weights under 'model', EMA
# under 'state_dict_ema').
_RELEASE = 'https://github.com/LeapLabTHU/MLLA#results-and-models'
default_cfgs = {
    'mlla_t': pretrained_cfg('MLLA_T.pth', _RELEASE),
    'mlla_s': pretrained_cfg('MLLA_S.pth', _RELEASE),
    'mlla_b': pretrained_cfg('MLLA_B.pth', _RELEASE),
}


def _create_mlla(arch: str, **kwargs) -> MLLA:
    return MLLA(**{**MLLA_ARCHS[arch], **kwargs})


@register_model
def mlla_t(**kwargs) -> MLLA:
    """MLLA-T: 24.4M params (1000 classes), 4.2 GFLOPs at 224."""
    return _create_mlla('tiny', **kwargs)


@register_model
def mlla_s(**kwargs) -> MLLA:
    """MLLA-S: 43.0M params, 7.3 GFLOPs at 224."""
    return _create_mlla('small', **kwargs)


@register_model
def mlla_b(**kwargs) -> MLLA:
    """MLLA-B: 96.0M params, 16.2 GFLOPs at 224."""
    return _create_mlla('base', **kwargs)


@register_model
def mlla_test(**kwargs) -> MLLA:
    """A tiny MLLA (embed 32, one block per stage) for fast CPU tests; not a released model."""
    return _create_mlla('test', **kwargs)


register_family('MLLA', MLLA, archs=dict(tiny='mlla_t', small='mlla_s', base='mlla_b', test='mlla_test'),
                checkpoint_filter=checkpoint_filter_fn, out_norm='norm', mm_defaults=dict(drop_path_rate=0.1))
