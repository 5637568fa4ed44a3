"""The MLLA paper's ablations (Han et al., "Demystify Mamba in Vision: A Linear Attention Perspective", NeurIPS 2024,
Tables 1 and 2) as switches of one linear-attention block, on MLLA's stem, downsampling and stages.

The paper rewrites Mamba's selective SSM and linear attention (LA) as one recurrence over tokens i (its eq. 11-12):

    SSM:  h_i = A~_i (.) h_{i-1} + B_i (Delta_i (.) x_i),     y_i = C_i h_i / 1          + D (.) x_i
    LA:   S_i = 1    (.) S_{i-1} + K_i^T (1   (.) V_i),       y_i = Q_i S_i / Q_i Z_i    + 0 (.) x_i

and names six distinctions between them, each a switch here (``AblationConfig``), added to the LA baseline one at a
time. Per head, with tokens t of an H x W grid (N = H * W), Q = phi(t W_Q), K = phi(t W_K), phi = ELU + 1, and
t the token the mixer sees (the normalised block input; in the MLLA and Mamba block designs, the output of
in_proj -> DWConv -> SiLU):

- ``input_gate``:  V_j -> Delta_j (.) V_j with Delta = softplus(t W_1 W_2 + b) in R^{N x C}, one value per channel
  and token (paper section 4.2; applied to the non-causal LA, LeapLabTHU/MLLA#21). Z does not see Delta (the literal
  eq. 11-12). Rank of W_1 W_2: ``gate_rank`` (default ceil(C/16), Mamba's dt_rank). Init of b: ``gate_init``
  ('unit': Delta = 1 at init, so the variant starts as the baseline; 'mamba': Delta log-uniform in [1e-3, 0.1]).
- ``forget_gate``: the recurrent form S_i = diag(exp(g_i)) S_{i-1} + K_i^T V_i (and Z_i likewise), with
  g_i[n] = -exp(A_log[n]) * Delta_i, Delta = softplus(t W_dt + b_dt) one value per head and token, A one value per
  head and key channel (the 'key' granularity of mlla_ablations.md section 4.1; the paper's Mamba-1 A~ has one value
  per key *and* value channel, which no chunked kernel can compute). Directions: 'causal' (row-major raster, the
  paper's), 'bidirectional' and '4-direction' (VMamba's routes; extensions, not in the paper). Computed by
  ``mlla_mm.kernels.forget_gate``; the denominator Q_i Z_i comes from a ones column appended to V.
- ``shortcut``: y_i += D (.) x_i, D in R^C, init 1, no weight decay, added before the output projection;
  ``shortcut_src`` 'x' (the mixer's input token t, eq. 12) or 'v' (the value V_i; identical in the MLLA block).
- ``attn_norm``: 'denominator' y_i = Q~_i (sum_j K~_j^T V_j / N) / (Q_i mean_j K_j + 1e-6) (MLLA); 'mean'
  y_i = Q~_i sum_j K~_j^T V_j / N (the 1/N kept: without it outputs grow with N, 60k tokens on COCO); 'none'
  y_i = Q~_i sum_j K~_j^T V_j (eq. 11's literal "/1").
- ``heads``: 'multi' (C/32 heads of 32 channels) or 'single': one Q/K pair of ``qk_dim`` channels (default 32; the
  paper's 24M / 3.9G fit d << C) shared by all C value channels, S in R^{d x C}.
- ``block``: 'transformer' (x += W_o LA(LN x) with a V projection; x += MLP(LN x)), 'mlla' (the paper's "sub" block
  design, Fig. 3c: u = LN x, x += W_o(LA(SiLU(DWConv(W_in u))) (.) SiLU(W_g u)), no V projection; x += MLP(LN x)) or
  'mamba_all' (Fig. 3b, the whole block a Mamba block with expansion ``mamba_expand``: [v, z] = W_in LN(x) with
  2E C channels, x += W_o(LA(SiLU(DWConv(v))) (.) SiLU(z)), no MLP; Q/K are projected from v at width E C).
- ``pos``: any of 'rope' (2-D RoPE on Q, K in the numerator only, as MLLA), 'lepe' (y += DWConv3x3(V)), 'cpe'
  (x += DWConv3x3(x) before each residual branch, as MLLA's cpe1/cpe2) and 'ape' (a learnable table per block added
  to the key projection before phi, laid out for ``ape_size`` input pixels and resized bilinearly to the runtime
  grid; +2M params on Swin-T in the paper fits one table per attention layer).

Presets (``PRESETS``): Table 1 (``baseline``, ``input_gate``, ``forget_gate``, ``shortcut``, ``no_norm``,
``single_head``, ``block_all``, ``block_sub``), Table 2 (``ape``, ``lepe``, ``cpe``, ``rope``), the final ``mlla``
(block_sub + LePE + CPE + RoPE: exactly MLLA, whose checkpoints it loads) and the direction extensions
``forget_gate_bidirectional`` and ``forget_gate_4dir``. The baseline is the Transformer block with multi-head,
normalised, non-causal ELU+1 linear attention and no positional encoding, on MLLA's macro design (the paper used
Swin-T's; its 77.6 / 28M / 4.5G do not apply here). Everything here is new data: the paper's ablations are
ImageNet-only, and its code has none.

Models: ``mlla_ablation_<preset>`` at MLLA's tiny test size (embed 32, one block per stage), ``size='tiny'`` for
MLLA-T's settings; any switch can be overridden by keyword (``mlla_ablation_baseline(shortcut=True)``).
"""
import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlla_mm.kernels import linear_attention
from mlla_mm.kernels.forget_gate import forget_gate_attention
from mlla_mm.layers import DepthwiseConv2d, DropPath, Mlp, init_linear_and_layernorm

