"""VMamba v2 ("VMamba: Visual State Space Model", Liu et al., NeurIPS 2024), re-implemented channel-first with the
module names of the upstream code (``classification/models/vmamba.py``), so that its ImageNet checkpoints load by key.

Released v2 settings (reference/vmamba.md §1.7): SS2D ``v05_noz``, d_state 1, channel-first ``ln2d`` norms, stem
v2, downsampling v3, MLP ratio 4. Activations stay [B, C, H, W]; any input size works (each stride-2 conv rounds up),
and the scans flatten whatever H x W they receive.
"""
import logging
from collections import OrderedDict

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mlla_mm.layers import DropPath
from mlla_mm.layers.ss2d import SS2D, LayerNorm2d, Linear2d, Mlp2d
from mlla_mm.utils import check_images, strip_wrapper_prefixes

from .registry import register_model

logger = logging.getLogger('mlla_mm')

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
    """VMamba v2 trunk with an optional ImageNet head.

    Args:
        embed_dim: channels of stage 1; stage i has embed_dim * 2**i.
        depths: blocks per stage.
        d_state: SSM state size (1 in the released models).
        ssm_ratio: SS2D expansion d_inner / C.
        mlp_ratio: MLP hidden / C.
        num_classes: classifier size; 0 keeps the final norm and pooling without a classifier; None builds the
            trunk only (no ``classifier``), as the detection/segmentation backbone does.
        with_cp: gradient checkpointing per block.
        backend: scan-kernel backend ('auto' | 'triton' | 'torch'; None reads MLLA_MM_BACKEND).
    """

    def __init__(self, embed_dim=96, depths=(2, 2, 8, 2), d_state=1, ssm_ratio=1.0, mlp_ratio=4.0, drop_rate=0.0,
                 drop_path_rate=0.2, in_chans=3, num_classes=1000, with_cp=False, backend=None):
        super().__init__()
        self.in_chans = in_chans
        self.num_stages = len(depths)
        self.num_features = [embed_dim * 2 ** i for i in range(self.num_stages)]
        self.patch_embed = patch_embed_v2(in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(self.num_stages):
            first = sum(depths[:i])
            last = i == self.num_stages - 1
            self.layers.append(VSSStage(
                self.num_features[i], None if last else self.num_features[i + 1], depths[i],
                rates[first:first + depths[i]], d_state, ssm_ratio, mlp_ratio, drop_rate, downsample=not last,
                backend=backend))
        self.num_classes = num_classes
        if num_classes is not None:
            self.classifier = nn.Sequential(OrderedDict(
                norm=LayerNorm2d(self.num_features[-1]),
                avgpool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                head=nn.Linear(self.num_features[-1], num_classes) if num_classes > 0 else nn.Identity()))
        self.set_grad_checkpointing(with_cp)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # As upstream: Linear (and Linear2d) trunc_normal(0.02), LayerNorm (1, 0); SS2D's own parameters are set
        # by SS2D.reset_ssm_parameters, convs keep PyTorch's default.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.layers:
            stage.with_cp = enable

    def check_input(self, x: torch.Tensor):
        check_images(x, self.in_chans, type(self).__name__)

    def forward_stages(self, x: torch.Tensor, last_stage: int = None):
        """Images [B, 3, H, W] -> per-stage maps [B, C_i, ceil(H/s), ceil(W/s)] at strides s = 4, 8, 16, 32
        (each stride-2 conv rounds up), taken before downsampling; stops after ``last_stage`` when given."""
        self.check_input(x)
        x = self.patch_embed(x)
        outputs = []
        for stage in self.layers[:None if last_stage is None else last_stage + 1]:
            out, x = stage(x)
            outputs.append(out)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_classes is None:
            raise RuntimeError('this VMamba was built without a head (num_classes=None); use forward_stages()')
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
        logger.info('checkpoint: reshaped %d 1x1-conv weights to Linear2d [out, in]', reshaped)
    if classifier:
        logger.info('checkpoint: skipped the classifier keys %s (not part of this model)', classifier)
    return kept


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
