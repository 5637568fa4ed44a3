"""MambaOut ("MambaOut: Do We Really Need Mamba for Vision?", Yu & Wang, CVPR 2025), re-implemented natively with
the module names of the original code (yuweihao/MambaOut ``models/mambaout.py``), so that its released ImageNet
checkpoints load by key; the checkpoint filter also takes timm's re-keyed layout (reference/vim_mambaout.md Part B).

Gated CNN blocks, no SSM: LN -> fc1 (C -> 2h) split into a gate g (h), an identity part i (h - C) and a conv part c
(C) -> depthwise 7x7 conv on c -> fc2(GELU(g) * cat(i, conv(c))). Activations stay channels-last [B, H, W, C]; any
input size works (every stride-2 conv rounds up).

Dense prediction: the authors released no detection/segmentation code; in yuweihao/MambaOut#251 the author says the
backbone adds a LayerNorm to the output of each stage (Swin-style configs, lr 1e-4, no layer-wise decay). The mm
adapter adds them from ``register_family(out_norm=...)`` below.
"""
import re
from functools import partial

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mlla_mm.layers import DropPath
from mlla_mm.utils import check_images, log_report, strip_wrapper_prefixes

from .registry import feature_take_indices, pretrained_cfg, register_family, register_model, to_format

# Settings of the released models (reference/vim_mambaout.md B1; drop path of upstream's training scripts); 'test'
# is a tiny variant for fast CPU tests with widths that, like Base's, are not multiples of 16.
MAMBAOUT_ARCHS = {
    'tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 576), drop_path_rate=0.2),
    'small': dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576), drop_path_rate=0.4),
    'base': dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768), drop_path_rate=0.6),
    'test': dict(depths=(1, 1, 2, 1), dims=(16, 24, 40, 56), drop_path_rate=0.1),
}
LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # every norm of the family, channels-last


class StemLayer(nn.Module):
    """Stride 4: conv3x3 s2 -> LN -> GELU -> conv3x3 s2 -> LN. [B, 3, H, W] -> [B, ceil(H/4), ceil(W/4), C]."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.norm1 = LayerNorm(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return self.norm2(self.conv2(x).permute(0, 2, 3, 1))


class DownsampleLayer(nn.Module):
    """conv3x3 s2 then LN: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C']."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1)
        self.norm = LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class MlpHead(nn.Module):
    """fc1 (C -> 4C) -> GELU -> LN -> dropout -> fc2 (keys ``fc1``, ``norm``, ``fc2``)."""

    def __init__(self, dim: int, num_classes: int, mlp_ratio: int = 4, drop: float = 0.0):
        super().__init__()
        hidden = mlp_ratio * dim
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.norm = LayerNorm(hidden)
        self.head_dropout = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.head_dropout(self.norm(self.act(self.fc1(x)))))


class GatedCNNBlock(nn.Module):
    """x + DropPath(fc2(GELU(g) * cat(i, dwconv7x7(c)))), (g, i, c) = split(fc1(LN(x))). [B, H, W, C] in and out.

    Hidden width h = int(8/3 * C); the conv acts on the last C channels of fc1's output (conv_ratio 1)."""

    def __init__(self, dim: int, expansion_ratio: float = 8 / 3, kernel_size: int = 7, drop_path: float = 0.0):
        super().__init__()
        hidden = int(expansion_ratio * dim)
        self.split_sizes = (hidden, hidden - dim, dim)
        self.norm = LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.act = nn.GELU()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, i, c = self.fc1(self.norm(x)).split(self.split_sizes, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.fc2(self.act(g) * torch.cat((i, c), dim=-1)))


