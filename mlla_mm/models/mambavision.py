"""MambaVision ("MambaVision: A Hybrid Mamba-Transformer Vision Backbone", Hatamizadeh & Kautz, CVPR 2025),
re-implemented with the module names of the upstream code (NVlabs/MambaVision ``mambavision/models/mamba_vision.py``),
so that its ImageNet checkpoints load by key (reference/mambavision_vssd.md §1).

Two conv stages (NCHW), then two stages of MambaVision mixer blocks followed by windowed self-attention blocks. The
mixer's selective scan runs through ``mlla_mm.kernels.selective_scan`` (d_state 8, one B/C group).

Windows. Stages 3 and 4 cut their map into ``window_size`` x ``window_size`` windows; the tokens of a window are one
sequence in raster order (the scan and the conv1d run along it, attention is over it). Upstream pads the map with
zeros to a multiple of the window and lets the padding tokens take part in everything (LayerNorm, conv1d, scan,
attention), so its outputs depend on the window size whenever the map is not a multiple of it. Here, by default
(``masked_windows=True``), a window holds only its real tokens: they come first, in raster order, and the padding
slots after them are kept out of attention (key mask), out of the conv1d (zero input, as at a sequence end) and out
of the scan (they follow every real token of the causal scan). A window larger than the map is then exactly a global
window over the map, and the window is only as long as the largest real window, min(ws, H) * min(ws, W) tokens.
``masked_windows=False`` reproduces upstream's unmasked zero padding. Both agree whenever H and W are multiples of
the window (always, at 224x224 with the classification windows).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mlla_mm.kernels.selective_scan import selective_scan
from mlla_mm.layers import DropPath, Mlp
from mlla_mm.utils import check_images, log_report, strip_wrapper_prefixes

from .registry import feature_take_indices, pretrained_cfg, register_family, register_model, to_format

# Settings of the released models (reference/mambavision_vssd.md §1.4); windows of stages 1-2 are unused (conv
# stages). 'test' is a tiny variant for fast CPU tests whose small windows make padding and several windows common.
MAMBAVISION_ARCHS = {
    'tiny': dict(dim=80, in_dim=32, depths=(1, 3, 8, 4), num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
                 layer_scale=None, drop_path_rate=0.2),
    'tiny2': dict(dim=80, in_dim=32, depths=(1, 3, 11, 4), num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
                  layer_scale=None, drop_path_rate=0.2),
    'small': dict(dim=96, in_dim=64, depths=(3, 3, 7, 5), num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
                  layer_scale=None, drop_path_rate=0.2),
    'base': dict(dim=128, in_dim=64, depths=(3, 3, 10, 5), num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
                 layer_scale=1e-5, drop_path_rate=0.3),
    'test': dict(dim=16, in_dim=8, depths=(1, 1, 3, 2), num_heads=(1, 1, 2, 4), window_size=(8, 8, 3, 2),
                 layer_scale=None, drop_path_rate=0.1),
}
D_STATE = 8  # the mixer's SSM state size in every released model
D_CONV = 3   # its (non-causal) conv1d kernel


def window_indices(height: int, width: int, window: int, masked: bool, device=None):
    """Token routing between an H x W map and its windows.

    Returns ``(gather, scatter, pad, length)``: ``gather`` [num_windows * length] picks, for every window slot, a
    flat map position (H * W means the zero padding token); ``scatter`` [H * W] gives every map position its flat
    slot; ``pad`` [num_windows, length] marks padding slots (None when there are none, or when ``masked`` is off and
    padding takes part like any token); ``length`` is the tokens per window.

    Unmasked (upstream): the map is zero-padded to a multiple of ``window`` and each window is read in raster order,
    ``length = window**2``. Masked: each window's real tokens first, in raster order within the window, padding
    after them, ``length = min(window, H) * min(window, W)``.
    """
    windows_x = -(-width // window)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    window_of = (rows // window)[:, None] * windows_x + (cols // window)[None, :]
    if masked:
        length = min(window, height) * min(window, width)
        cols_in_window = torch.clamp(width - (cols // window) * window, max=window)  # real columns of its window
        slot = (rows % window)[:, None] * cols_in_window[None, :] + (cols % window)[None, :]
    else:
        length = window * window
        slot = (rows % window)[:, None] * window + (cols % window)[None, :]
    scatter = (window_of * length + slot).flatten()
    num_slots = -(-height // window) * windows_x * length
    gather = torch.full((num_slots,), height * width, dtype=torch.long, device=device)
    gather[scatter] = torch.arange(height * width, device=device)
    pad = gather.view(-1, length) == height * width
    if not masked or (num_slots == height * width):
        pad = None
    return gather, scatter, pad, length


class PatchEmbed(nn.Module):
    """Stem, stride 4: conv3x3 s2 -> BN -> ReLU -> conv3x3 s2 -> BN -> ReLU (keys ``conv_down.{0,1,3,4}``).

    [B, 3, H, W] -> [B, dim, ceil(H/4), ceil(W/4)]."""

    def __init__(self, in_chans: int, in_dim: int, dim: int):
        super().__init__()
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(dim, eps=1e-4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(x)


class Downsample(nn.Module):
    """conv3x3 s2, C -> 2C, no bias and no norm (key ``reduction.0``): [B, C, H, W] -> [B, 2C, ceil(H/2), ceil(W/2)]."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(x)


