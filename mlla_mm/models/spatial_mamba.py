"""Spatial-Mamba ("Effective Visual State Space Models via Structure-Aware State Fusion", Xiao et al., ICLR 2025),
re-implemented channels-last with the module names of the upstream code (``classification/models/spatialmamba.py``),
so that its ImageNet checkpoints load by key.

A VMamba-style block with a one-direction (raster-order) selective scan whose states are fused over the 2-D map by
three dilated depthwise convolutions before the observation (the SASF, ``mlla_mm.kernels.state_fusion``). The stem
and the downsampling are MLLA's, without any pre-padding: each stride-2 conv rounds up, so any input size works, and
the fusion clamps its taps, so maps smaller than its 11 x 11 reach work too. Facts: reference/spatial_mamba.md.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mlla_mm.kernels.selective_scan import selective_scan
from mlla_mm.kernels.state_fusion import state_fusion
from mlla_mm.layers import DepthwiseConv2d, DropPath, Mlp, init_linear_and_layernorm
from mlla_mm.utils import check_images, log_report, strip_wrapper_prefixes

from . import mlla
from .registry import feature_take_indices, pretrained_cfg, register_family, register_model, to_format

# Settings of the released models (reference/spatial_mamba.md §1.8); 'test' is a tiny variant for fast CPU tests.
SPATIAL_MAMBA_ARCHS = {
    'tiny': dict(embed_dim=64, depths=(2, 4, 8, 4), drop_path_rate=0.2),
    'small': dict(embed_dim=64, depths=(2, 4, 21, 5), drop_path_rate=0.3),
    'base': dict(embed_dim=96, depths=(2, 4, 21, 5), drop_path_rate=0.5),
    'test': dict(embed_dim=16, depths=(1, 1, 2, 1), drop_path_rate=0.1),
}


class Stem(mlla.Stem):
    """MLLA's conv stem (same keys), stride 4, without padding: [B, 3, H, W] -> [B, ceil(H/4), ceil(W/4), C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.conv2(x) + x
        return self.conv3(x).permute(0, 2, 3, 1)


