"""Generalised non-causal linear attention: MLLA's token mixer, VSSD's NC-SSD and the MLLA paper's ablations are
settings of one op.

    linear_attention(qk, v, hw, *, feature_map='elu', rope=True, norm='denominator', gate=None, shortcut=None,
                     lepe_weight=None, lepe_bias=None, shared_qk=False, qk_order='qk', backend=None)
        -> out [B, N, H, Dv]

Per batch b and value head h over the N = height * width tokens of a grid (row-major):
    Q, K   = phi(q), phi(k)                 feature_map: 'elu' (ELU + 1, positive) | 'none' (identity)
    Q~, K~ = RoPE_2d(Q), RoPE_2d(K)         rope=True: MLLA's 2-D RoPE over all Hk * Dk query/key channels before
                                            the head split (first quarter of the pairs: row angles, next: column),
                                            from the runtime height and width; numerator only
    u_n    = gate_n * v_n                   gate: per-token value scale, the input gate (Delta in Mamba)
    S      = sum_n K~_n u_n^T               Dk x Dv state, accumulated in fp32
    out_n  = c_n * Q~_n S + D * v_n         shortcut: D (the un-gated v, as Mamba's D * x)
             + LePE(v)_n                    lepe_weight/lepe_bias: MLLA's LePE, a 3x3 depthwise conv of v on the grid
                                            (zero padding), fused into the output kernel
    c_n    = 1 / (N (Q_n . mean_m K_m + 1e-6))   norm='denominator' (MLLA; un-rotated Q, K)
           = 1 / N                               norm='mean'
           = 1                                   norm='none' (|out| grows with N: 67,200 tokens at 800 x 1344)

Arguments (every tensor may have any strides; sizes are runtime values, no recompilation per image size):
    qk:  [B, N, 2 * Hk * Dk], the packed query/key projection output before the feature map: q in the first half and
         k in the second (qk_order='qk'), or k first (qk_order='kq'). The Triton backward writes one packed
         gradient for it. Hk = H (per-head q/k), or 1 with shared_qk=True (one q/k of Dk channels for every head).
    v:   [B, N, H, Dv] values (H value heads).
    hw:  (height, width), height * width == N.
    gate: None | [B, N, H] (one scale per token and head) | [B, N, H, Dv] (per token and channel). It scales the
         values in the state only (the literal eq. 11-12 of the MLLA paper; the normaliser does not see it).
    shortcut: None | [H] (one D per head) | [H, Dv] (per channel).
    lepe_weight: None | [H * Dv, 1, 3, 3] (nn.Conv2d(C, C, 3, padding=1, groups=C).weight); lepe_bias: None | [C].
    backend: 'auto' | 'triton' | 'torch', or None for MLLA_MM_BACKEND (kernels/backend.py).
Returns [B, N, H, Dv], contiguous, in v's dtype (qk, v, gate share one dtype: fp32, fp16 or bf16; shortcut may be
fp32). Triton limits: Dk even, Dk and Dv <= 128.

Settings:
    MLLA (the defaults, plus LePE): linear_attention(qk, x.view(B, N, H, C // H), hw, lepe_weight=lepe.weight,
        lepe_bias=lepe.bias), with qk = Linear(C, 2C)(x) (mlla_mm.layers.LinearAttention).
    VSSD NC-SSD (YuHengsss/VSSD mamba2.py, ngroups 1, reference/mambavision_vssd.md sec. 2.3):
        y_{l,h} = C_l . sum_j B_j^T (dt_{j,h} exp(A_log_h) x_{j,h}) + D_h x_{l,h}
        = linear_attention(xBC[..., Di:], x.view(B, L, H, P), hw, feature_map='none', rope=False, norm='none',
                           gate=dt * A_log.exp(), shortcut=D, shared_qk=True, qk_order='kq')
        where xBC = SiLU(conv2d(xBC)) splits as (x: Di, B: d_state, C: d_state), so xBC[..., Di:] holds k = B then
        q = C (Dk = d_state, shared by the H heads of P = Di / H channels); dt = softplus(dt + dt_bias) is
        [B, L, H] in x's dtype and D is [H]. The caller then applies VSSD's LayerNorm(Di), the linear gate y * z and
        out_proj. The state is not normalised: it is accumulated in fp32 and, for fp16/bf16 inputs, the products
        with it run in fp32 (tf32), so it cannot overflow fp16 at detection sizes.
    Single head (the paper's "- multi-head"): shared_qk=True with a small Dk (one d x C state, split into value heads
        only for the kernels: the result equals one head of Dv = C).
    Input gate: gate [B, N, H, Dv] (per channel, the paper) or [B, N, H]. Shortcut: shortcut [H, Dv].
    No attention normalisation: norm='none' (literal eq. 11) or norm='mean' (keeps the 1/N). On the Triton backend
        the products with the state run in fp32 (tf32) for bf16 inputs with either, and for fp16 with 'none': with
        no denominator to scale them down, bf16 operands left errors near the bf16 tolerance (triton._state_f32).
"""
import torch

from ..backend import select_backend
from .reference import linear_attention_reference

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FEATURE_MAPS = ('elu', 'none')
NORMS = ('denominator', 'mean', 'none')
QK_ORDERS = ('qk', 'kq')


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f'linear_attention: {name}={value!r} is not one of {choices}')


