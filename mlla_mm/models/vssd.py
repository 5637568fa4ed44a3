"""VSSD: Vision Mamba with Non-Causal State Space Duality (Shi et al., arXiv 2407.18559), re-implemented channels-last
with the module names of the upstream code (YuHengsss/VSSD ``classification/models/mamba2.py``@87b753b), so that its
ImageNet checkpoints load by key. Facts: ../shared/reference/mambavision_vssd.md section 2.

VSSD is MLLA's macro design (the same stem, downsampling, CPEs, norms and MLP, under the same keys) with the NC-SSD
token mixer in stages 1-3 and global softmax attention in stage 4. NC-SSD, per head h of P channels, with tokens l of
the H x W grid:

    [z, xBC, dt] = in_proj(u)                          z: Di = 2C, xBC: Di + 2N, dt: heads; no bias
    [x, B, C]    = SiLU(DWConv3x3(xBC))                 x: (heads, P), B and C: N each, shared by every head
    s_{l,h}      = softplus(dt_{l,h} + dt_bias_h) * exp(A_log_h)
    y_{l,h}      = C_l (sum_m B_m^T (s_{m,h} x_{m,h})) + D_h x_{l,h}      global, no decay, no normaliser
    out          = out_proj(LayerNorm(y) * z)          the gate z is not activated

i.e. the non-causal linear-attention op (``mlla_mm.kernels.linear_attention``) with no feature map, no RoPE, no
normaliser, a per-head input gate s, a per-head shortcut D, and one key (B) / query (C) shared by all heads.

Unlike MLLA, upstream's VSSD backbone pads nothing: each stride-2 convolution rounds up on its own, so the stem and
the downsampling here do not pad either (the values near the bottom/right edges of odd sizes differ from MLLA's
padded form). Any input size works.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mlla_mm.kernels import linear_attention
from mlla_mm.layers import DepthwiseConv2d, DropPath, Mlp, init_linear_and_layernorm
from mlla_mm.utils import log_report, strip_wrapper_prefixes

from .mlla import MLLA, MLLAStage, PatchMerging, Stem
from .registry import pretrained_cfg, register_family, register_model

# Settings of the released models (reference section 2.2); 'test' is a tiny variant for fast CPU tests.
VSSD_ARCHS = {
    'micro': dict(embed_dim=48, depths=(2, 2, 8, 4), num_heads=(2, 4, 8, 16), d_state=48, drop_path_rate=0.1),
    'tiny': dict(embed_dim=64, depths=(2, 4, 8, 4), num_heads=(2, 4, 8, 16), d_state=64, drop_path_rate=0.2),
    'small': dict(embed_dim=64, depths=(3, 4, 21, 5), num_heads=(2, 4, 8, 16), d_state=64, drop_path_rate=0.4),
    'base': dict(embed_dim=96, depths=(3, 4, 21, 5), num_heads=(3, 6, 12, 24), d_state=64, drop_path_rate=0.6),
    'test': dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), d_state=8, drop_path_rate=0.1),
}


class VSSDStem(Stem):
    """MLLA's conv stem without the padding to a multiple of 4: [B, 3, H, W] -> [B, ceil(H/4), ceil(W/4), C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.conv2(x) + x
        return self.conv3(x).permute(0, 2, 3, 1)