from .mlla import MLLA, MLLA_ARCHS, MLLAStage, PatchMerging, Stem, checkpoint_filter_fn
from .registry import register_family, register_model

BLOCKS = ('transformer', 'mlla', 'mamba_all')
FORGET_GATES = ('none', 'causal', 'bidirectional', '4-direction')
ATTN_NORMS = ('denominator', 'mean', 'none')
HEADS = ('multi', 'single')
POSITIONAL = ('rope', 'lepe', 'cpe', 'ape')
GATE_INITS = ('unit', 'mamba')
SHORTCUT_SOURCES = ('x', 'v')
SIZES = ('test', 'tiny')
EPS = 1e-6


@dataclass(frozen=True)
class AblationConfig:
    """The switches of one ablation block (see the module docstring for the equation of each)."""
    block: str = 'transformer'
    input_gate: bool = False
    forget_gate: str = 'none'
    shortcut: bool = False
    attn_norm: str = 'denominator'
    heads: str = 'multi'
    pos: tuple = ()
    # Points the paper leaves open (mlla_ablations.md section 5), chosen here and exposed.
    gate_rank: int = 0          # rank of the input gate's W_1 W_2; 0 = ceil(C / 16)
    gate_init: str = 'unit'
    shortcut_src: str = 'x'
    qk_dim: int = 32            # Q/K channels of the single head
    mamba_expand: float = 2.0
    ape_size: int = 224         # input side the APE tables are laid out for

    def __post_init__(self):
        choices = dict(block=BLOCKS, forget_gate=FORGET_GATES, attn_norm=ATTN_NORMS, heads=HEADS,
                       gate_init=GATE_INITS, shortcut_src=SHORTCUT_SOURCES)
        for name, known in choices.items():
            if getattr(self, name) not in known:
                raise ValueError(f'MLLAAblation: {name}={getattr(self, name)!r}; known: {", ".join(known)}')
        pos = (self.pos,) if isinstance(self.pos, str) else tuple(self.pos)
        unknown = [p for p in pos if p not in POSITIONAL]
        if unknown:
            raise ValueError(f'MLLAAblation: unknown positional encodings {unknown}; known: {", ".join(POSITIONAL)}')
        object.__setattr__(self, 'pos', tuple(p for p in POSITIONAL if p in pos))
        if self.forget_gate != 'none' and 'rope' in self.pos:
            raise ValueError('MLLAAblation: forget_gate with rope is not supported (RoPE rotates only the numerator, '
                             'the forget-gate op computes numerator and denominator in one pass)')
        if self.qk_dim <= 0 or self.qk_dim % 4:
            raise ValueError(f'MLLAAblation: qk_dim={self.qk_dim} must be a positive multiple of 4 (2-D RoPE)')
        if self.mamba_expand <= 0 or self.gate_rank < 0 or self.ape_size <= 0:
            raise ValueError(f'MLLAAblation: mamba_expand ({self.mamba_expand}) and ape_size ({self.ape_size}) must '
                             f'be positive, gate_rank ({self.gate_rank}) >= 0')