def _check_tensor(name, t, ranks, dtypes=SUPPORTED_DTYPES):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'linear_attention: {name} must be a tensor, got {type(t).__name__}')
    if t.dim() not in ranks:
        raise ValueError(f'linear_attention: {name} must have rank {" or ".join(map(str, ranks))}, got shape '
                         f'{tuple(t.shape)}')
    if t.dtype not in dtypes:
        raise TypeError(f'linear_attention: {name} has dtype {t.dtype}; supported: {dtypes}')


def check_inputs(qk, v, hw, feature_map='elu', rope=True, norm='denominator', gate=None, shortcut=None,
                 lepe_weight=None, lepe_bias=None, shared_qk=False, qk_order='qk'):
    """Raise a clear error for anything the op cannot take; see the module docstring for the contract."""
    _check_choice('feature_map', feature_map, FEATURE_MAPS)
    _check_choice('norm', norm, NORMS)
    _check_choice('qk_order', qk_order, QK_ORDERS)
    _check_tensor('qk [B, N, 2 * Hk * Dk]', qk, (3,))
    _check_tensor('v [B, N, H, Dv]', v, (4,))
    batch, tokens, heads, dv = v.shape
    if qk.shape[:2] != v.shape[:2]:
        raise ValueError(f'linear_attention: qk {tuple(qk.shape)} and v {tuple(v.shape)} differ in batch or tokens')
    if qk.dtype != v.dtype:
        raise TypeError(f'linear_attention: qk and v dtypes differ: {qk.dtype}, {v.dtype}')
    qk_heads = 1 if shared_qk else heads
    if qk.shape[-1] % (2 * qk_heads) or qk.shape[-1] == 0:
        raise ValueError(f'linear_attention: qk has {qk.shape[-1]} channels, not 2 * Hk * Dk for Hk={qk_heads} '
                         f'({"shared q/k" if shared_qk else "one q/k per value head"}, v {tuple(v.shape)})')
    if len(hw) != 2 or any(int(s) != s or s <= 0 for s in hw):
        raise ValueError(f'linear_attention: hw must be (height, width) positive ints, got {hw}')
    if hw[0] * hw[1] != tokens:
        raise ValueError(f'linear_attention: hw={tuple(hw)} gives {hw[0] * hw[1]} tokens but N={tokens}')
    if rope and (qk.shape[-1] // 2) % 4:
        raise ValueError(f'linear_attention: 2-D RoPE needs Hk*Dk divisible by 4, got {qk.shape[-1] // 2}')
    if gate is not None:
        _check_tensor('gate [B, N, H] or [B, N, H, Dv]', gate, (3, 4))
        if gate.shape != v.shape[:gate.dim()] or gate.dtype != v.dtype:
            raise ValueError(f'linear_attention: gate {tuple(gate.shape)} {gate.dtype} must be [B, N, H] or '
                             f'[B, N, H, Dv] of v {tuple(v.shape)} in v\'s dtype {v.dtype}')
    if shortcut is not None:
        _check_tensor('shortcut [H] or [H, Dv]', shortcut, (1, 2))
        if shortcut.shape != v.shape[2:2 + shortcut.dim()]:
            raise ValueError(f'linear_attention: shortcut {tuple(shortcut.shape)} must be [H] or [H, Dv] of v '
                             f'{tuple(v.shape)}')
    channels = heads * dv
    if lepe_weight is not None:
        _check_tensor('lepe_weight [C, 1, 3, 3]', lepe_weight, (4,))
        if tuple(lepe_weight.shape) != (channels, 1, 3, 3):
            raise ValueError(f'linear_attention: lepe_weight {tuple(lepe_weight.shape)} must be [C, 1, 3, 3] with '
                             f'C = H * Dv = {channels} (a 3x3 depthwise conv)')
    if lepe_bias is not None:
        _check_tensor('lepe_bias [C]', lepe_bias, (1,))
        if lepe_weight is None or tuple(lepe_bias.shape) != (channels,):
            raise ValueError(f'linear_attention: lepe_bias {tuple(lepe_bias.shape)} needs lepe_weight and C = '
                             f'{channels} values')
    for name, t in (('gate', gate), ('shortcut', shortcut), ('lepe_weight', lepe_weight), ('lepe_bias', lepe_bias)):
        if t is not None and t.device != v.device:
            raise ValueError(f'linear_attention: {name} is on {t.device}, v on {v.device}')
    if qk.device != v.device:
        raise ValueError(f'linear_attention: qk is on {qk.device}, v on {v.device}')


def linear_attention(qk, v, hw, *, feature_map='elu', rope=True, norm='denominator', gate=None, shortcut=None,
                     lepe_weight=None, lepe_bias=None, shared_qk=False, qk_order='qk', backend=None):
    """Non-causal linear attention over an H x W token grid; arguments and settings in the module docstring.

    The defaults are MLLA's op: ELU+1, 2-D RoPE in the numerator, the mean-k denominator, one q/k per head.
    """
    options = dict(feature_map=feature_map, rope=rope, norm=norm, gate=gate, shortcut=shortcut,
                   lepe_weight=lepe_weight, lepe_bias=lepe_bias, shared_qk=shared_qk, qk_order=qk_order)
    check_inputs(qk, v, hw, **options)
    hw = (int(hw[0]), int(hw[1]))
    if select_backend('linear_attention', backend, v.device) == 'triton':
        from .triton import linear_attention_triton
        return linear_attention_triton(qk, v, hw, **options)
    return linear_attention_reference(qk, v, hw, **options)


__all__ = ['linear_attention', 'linear_attention_reference', 'check_inputs', 'SUPPORTED_DTYPES', 'FEATURE_MAPS',
           'NORMS', 'QK_ORDERS']