class VSSDPatchMerging(PatchMerging):
    """MLLA's downsampling without padding odd sizes: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class NCSSD(nn.Module):
    """Non-causal state space duality mixer (upstream ``Mamba2`` with ``linear_attn_duality=True``); [B, H, W, C] ->
    [B, H, W, C]. Keys: ``in_proj``, ``conv2d``, ``dt_bias``, ``A_log``, ``D``, ``norm``, ``out_proj``."""

    def __init__(self, dim: int, num_heads: int, d_state: int, expand: int = 2, backend=None):
        super().__init__()
        self.inner = expand * dim
        if self.inner % num_heads:
            raise ValueError(f'NCSSD: {self.inner} inner channels are not divisible by num_heads={num_heads}')
        self.num_heads, self.d_state, self.backend = num_heads, d_state, backend
        self.in_proj = nn.Linear(dim, 2 * self.inner + 2 * d_state + num_heads, bias=False)
        self.conv2d = DepthwiseConv2d(self.inner + 2 * d_state)
        # Upstream's init (Mamba2.__init__): dt log-uniform in [1e-3, 0.1] floored at 1e-4, A in U[1, 16], D = 1.
        dt = torch.exp(torch.rand(num_heads) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                       + torch.log(torch.tensor(1e-3))).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(num_heads))
        self.norm = nn.LayerNorm(self.inner)
        self.out_proj = nn.Linear(self.inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        z, xbc, dt = self.in_proj(x).split([self.inner, self.inner + 2 * self.d_state, self.num_heads], dim=-1)
        xbc = F.silu(self.conv2d(xbc)).reshape(batch, tokens, -1)
        values, keys_queries = xbc.split([self.inner, 2 * self.d_state], dim=-1)   # B (keys) then C (queries)
        scale = F.softplus(dt + self.dt_bias) * self.A_log.exp()                   # s_{l,h} > 0
        y = linear_attention(
            keys_queries, values.reshape(batch, tokens, self.num_heads, -1), (height, width), feature_map='none',
            rope=False, norm='none', gate=scale.reshape(batch, tokens, self.num_heads).to(values.dtype),
            shortcut=self.D, shared_qk=True, qk_order='kq', backend=self.backend)
        return self.out_proj(self.norm(y.reshape(batch, height, width, self.inner)) * z)

    def extra_repr(self) -> str:
        return f'inner={self.inner}, num_heads={self.num_heads}, d_state={self.d_state}, backend={self.backend}'


class SoftmaxAttention(nn.Module):
    """Global multi-head softmax attention over all H x W tokens (upstream ``StandardAttention``): [B, H, W, C] ->
    [B, H, W, C]. Keys: ``to_qkv`` (no bias), ``to_out``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'SoftmaxAttention: dim={dim} is not divisible by num_heads={num_heads}')
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        qkv = self.to_qkv(x).reshape(batch, height * width, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(batch, height, width, channels))