class MambaOut(nn.Module):
    """MambaOut with an ImageNet head (mean pool -> ``norm`` -> ``head``: MlpHead).

    Args:
        depths, dims: per stage.
        expansion_ratio, kernel_size: of the gated CNN blocks (8/3 and 7 in every release).
        num_classes: classifier size; 0 keeps the final norm and pooling with an Identity head.
        drop_rate: dropout in the MLP head. drop_path_rate: stochastic depth, linear over all blocks.
        with_cp: gradient checkpointing per block.
    """

    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 576), expansion_ratio=8 / 3, kernel_size=7,
                 drop_rate=0.0, drop_path_rate=0.2, in_chans=3, num_classes=1000, with_cp=False):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f'MambaOut: depths {depths} and dims {dims} differ in length')
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.num_features = dims[-1]
        self.with_cp = with_cp
        self.downsample_layers = nn.ModuleList(
            [StemLayer(in_chans, dims[0])] + [DownsampleLayer(dims[i - 1], dims[i]) for i in range(1, len(dims))])
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            first = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                GatedCNNBlock(dim, expansion_ratio, kernel_size, rates[first + j]) for j in range(depth)]))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f'stages.{i}'))
        self.norm = LayerNorm(self.num_features)
        self.head = MlpHead(self.num_features, num_classes, drop=drop_rate) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # As upstream: convs and Linears trunc_normal(0.02) with zero bias; LayerNorms keep (1, 0).
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True):
        self.with_cp = enable

    def no_weight_decay(self):
        # Upstream returns {'norm'}, which names no parameter; norms go without decay through the 'norm' custom key.
        return set()

    def stage_prefixes(self):
        return [('downsample_layers.0.',), ('stages.0.',)] + [
            (f'downsample_layers.{i}.', f'stages.{i}.') for i in range(1, len(self.stages))]

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int):
        self.num_classes = num_classes
        self.head = MlpHead(self.num_features, num_classes, drop=self.drop_rate) if num_classes > 0 else nn.Identity()

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample_layers[i](x)
        for block in self.stages[i]:
            if self.with_cp and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """Per-stage maps [B, C_i, ceil(H/s), ceil(W/s)] at strides s = 4, 8, 16, 32 (NHWC with
        output_fmt='NHWC'); see models/README.md. ``norm`` has no effect: the final norm acts on the pooled vector,
        not on a map (as timm's MambaOut)."""
        check_images(x, self.in_chans, type(self).__name__)
        take = feature_take_indices(len(self.stages), indices)
        last = max(take) if stop_early else len(self.stages) - 1
        intermediates = []
        for i in range(last + 1):
            x = self._stage(i, x)
            if i in take:
                intermediates.append(to_format(x, 'NHWC', output_fmt))
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take = feature_take_indices(len(self.stages), indices)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> the last-stage map [B, H/32, W/32, C] (channels-last; the norm follows pooling)."""
        check_images(x, self.in_chans, type(self).__name__)
        for i in range(len(self.stages)):
            x = self._stage(i, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean(dim=(1, 2)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# timm's re-keyed layout (timm.models.mambaout) -> the original's; applied in order, on keys of a timm state dict.
_TIMM_TO_ORIGINAL = (
    (r'^stem\.', 'downsample_layers.0.'),
    (r'^stages\.(\d+)\.downsample\.', r'downsample_layers.\1.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.'),
    (r'^head\.norm\.', 'norm.'),
    (r'^head\.pre_logits\.fc\.', 'head.fc1.'),
    (r'^head\.pre_logits\.norm\.', 'head.norm.'),
    (r'^head\.fc\.', 'head.fc2.'),
)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map a MambaOut state dict onto ``model``'s keys (the original yuweihao/MambaOut layout).

    Accepts the original layout (the released ``mambaout_*.pth``, a plain state dict) and timm's
    (``stem.*``, ``stages.i.blocks.j.*``, ``stages.i.downsample.*``, ``head.pre_logits.*``; recognised by
    ``stem.conv1.weight``), which it renames back. Strips ``module.`` and ``backbone.`` prefixes. Skips, when
    ``model`` lacks them, the classifier (``norm.*``, ``head.*``) and downstream output norms (``norm{i}.*``).
    timm-only options (layer scale ``ls.gamma``, norm-first downsampling of the ``_rw`` models) pass through and fail
    the load loudly.
    """
    own = model.state_dict()
    keys = {strip_wrapper_prefixes(key): value for key, value in state_dict.items()}
    timm_layout = 'stem.conv1.weight' in keys
    kept, skipped = {}, []
    for key, value in keys.items():
        if timm_layout:
            for pattern, replacement in _TIMM_TO_ORIGINAL:
                key, renamed = re.subn(pattern, replacement, key)
                if renamed:
                    break
        if re.match(r'(head|norm\d*)\.', key) and key not in own:
            skipped.append(key)
        else:
            kept[key] = value
    if timm_layout:
        log_report('checkpoint: renamed timm MambaOut keys to the original layout')
    if skipped:
        log_report(f'checkpoint: skipped the classifier / output-norm keys {skipped} (not part of this model)')
    return kept


# The released ImageNet-1K checkpoints: GitHub release assets of yuweihao/MambaOut, plain state dicts (timm's Hub
# copies `timm/mambaout_*.in1k` are in timm's layout, which the filter also reads).
_RELEASE = 'https://github.com/yuweihao/MambaOut/releases/download/model/'
default_cfgs = {
    name: pretrained_cfg(f'mambaout_{size}.pth', _RELEASE + f'mambaout_{size}.pth', crop_pct=1.0,
                         interpolation='bicubic', state_dict_key=None, timm_hub=f'timm/mambaout_{size}.in1k')
    for name, size in (('mambaout_t', 'tiny'), ('mambaout_s', 'small'), ('mambaout_b', 'base'))
}


def _create_mambaout(arch: str, **kwargs) -> MambaOut:
    return MambaOut(**{**MAMBAOUT_ARCHS[arch], **kwargs})


@register_model
def mambaout_t(**kwargs) -> MambaOut:
    """MambaOut-T: 26.55M params (1000 classes), 4.5 GMACs at 224, upstream ``mambaout_tiny``."""
    return _create_mambaout('tiny', **kwargs)


@register_model
def mambaout_s(**kwargs) -> MambaOut:
    """MambaOut-S: 48.49M params, 9.0 GMACs at 224, upstream ``mambaout_small``."""
    return _create_mambaout('small', **kwargs)


@register_model
def mambaout_b(**kwargs) -> MambaOut:
    """MambaOut-B: 84.81M params, 15.8 GMACs at 224, upstream ``mambaout_base``."""
    return _create_mambaout('base', **kwargs)


@register_model
def mambaout_test(**kwargs) -> MambaOut:
    """A tiny MambaOut (dims 16-24-40-56, depths 1-1-2-1) for fast CPU tests; not a released model."""
    return _create_mambaout('test', **kwargs)


# Per-output norms for dense prediction as the author describes them (#251): a LayerNorm per stage output, here
# with the family's eps 1e-6 and Swin's names norm0..norm3 (no upstream downstream checkpoint exists to name them).
# Drop path 0.3 (T) per #251.
register_family('MambaOut', MambaOut,
                archs=dict(tiny='mambaout_t', small='mambaout_s', base='mambaout_b', test='mambaout_test'),
                checkpoint_filter=checkpoint_filter_fn, out_norm='norm', out_norm_layer=LayerNorm,
                mm_defaults=dict(drop_path_rate=0.3),
                swap_rules=dict(adamw=dict(mmdet=dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                                           mmseg=dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01))))