class DownSampling(mlla.PatchMerging):
    """MLLA's inverted-residual downsampling (same keys) without padding: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2),
    2C] (the 3x3 stride-2 conv rounds up)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class StateFusion(nn.Module):
    """The SASF parameters (keys ``kernel_3``, ``kernel_3_1``, ``kernel_3_2``, ``alpha``: dilations 1, 3, 5).

    The fusion itself runs inside ``state_fusion`` together with the observation, identically in training and
    evaluation."""

    def __init__(self, dim: int):
        super().__init__()
        self.kernel_3 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.kernel_3_1 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.kernel_3_2 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.alpha = nn.Parameter(torch.ones(3))


class StructureAwareSSM(nn.Module):
    """in_proj -> (x: dwconv3x3 + SiLU -> 1-direction scan -> SASF -> y = h' C + D u -> LN) * SiLU(z) -> out_proj.

    x: [B, H, W, C] -> [B, H, W, C]. d_state is 1 (the released models; the scan then gives the states themselves,
    see ``forward``); the inner width is ``expand * C`` and the dt rank ceil(C / 16).
    """

    def __init__(self, dim: int, expand: int = 2, d_state: int = 1, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, backend=None):
        super().__init__()
        if d_state != 1:
            raise ValueError(f'StructureAwareSSM: d_state must be 1 (the fusion acts on one state per channel), '
                             f'got {d_state}')
        inner = expand * dim
        self.dt_rank = math.ceil(dim / 16)
        self.backend = backend
        # Own parameters first, in upstream's order; nn.Linear's default init for x_proj, as upstream.
        self.x_proj_weight = nn.Parameter(torch.empty(self.dt_rank + 2 * d_state, inner))
        nn.init.kaiming_uniform_(self.x_proj_weight, a=math.sqrt(5))
        self.dt_projs_weight = nn.Parameter(torch.empty(inner, self.dt_rank).uniform_(-self.dt_rank ** -0.5,
                                                                                     self.dt_rank ** -0.5))
        # dt = softplus(bias) log-uniform in [dt_min, dt_max]: bias = inverse softplus of dt.
        dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.Ds = nn.Parameter(torch.ones(inner))
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv2d = nn.Conv2d(inner, inner, 3, padding=1, groups=inner, bias=True)
        self.state_fusion = StateFusion(inner)
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        inner, length = self.Ds.shape[0], height * width
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv2d(xs.permute(0, 3, 1, 2).contiguous()))                    # [B, Di, H, W]
        tokens = u.reshape(batch, inner, length)                                          # raster order
        dt, B, C = torch.split(torch.matmul(self.x_proj_weight, tokens), [self.dt_rank, 1, 1], dim=1)
        delta = torch.matmul(self.dt_projs_weight, dt)                                   # [B, Di, L]
        # With d_state 1, C = 1 and no D, the scan's output y_t = C h_t + 0 is the state h_t itself, exactly (a
        # product by 1.0), and its backward receives dL/dh_t for every token: the states upstream's "return
        # hidden" CUDA scan gives, from the one scan op, in float32 as upstream.
        B = B.unsqueeze(1)                                                                # [B, 1, 1, L]
        states = selective_scan(tokens, delta, -torch.exp(self.A_logs.float()), B, torch.ones_like(B), None,
                                self.dt_projs_bias, delta_softplus=True, output_fp32=True, backend=self.backend)
        fusion = self.state_fusion
        y = state_fusion(states.view(batch, inner, height, width), fusion.kernel_3, fusion.kernel_3_1,
                         fusion.kernel_3_2, fusion.alpha, C.view(batch, 1, height, width), self.Ds, u,
                         backend=self.backend)
        # y is float32 like the states; back to the block's dtype (a no-op in float32 and under autocast, where the
        # block runs in float32 too), so a half-precision model keeps one dtype through out_norm.
        y = self.out_norm(y.permute(0, 2, 3, 1).to(x.dtype))
        return self.out_proj(y * F.silu(z))


class SpatialMambaBlock(nn.Module):
    """x + CPE(x) -> x + DropPath(SSM(LN(x))) -> x + CPE(x) -> x + DropPath(MLP(LN(x))). [B, H, W, C] -> same."""

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0, drop: float = 0.0, backend=None):
        super().__init__()
        self.cpe1 = DepthwiseConv2d(dim)
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = StructureAwareSSM(dim, backend=backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.cpe2 = DepthwiseConv2d(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe1(x)
        x = x + self.drop_path(self.self_attention(self.ln_1(x)))
        x = x + self.cpe2(x)
        return x + self.drop_path(self.mlp(self.ln_2(x)))


class SpatialMambaStage(nn.Module):
    """``depth`` blocks, then an optional DownSampling. Returns (stage output, downsampled input of the next)."""

    def __init__(self, dim, depth, mlp_ratio, drop, drop_path, downsample, backend):
        super().__init__()
        self.with_cp = False
        self.blocks = nn.ModuleList([
            SpatialMambaBlock(dim, drop_path[i], mlp_ratio, drop, backend) for i in range(depth)])
        self.downsample = DownSampling(dim) if downsample else None

    def forward(self, x: torch.Tensor):
        for block in self.blocks:
            if self.with_cp and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class SpatialMamba(nn.Module):
    """Spatial-Mamba with an ImageNet head (``norm`` -> mean over tokens -> ``head``, as upstream).

    Args:
        embed_dim: channels of stage 1; stage i has embed_dim * 2**i.
        depths: blocks per stage.
        mlp_ratio: MLP hidden / C.
        num_classes: classifier size; 0 keeps the final norm and pooling with an Identity head.
        with_cp: gradient checkpointing per block.
        backend: scan and state-fusion backend ('auto' | 'triton' | 'torch'; None reads MLLA_MM_BACKEND).
    """

    def __init__(self, embed_dim=64, depths=(2, 4, 8, 4), mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.2,
                 in_chans=3, num_classes=1000, with_cp=False, backend=None):
        super().__init__()
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
            self.layers.append(SpatialMambaStage(
                dim, depth, mlp_ratio, drop_rate, rates[first:first + depth], downsample=i < len(depths) - 1,
                backend=backend))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f'layers.{i}'))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.set_grad_checkpointing(with_cp)
        # As upstream; convs, BN and the SSM's own parameters keep the values they were built with.
        self.apply(init_linear_and_layernorm)


    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.layers:
            stage.with_cp = enable

    def no_weight_decay(self):
        # Upstream's optimizer exempts only 1-D parameters (and its downstream recipes only norms); A_logs is decayed.
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
        (each stride-2 conv rounds up; NHWC with output_fmt='NHWC'); see models/README.md."""
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
    """Map an upstream Spatial-Mamba state dict (classification ``SpatialMamba`` or the mmdet/mmseg
    ``MM_SpatialMamba`` backbone) onto ``model``'s keys: the layouts are the same, so this strips ``module.`` and
    ``backbone.`` prefixes and, when ``model`` has no classifier, drops ``head.*`` and the classifier ``norm.*``.
    Upstream's eval cache ``_merge_weight`` is an attribute, never in a state dict."""
    own = model.state_dict()
    kept, classifier = {}, []
    for key, value in state_dict.items():
        key = strip_wrapper_prefixes(key)
        if (key.startswith('head.') or key.startswith('norm.')) and key not in own:
            classifier.append(key)
        else:
            kept[key] = value
    if classifier:
        log_report(f'checkpoint: skipped the classifier keys {classifier} (not part of this model)')
    return kept


# The released ImageNet-1K checkpoints (EdwardChasel/Spatial-Mamba README: Google Drive links). Upstream's trainer
# saves the weights under 'model' (and the EMA under 'model_ema'); which one the released files hold is unverified.
_DRIVE = 'https://drive.google.com/file/d/{}/view'
default_cfgs = {
    'spatialmamba_t': pretrained_cfg('spatialmamba_tiny.pth', _DRIVE.format('19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW')),
    'spatialmamba_s': pretrained_cfg('spatialmamba_small.pth', _DRIVE.format('1Wb3sYoWLpgmWrmHMYKwdgDwGPZaqM28O')),
    'spatialmamba_b': pretrained_cfg('spatialmamba_base.pth', _DRIVE.format('1k8dHp2QRCOqBSgAi36YkhZp_O8LqOPjM')),
}


def _create_spatial_mamba(arch: str, **kwargs) -> SpatialMamba:
    return SpatialMamba(**{**SPATIAL_MAMBA_ARCHS[arch], **kwargs})


@register_model
def spatialmamba_t(**kwargs) -> SpatialMamba:
    """Spatial-Mamba-T: 26.75M params (1000 classes), 4.5 GFLOPs at 224 (upstream)."""
    return _create_spatial_mamba('tiny', **kwargs)


@register_model
def spatialmamba_s(**kwargs) -> SpatialMamba:
    """Spatial-Mamba-S: 43.07M params, 7.1 GFLOPs at 224 (upstream)."""
    return _create_spatial_mamba('small', **kwargs)


@register_model
def spatialmamba_b(**kwargs) -> SpatialMamba:
    """Spatial-Mamba-B: 95.75M params, 15.8 GFLOPs at 224 (upstream)."""
    return _create_spatial_mamba('base', **kwargs)


@register_model
def spatialmamba_test(**kwargs) -> SpatialMamba:
    """A tiny Spatial-Mamba (embed 16, depths 1-1-2-1) for fast CPU tests; not a released model."""
    return _create_spatial_mamba('test', **kwargs)


# Upstream's detection and segmentation backbones keep the ImageNet drop-path rate of each size (the arch default),
# and add a LayerNorm over the channels per output (outnorm0..3).
register_family('SpatialMamba', SpatialMamba,
                archs=dict(tiny='spatialmamba_t', small='spatialmamba_s', base='spatialmamba_b',
                           test='spatialmamba_test'),
                checkpoint_filter=checkpoint_filter_fn, out_norm='outnorm')