_BASELINE = AblationConfig()
_MLLA = AblationConfig(block='mlla', pos=('rope', 'lepe', 'cpe'))
PRESETS = {
    # Table 1: the baseline plus one distinction at a time.
    'baseline': _BASELINE,
    'input_gate': replace(_BASELINE, input_gate=True),
    'forget_gate': replace(_BASELINE, forget_gate='causal'),
    'shortcut': replace(_BASELINE, shortcut=True),
    'no_norm': replace(_BASELINE, attn_norm='none'),
    'single_head': replace(_BASELINE, heads='single'),
    'block_all': replace(_BASELINE, block='mamba_all'),
    'block_sub': replace(_BASELINE, block='mlla'),
    # Table 2: one positional encoding instead of the forget gate.
    'ape': replace(_BASELINE, pos=('ape',)),
    'lepe': replace(_BASELINE, pos=('lepe',)),
    'cpe': replace(_BASELINE, pos=('cpe',)),
    'rope': replace(_BASELINE, pos=('rope',)),
    # The final design, MLLA itself.
    'mlla': _MLLA,
    # Extensions (not in the paper): the forget gate over both raster directions, and over VMamba's four routes.
    'forget_gate_bidirectional': replace(_BASELINE, forget_gate='bidirectional'),
    'forget_gate_4dir': replace(_BASELINE, forget_gate='4-direction'),
}


def resolve_config(preset: str, **switches) -> AblationConfig:
    """The switches of ``preset`` with ``switches`` overriding them."""
    if preset not in PRESETS:
        raise KeyError(f'MLLAAblation: unknown preset {preset!r}; known presets: {", ".join(PRESETS)}')
    unknown = set(switches) - set(AblationConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f'MLLAAblation: unknown switches {sorted(unknown)}; known: '
                        f'{", ".join(AblationConfig.__dataclass_fields__)}')
    return replace(PRESETS[preset], **switches)


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def _mamba_dt(count: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> torch.Tensor:
    """Mamba's time-step init: log-uniform in [dt_min, dt_max]."""
    return torch.exp(torch.rand(count) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))