class ConvBlock(nn.Module):
    """x + DropPath(BN(conv3x3(GELU_tanh(BN(conv3x3(x)))))) on [B, C, H, W] (no layer scale in any release)."""

    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(dim)
        self.act1 = nn.GELU(approximate='tanh')
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x))))))


class MambaVisionMixer(nn.Module):
    """The MambaVision mixer on window tokens [b, L, C] -> [b, L, C] (expand 1, Ci = C/2).

    in_proj (no bias) splits into x and z (Ci each); both go through a depthwise conv1d (k=3, 'same', so
    non-causal; no bias) and SiLU; x is scanned (selective scan, Δ = softplus(dt_proj(dt) + dt_proj.bias): the dt
    bias is added by the Linear and again by the scan, as upstream); out_proj (no bias) acts on concat(y, z): z is a
    symmetric non-SSM branch, concatenated, not a gate.

    ``pad`` [b, L] (bool) marks padding slots at the tail of each window: their conv1d input is zero, so the last real
    token sees a sequence end; the causal scan never carries them into a real token.
    """

    def __init__(self, dim: int, d_state: int = D_STATE, d_conv: int = D_CONV, backend=None):
        super().__init__()
        inner = dim // 2
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.backend = backend
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.conv1d_x = nn.Conv1d(inner, inner, d_conv, padding=d_conv // 2, groups=inner, bias=False)
        self.conv1d_z = nn.Conv1d(inner, inner, d_conv, padding=d_conv // 2, groups=inner, bias=False)

    def forward(self, h: torch.Tensor, pad=None) -> torch.Tensor:
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)  # [b, Ci, L] each
        if pad is not None:
            x = x.masked_fill(pad[:, None], 0.0)
            z = z.masked_fill(pad[:, None], 0.0)
        x = F.silu(self.conv1d_x(x))
        z = F.silu(self.conv1d_z(z))
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj(dt).transpose(1, 2)
        y = selective_scan(x, delta, -torch.exp(self.A_log.float()), B.transpose(1, 2)[:, None],
                           C.transpose(1, 2)[:, None], self.D, delta_bias=self.dt_proj.bias, delta_softplus=True,
                           backend=self.backend)
        return self.out_proj(torch.cat([y, z], dim=1).transpose(1, 2))


class Attention(nn.Module):
    """Multi-head self-attention over window tokens [b, L, C] (SDPA, scale hd^-0.5, no position bias); padding
    slots ``pad`` [b, L] are masked out as keys."""

    def __init__(self, dim: int, num_heads: int, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'Attention: dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, pad=None) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        keep = None if pad is None else ~pad[:, None, None, :]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, length, dim)))


class Block(nn.Module):
    """x + DropPath(γ1 · mixer(LN(x))), then x + DropPath(γ2 · MLP(LN(x))) on [b, L, C]; the mixer is a
    MambaVisionMixer or an Attention. γ are the parameters ``gamma_1``/``gamma_2`` with ``layer_scale``, else 1."""

    def __init__(self, dim, num_heads, attention, mlp_ratio=4.0, drop=0.0, drop_path=0.0, layer_scale=None,
                 backend=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = Attention(dim, num_heads, drop) if attention else MambaVisionMixer(dim, backend=backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, pad=None) -> torch.Tensor:
        y = self.mixer(self.norm1(x), pad)
        x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)


class MambaVisionLayer(nn.Module):
    """A stage (key ``levels.i``): ConvBlocks, or mixer blocks then attention blocks over windows; then an optional
    Downsample. [B, C, H, W] -> (stage output [B, C, H, W], input of the next stage)."""

    def __init__(self, dim, depth, num_heads, window_size, conv, downsample, mlp_ratio, drop, drop_path, layer_scale,
                 masked_windows, backend):
        super().__init__()
        self.conv = conv
        self.window_size = window_size
        self.masked_windows = masked_windows
        self.with_cp = False
        if conv:
            self.blocks = nn.ModuleList([ConvBlock(dim, drop_path[i]) for i in range(depth)])
        else:
            # The first ceil(depth/2) blocks mix with the SSM, the rest attend (upstream's transformer_blocks).
            mixers = (depth + 1) // 2
            self.blocks = nn.ModuleList([
                Block(dim, num_heads, i >= mixers, mlp_ratio, drop, drop_path[i], layer_scale, backend)
                for i in range(depth)])
        self.downsample = Downsample(dim) if downsample else None

    def _run_blocks(self, x, *pad):
        for block in self.blocks:
            if self.with_cp and torch.is_grad_enabled():
                x = checkpoint(block, x, *pad, use_reentrant=False)
            else:
                x = block(x, *pad)
        return x

    def forward(self, x: torch.Tensor):
        if self.conv:
            x = self._run_blocks(x)
        else:
            batch, channels, height, width = x.shape
            gather, scatter, pad, length = window_indices(height, width, self.window_size, self.masked_windows,
                                                          x.device)
            tokens = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
            tokens = torch.cat([tokens, tokens.new_zeros(batch, 1, channels)], dim=1)  # the padding token
            windows = tokens.index_select(1, gather).view(-1, length, channels)
            if pad is not None:
                pad = pad.repeat(batch, 1)
            windows = self._run_blocks(windows, pad)
            tokens = windows.view(batch, -1, channels).index_select(1, scatter)
            x = tokens.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return x, (self.downsample(x) if self.downsample is not None else x)


class MambaVision(nn.Module):
    """MambaVision with an ImageNet head (``norm``: BatchNorm2d, average pooling, ``head``).

    Args:
        dim: channels of stage 1; stage i has dim * 2**i. in_dim: the stem's middle channels.
        depths, num_heads, window_size: per stage (the windows of the conv stages 1-2 are unused).
        mlp_ratio: MLP hidden / C.
        layer_scale: initial value of the per-channel layer scales gamma_1/gamma_2 of stages 3-4 (None: no scale).
        masked_windows: True keeps window padding out of every token mixer (see the module docstring); False is
            upstream's unmasked zero padding.
        num_classes: classifier size; 0 keeps the final norm and pooling with an Identity head.
        with_cp: gradient checkpointing per block.
        backend: selective-scan backend ('auto' | 'triton' | 'torch'; None reads MLLA_MM_BACKEND).
    """

    def __init__(self, dim=80, in_dim=32, depths=(1, 3, 8, 4), num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
                 mlp_ratio=4.0, layer_scale=None, masked_windows=True, drop_rate=0.0, drop_path_rate=0.2,
                 in_chans=3, num_classes=1000, with_cp=False, backend=None):
        super().__init__()
        if not len(depths) == len(num_heads) == len(window_size) == 4:
            raise ValueError(f'MambaVision: depths {depths}, num_heads {num_heads} and window_size {window_size} '
                             f'must give 4 stages each')
        self.in_chans = in_chans
        self.num_classes = num_classes
        dims = [dim * 2 ** i for i in range(len(depths))]
        self.num_features = dims[-1]
        self.patch_embed = PatchEmbed(in_chans, in_dim, dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.levels = nn.ModuleList()
        self.feature_info = []
        for i, (stage_dim, depth) in enumerate(zip(dims, depths)):
            first = sum(depths[:i])
            self.levels.append(MambaVisionLayer(
                stage_dim, depth, num_heads[i], window_size[i], conv=i < 2, downsample=i < len(depths) - 1,
                mlp_ratio=mlp_ratio, drop=drop_rate, drop_path=rates[first:first + depth], layer_scale=layer_scale,
                masked_windows=masked_windows, backend=backend))
            self.feature_info.append(dict(num_chs=stage_dim, reduction=4 * 2 ** i, module=f'levels.{i}'))
        self.norm = nn.BatchNorm2d(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.set_grad_checkpointing(with_cp)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # As upstream: every Linear trunc_normal(0.02) with zero bias (this overrides the Mamba dt_proj init, as
        # upstream's does), LayerNorm and BatchNorm (1, 0); convs keep PyTorch's default; A_log = log(1..N), D = 1.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True):
        for level in self.levels:
            level.with_cp = enable

    def no_weight_decay(self):
        # Upstream marks the SSM's A_log and D `_no_weight_decay` (the Mamba convention).
        return {name for name, _ in self.named_parameters() if name.endswith(('mixer.A_log', 'mixer.D'))}

    def stage_prefixes(self):
        return [('patch_embed.',)] + [(f'levels.{i}.',) for i in range(len(self.levels))]

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int):
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """Per-stage maps taken before downsampling, [B, C_i, ceil(H/s), ceil(W/s)] at strides s = 4, 8, 16, 32
        (NHWC with output_fmt='NHWC'); ``norm`` applies the final BatchNorm to the last level; see
        models/README.md."""
        check_images(x, self.in_chans, type(self).__name__)
        take = feature_take_indices(len(self.levels), indices)
        last = max(take) if stop_early else len(self.levels) - 1
        x = self.patch_embed(x)
        intermediates = []
        for i, level in enumerate(self.levels[:last + 1]):
            out, x = level(x)
            if i in take:
                out = self.norm(out) if norm and i == len(self.levels) - 1 else out
                intermediates.append(to_format(out, 'NCHW', output_fmt).contiguous())
        if intermediates_only:
            return intermediates
        return self.norm(out), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take = feature_take_indices(len(self.levels), indices)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> the normalised last-stage map [B, C, H/32, W/32]."""
        check_images(x, self.in_chans, type(self).__name__)
        x = self.patch_embed(x)
        for level in self.levels:
            out, x = level(x)
        return self.norm(out)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an upstream MambaVision state dict (classification, or the ``MM_mamba_vision`` detection/segmentation
    backbone) onto ``model``'s keys, which are upstream's.

    Strips ``module.`` and ``backbone.`` prefixes. Skips, when ``model`` lacks them, the classifier (``head.*``, the
    BatchNorm ``norm.*``) and the downstream backbone's per-output norms (``outnorm{i}.*``).
    """
    own = model.state_dict()
    kept, skipped = {}, []
    for key, value in state_dict.items():
        key = strip_wrapper_prefixes(key)
        if key.startswith(('head.', 'norm.', 'outnorm')) and key not in own:
            skipped.append(key)
        else:
            kept[key] = value
    if skipped:
        log_report(f'checkpoint: skipped the classifier / output-norm keys {skipped} (not part of this model)')
    return kept


# The released ImageNet checkpoints (HF repos nvidia/MambaVision-*; training checkpoints of timm's CheckpointSaver:
# weights under 'state_dict', which upstream's loaders read).
_HF = 'https://huggingface.co/nvidia/'
default_cfgs = {
    'mambavision_t': pretrained_cfg('mambavision_tiny_1k.pth.tar',
                                    _HF + 'MambaVision-T-1K/resolve/main/mambavision_tiny_1k.pth.tar',
                                    crop_pct=1.0, interpolation='bicubic', state_dict_key='state_dict'),
    'mambavision_t2': pretrained_cfg('mambavision_tiny2_1k.pth.tar',
                                     _HF + 'MambaVision-T2-1K/resolve/main/mambavision_tiny2_1k.pth.tar',
                                     crop_pct=0.98, interpolation='bicubic', state_dict_key='state_dict'),
    'mambavision_s': pretrained_cfg('mambavision_small_1k.pth.tar',
                                    _HF + 'MambaVision-S-1K/resolve/main/mambavision_small_1k.pth.tar',
                                    crop_pct=0.93, interpolation='bicubic', state_dict_key='state_dict'),
    'mambavision_b': pretrained_cfg('mambavision_base_1k.pth.tar',
                                    _HF + 'MambaVision-B-1K/resolve/main/mambavision_base_1k.pth.tar',
                                    crop_pct=1.0, interpolation='bicubic', state_dict_key='state_dict'),
}


def _create_mambavision(arch: str, **kwargs) -> MambaVision:
    return MambaVision(**{**MAMBAVISION_ARCHS[arch], **kwargs})


@register_model
def mambavision_t(**kwargs) -> MambaVision:
    """MambaVision-T: 31.79M params (1000 classes), 4.4 GFLOPs at 224, upstream ``mamba_vision_T``."""
    return _create_mambavision('tiny', **kwargs)


@register_model
def mambavision_t2(**kwargs) -> MambaVision:
    """MambaVision-T2: 35.10M params, 5.1 GFLOPs at 224, upstream ``mamba_vision_T2``."""
    return _create_mambavision('tiny2', **kwargs)


@register_model
def mambavision_s(**kwargs) -> MambaVision:
    """MambaVision-S: 50.14M params, 7.5 GFLOPs at 224, upstream ``mamba_vision_S``."""
    return _create_mambavision('small', **kwargs)


@register_model
def mambavision_b(**kwargs) -> MambaVision:
    """MambaVision-B: 97.69M params, 15.0 GFLOPs at 224 (layer scale 1e-5), upstream ``mamba_vision_B``."""
    return _create_mambavision('base', **kwargs)


@register_model
def mambavision_test(**kwargs) -> MambaVision:
    """A tiny MambaVision (dim 16, depths 1-1-3-2, windows 3 and 2) for fast CPU tests; not a released model."""
    return _create_mambavision('test', **kwargs)


# Upstream's downstream backbone (MM_mamba_vision) adds a LayerNorm2d `outnorm{i}` (eps 1e-5) per output, the same
# function and keys as the adapter's default channels-last LayerNorm. Its configs' drop_path_rate never reaches the
# model (it always trains at the class default 0.2), so 0.2 is the downstream default here.
register_family('MambaVision', MambaVision,
                archs=dict(tiny='mambavision_t', tiny2='mambavision_t2', small='mambavision_s', base='mambavision_b',
                           test='mambavision_test'),
                checkpoint_filter=checkpoint_filter_fn, out_norm='outnorm', mm_defaults=dict(drop_path_rate=0.2),
                swap_rules=dict(adamw=dict(mmdet=dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                                           mmseg=dict(lr=5e-5, betas=(0.9, 0.999), weight_decay=0.01))))