class VSSDBlock(nn.Module):
    """x += cpe1(x); x += DropPath(mixer(LN x)); x += cpe2(x); x += DropPath(MLP(LN x)). [B, H, W, C] -> same.

    The mixer (``attn``) is NC-SSD, or softmax attention in the last stage."""

    def __init__(self, dim: int, num_heads: int, d_state: int, softmax: bool, mlp_ratio: float = 4.0,
                 drop: float = 0.0, drop_path: float = 0.0, backend=None):
        super().__init__()
        self.cpe1 = DepthwiseConv2d(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SoftmaxAttention(dim, num_heads) if softmax else NCSSD(dim, num_heads, d_state, backend=backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.cpe2 = DepthwiseConv2d(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe1(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.cpe2(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VSSDStage(MLLAStage):
    """MLLA's stage (blocks with optional checkpointing, then the downsampling) over VSSD blocks."""

    def __init__(self, blocks, dim: int, downsample: bool):
        nn.Module.__init__(self)  # MLLAStage.__init__ would build MLLA blocks
        self.with_cp = False
        self.blocks = nn.ModuleList(blocks)
        self.downsample = VSSDPatchMerging(dim) if downsample else None


class VSSD(MLLA):
    """VSSD with an ImageNet head; every method of the model contract is MLLA's.

    Args:
        embed_dim: channels of stage 1; stage i has embed_dim * 2**i.
        depths, num_heads: per stage (NC-SSD heads of 2 C / heads channels; softmax heads of C / heads).
        d_state: N, the key/query width of NC-SSD.
        num_classes: classifier size; 0 keeps the final norm and pooling with an Identity head.
        with_cp: gradient checkpointing per block.
        backend: linear-attention backend ('auto' | 'triton' | 'torch'; None reads MLLA_MM_BACKEND).
    """

    def __init__(self, embed_dim=64, depths=(2, 4, 8, 4), num_heads=(2, 4, 8, 16), d_state=64, mlp_ratio=4.0,
                 drop_rate=0.0, drop_path_rate=0.2, in_chans=3, num_classes=1000, with_cp=False, backend=None):
        nn.Module.__init__(self)  # MLLA.__init__ would build MLLA blocks
        if len(depths) != len(num_heads):
            raise ValueError(f'VSSD: depths {depths} and num_heads {num_heads} differ in length')
        self.in_chans = in_chans
        self.num_classes = num_classes
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.num_features = dims[-1]
        self.patch_embed = VSSDStem(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            first = sum(depths[:i])
            last = i == len(depths) - 1
            blocks = [VSSDBlock(dim, num_heads[i], d_state, last, mlp_ratio, drop_rate, rates[first + j], backend)
                      for j in range(depth)]
            self.layers.append(VSSDStage(blocks, dim, downsample=not last))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f'layers.{i}'))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.set_grad_checkpointing(with_cp)
        self.apply(init_linear_and_layernorm)

    def no_weight_decay(self):
        # Upstream marks dt_bias, A_log and D _no_weight_decay.
        return {name for name, _ in self.named_parameters() if name.endswith(('.dt_bias', '.A_log', '.D'))}


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an upstream VSSD state dict (classification ``VMAMBA2`` or detection/segmentation ``MM_VSSD``) onto
    ``model``'s keys: strips ``module.`` / ``backbone.`` prefixes and skips ``head.*`` and the classifier ``norm.*``
    when ``model`` has none. The backbone's ``outnorm{i}`` keys pass through (the mm output norms carry that name)."""
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


# The released ImageNet-1K checkpoints (HF YuhengSSS/VSSD; upstream's loader reads the 'model' entry, the ADE20K
# Small config 'model_ema').
_RELEASE = 'https://huggingface.co/YuhengSSS/VSSD'
default_cfgs = {
    'vssd_m': pretrained_cfg('vssd_micro_best.pth', _RELEASE, crop_pct=224 / 256),
    'vssd_t': pretrained_cfg('vssd_tiny_best_ema.pth', _RELEASE, crop_pct=224 / 256),
    'vssd_s': pretrained_cfg('vssd_small_best_ema.pth', _RELEASE, crop_pct=224 / 256),
    'vssd_b': pretrained_cfg('vssd_base_best_ema.pth', _RELEASE, crop_pct=224 / 256),
}


def _create_vssd(arch: str, **kwargs) -> VSSD:
    return VSSD(**{**VSSD_ARCHS[arch], **kwargs})


@register_model
def vssd_m(**kwargs) -> VSSD:
    """VSSD-Micro: 13.5M params (1000 classes), 2.3 GFLOPs at 224, 82.5 top-1."""
    return _create_vssd('micro', **kwargs)


@register_model
def vssd_t(**kwargs) -> VSSD:
    """VSSD-T: 24.3M params (1000 classes), 4.5 GFLOPs at 224, 83.6 top-1."""
    return _create_vssd('tiny', **kwargs)


@register_model
def vssd_s(**kwargs) -> VSSD:
    """VSSD-S: 40.1M params, 7.4 GFLOPs at 224, 84.1 top-1."""
    return _create_vssd('small', **kwargs)


@register_model
def vssd_b(**kwargs) -> VSSD:
    """VSSD-B: 88.8M params, 16.1 GFLOPs at 224, 84.7 top-1."""
    return _create_vssd('base', **kwargs)


@register_model
def vssd_test(**kwargs) -> VSSD:
    """A tiny VSSD (embed 16, d_state 8) for fast CPU tests; not a released model."""
    return _create_vssd('test', **kwargs)


register_family('VSSD', VSSD, archs=dict(micro='vssd_m', tiny='vssd_t', small='vssd_s', base='vssd_b',
                                         test='vssd_test'),
                checkpoint_filter=checkpoint_filter_fn, out_norm='outnorm')