class AblationAttention(nn.Module):
    """Linear attention with the ablation switches, on a channels-last [B, H, W, C] map -> [B, H, W, C].

    Keys: ``qk`` (Linear C -> 2 C_qk, q first; C_qk = C, or qk_dim for a single head), ``v`` (Linear C -> C, only
    with a V projection), ``gate_down``/``gate_up``/``gate_bias`` (input gate), ``decay_proj``/``decay_bias``/
    ``A_log`` (forget gate), ``D`` (shortcut), ``lepe`` (3x3 depthwise conv), ``ape`` ([S, S, C_qk]).
    """

    def __init__(self, dim: int, num_heads: int, cfg: AblationConfig, value_proj: bool, ape_grid: int,
                 qkv_bias: bool = True, backend=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'AblationAttention: dim={dim} is not divisible by num_heads={num_heads}')
        self.dim, self.num_heads, self.cfg, self.backend = dim, num_heads, cfg, backend
        self.qk_heads = 1 if cfg.heads == 'single' else num_heads
        qk_channels = cfg.qk_dim if cfg.heads == 'single' else dim
        self.qk = nn.Linear(dim, 2 * qk_channels, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias) if value_proj else None
        if cfg.input_gate:
            rank = cfg.gate_rank or math.ceil(dim / 16)
            self.gate_down = nn.Linear(dim, rank, bias=False)
            self.gate_up = nn.Linear(rank, dim, bias=False)
            delta = torch.ones(dim) if cfg.gate_init == 'unit' else _mamba_dt(dim)
            self.gate_bias = nn.Parameter(_inverse_softplus(delta))
        if cfg.forget_gate != 'none':
            key_dim = qk_channels // self.qk_heads
            self.decay_proj = nn.Linear(dim, self.qk_heads, bias=False)
            self.decay_bias = nn.Parameter(_inverse_softplus(_mamba_dt(self.qk_heads)))
            # Mamba-1's S4D-real init, A[n] = n + 1 over the key channels.
            self.A_log = nn.Parameter(torch.arange(1, key_dim + 1, dtype=torch.float32).log().repeat(self.qk_heads, 1))
        if cfg.shortcut:
            self.D = nn.Parameter(torch.ones(dim))
        if 'lepe' in cfg.pos:
            self.lepe = DepthwiseConv2d(dim)
        if 'ape' in cfg.pos:
            self.ape = nn.Parameter(torch.zeros(ape_grid, ape_grid, qk_channels))
            nn.init.trunc_normal_(self.ape, std=0.02)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        batch, height, width, channels = t.shape
        tokens = height * width
        qk = self.qk(t)
        if 'ape' in cfg.pos:
            table = F.interpolate(self.ape.permute(2, 0, 1)[None], size=(height, width), mode='bilinear',
                                  align_corners=False)[0].permute(1, 2, 0)
            q, k = qk.chunk(2, dim=-1)
            qk = torch.cat([q, k + table], dim=-1)
        v = self.v(t) if self.v is not None else t
        heads_view = (batch, tokens, self.num_heads, channels // self.num_heads)
        gate = None
        if cfg.input_gate:
            gate = F.softplus(self.gate_up(self.gate_down(t)) + self.gate_bias).reshape(heads_view)
        if cfg.forget_gate == 'none':
            out = linear_attention(
                qk.reshape(batch, tokens, -1), v.reshape(heads_view), (height, width), feature_map='elu',
                rope='rope' in cfg.pos, norm=cfg.attn_norm, gate=None if gate is None else gate.to(v.dtype),
                shared_qk=cfg.heads == 'single', backend=self.backend)
        else:
            out = self._forget_gate_attention(t, qk, v.reshape(heads_view), gate, (height, width))
        out = out.reshape(batch, height, width, channels)
        if cfg.shortcut:
            out = out + self.D * (t if cfg.shortcut_src == 'x' else v)
        if 'lepe' in cfg.pos:
            out = out + self.lepe(v)
        return out

    def _forget_gate_attention(self, t, qk, v, gate, hw):
        """The recurrent form with decays exp(g) in (0, 1), through the forget-gate op; [B, N, H, Dv] -> same."""
        batch, tokens, heads, _ = v.shape
        qk = (F.elu(qk.float()) + 1.0).reshape(batch, tokens, 2, self.qk_heads, -1)
        q, k = qk[:, :, 0], qk[:, :, 1]
        delta = F.softplus(self.decay_proj(t).reshape(batch, tokens, self.qk_heads).float() + self.decay_bias)
        g = -self.A_log.exp() * delta[..., None]                      # [B, N, Hk, Dk], <= 0
        if self.qk_heads != heads:                                     # one Q/K pair shared by every value head
            q, k, g = (x.expand(batch, tokens, heads, x.shape[-1]) for x in (q, k, g))
        u = v.float() if gate is None else v.float() * gate.float()
        if self.cfg.attn_norm == 'denominator':                        # Q_i Z_i, decayed as S_i, in the last column
            u = torch.cat([u, u.new_ones(batch, tokens, heads, 1)], dim=-1)
        out = forget_gate_attention(q, k, u, g, direction=self.cfg.forget_gate, hw=hw, backend=self.backend)
        if self.cfg.attn_norm == 'denominator':
            out = out[..., :-1] / (out[..., -1:] + EPS)
        elif self.cfg.attn_norm == 'mean':
            out = out / tokens
        return out.to(v.dtype)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, qk_heads={self.qk_heads}'


class AblationBlock(nn.Module):
    """One block of ``cfg.block`` design; x: [B, H, W, C] -> [B, H, W, C].

    transformer: [x += cpe1(x)] ; x += W_o LA(LN x)                              ; [x += cpe2(x)] ; x += MLP(LN x)
    mlla:        [x += cpe1(x)] ; x += W_o(LA(SiLU(DWConv(W_in u))) * SiLU(W_g u)) ; [x += cpe2(x)] ; x += MLP(LN x)
    mamba_all:   [x += cpe1(x)] ; [v, z] = W_in LN x ; x += W_o(LA(SiLU(DWConv(v))) * SiLU(z))
    The 'mlla' design with pos=(rope, lepe, cpe) has MLLA's keys and maths (cpe1, norm1, in_proj, act_proj, dwc,
    attn.qk, attn.lepe, out_proj, cpe2, norm2, mlp).
    """

    def __init__(self, dim: int, num_heads: int, cfg: AblationConfig, ape_grid: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, drop_path: float = 0.0, backend=None):
        super().__init__()
        self.design = cfg.block
        self.cpe1 = DepthwiseConv2d(dim) if 'cpe' in cfg.pos else None
        self.norm1 = nn.LayerNorm(dim)
        if cfg.block == 'mamba_all':
            inner = int(dim * cfg.mamba_expand)
            head_dim = dim // num_heads
            if inner % head_dim:
                raise ValueError(f'AblationBlock: mamba_expand={cfg.mamba_expand} gives {inner} channels, not a '
                                 f'multiple of the head dim {head_dim}')
            self.in_proj = nn.Linear(dim, 2 * inner)
            self.dwc = DepthwiseConv2d(inner)
            self.attn = AblationAttention(inner, inner // head_dim, cfg, False, ape_grid, qkv_bias, backend)
            self.out_proj = nn.Linear(inner, dim)
        elif cfg.block == 'mlla':
            self.in_proj = nn.Linear(dim, dim)
            self.act_proj = nn.Linear(dim, dim)
            self.dwc = DepthwiseConv2d(dim)
            self.attn = AblationAttention(dim, num_heads, cfg, False, ape_grid, qkv_bias, backend)
            self.out_proj = nn.Linear(dim, dim)
        else:
            self.attn = AblationAttention(dim, num_heads, cfg, True, ape_grid, qkv_bias, backend)
            self.out_proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if cfg.block != 'mamba_all':
            self.cpe2 = DepthwiseConv2d(dim) if 'cpe' in cfg.pos else None
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpe1 is not None:
            x = x + self.cpe1(x)
        u = self.norm1(x)
        if self.design == 'mamba_all':
            v, z = self.in_proj(u).chunk(2, dim=-1)
            return x + self.drop_path(self.out_proj(self.attn(F.silu(self.dwc(v))) * F.silu(z)))
        if self.design == 'mlla':
            gate = F.silu(self.act_proj(u))
            x = x + self.drop_path(self.out_proj(self.attn(F.silu(self.dwc(self.in_proj(u)))) * gate))
        else:
            x = x + self.drop_path(self.out_proj(self.attn(u)))
        if self.cpe2 is not None:
            x = x + self.cpe2(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AblationStage(MLLAStage):
    """MLLA's stage (its forward: blocks with optional checkpointing, then the downsampling) over ablation blocks."""

    def __init__(self, blocks, dim: int, downsample: bool):
        nn.Module.__init__(self)  # MLLAStage.__init__ would build MLLA blocks
        self.with_cp = False
        self.blocks = nn.ModuleList(blocks)
        self.downsample = PatchMerging(dim) if downsample else None


class MLLAAblation(MLLA):
    """MLLA's macro design (stem, stages, downsampling, head, and every method of the model contract) with ablation
    blocks.

    Args:
        preset: a key of ``PRESETS``; ``switches`` (fields of ``AblationConfig``) override its switches.
        embed_dim, depths, num_heads, mlp_ratio, qkv_bias, drop_rate, drop_path_rate, in_chans, num_classes,
        with_cp, backend: as ``MLLA``.
    """

    def __init__(self, preset='mlla', embed_dim=64, depths=(2, 4, 8, 4), num_heads=(2, 4, 8, 16), mlp_ratio=4.0,
                 qkv_bias=True, drop_rate=0.0, drop_path_rate=0.2, in_chans=3, num_classes=1000, with_cp=False,
                 backend=None, **switches):
        nn.Module.__init__(self)  # MLLA.__init__ would build MLLA blocks
        if len(depths) != len(num_heads):
            raise ValueError(f'MLLAAblation: depths {depths} and num_heads {num_heads} differ in length')
        self.preset = preset
        self.cfg = resolve_config(preset, **switches)
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
            ape_grid = max(1, self.cfg.ape_size // (4 * 2 ** i))
            blocks = [AblationBlock(dim, num_heads[i], self.cfg, ape_grid, mlp_ratio, qkv_bias, drop_rate,
                                    rates[first + j], backend) for j in range(depth)]
            self.layers.append(AblationStage(blocks, dim, downsample=i < len(depths) - 1))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f'layers.{i}'))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.set_grad_checkpointing(with_cp)
        self.apply(init_linear_and_layernorm)

    def no_weight_decay(self):
        # Mamba's convention for the SSM's own parameters (D, A_log, the time-step biases) and timm's for tables.
        names = ('.D', '.A_log', '.decay_bias', '.gate_bias', '.ape')
        return {name for name, _ in self.named_parameters() if name.endswith(names)}

    def switches(self) -> dict:
        return asdict(self.cfg)


def _create(preset: str, size: str = 'test', **kwargs) -> MLLAAblation:
    if size not in SIZES:
        raise KeyError(f'MLLAAblation: unknown size {size!r}; known sizes: {", ".join(SIZES)}')
    return MLLAAblation(preset, **{**MLLA_ARCHS[size], **kwargs})


def _constructor(preset: str):
    def create(size: str = 'test', **kwargs) -> MLLAAblation:
        return _create(preset, size, **kwargs)
    create.__name__ = create.__qualname__ = f'mlla_ablation_{preset}'
    create.__doc__ = (f'MLLA ablation preset {preset!r} ({PRESETS[preset]}); size "test" (MLLA\'s tiny test '
                      f'variant, default) or "tiny" (MLLA-T); switches override by keyword. Not a released model.')
    return register_model(create)


# preset -> model name; the constructors are module attributes like hand-written ones.
ABLATION_MODELS = {}
for _preset in PRESETS:
    _create_preset = _constructor(_preset)
    globals()[_create_preset.__name__] = _create_preset
    ABLATION_MODELS[_preset] = _create_preset.__name__

# The 'mlla' preset has MLLA's keys, so MLLA's filter (RoPE tables and classifier dropped) loads MLLA checkpoints.
register_family('MLLAAblation', MLLAAblation, archs=dict(ABLATION_MODELS), checkpoint_filter=checkpoint_filter_fn,
                out_norm='norm', mm_defaults=dict(drop_path_rate=0.1))
