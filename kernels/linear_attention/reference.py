"""Generalised non-causal linear attention in plain PyTorch: the ground truth the Triton kernels are tested against.

Per batch b and value head h, tokens n = 1..N of an H x W grid (N = H * W), with q_n, k_n the query / key of head h
(or the one query / key every head shares) and v_n the value of head h:
    Q, K     = phi(q), phi(k)                      phi = ELU + 1 ('elu') or the identity ('none')
    Q~, K~   = RoPE_2d(Q), RoPE_2d(K)              if rope: over all Hk * Dk query/key channels, before the head split
    u_n      = s_n * v_n                           if a gate s is given (per head: a scalar; per channel: a vector)
    S        = sum_n K~_n u_n^T                    (Dk x Dv)
    out_n    = c_n * Q~_n S  +  D * v_n            D only with a shortcut (per head or per channel)
                              +  LePE(v)_n          with a LePE weight: a 3x3 depthwise conv of v on the grid
with c_n = 1 / (N * (Q_n . mean_m K_m + 1e-6))  'denominator' (MLLA: the normaliser uses the un-rotated Q and K),
           1 / N                                 'mean',
           1                                     'none'.
RoPE pairs channels (2i, 2i+1) as complex numbers; pairs i < C/4 rotate by row * theta_i and pairs i >= C/4 by
col * theta_(i - C/4), with theta_j = 10000^(-j / (C/4)) and C = Hk * Dk.
Upstream MLLA writes the 1/N as (K~^T N^-0.5)(v N^-0.5); the product is the same.
"""
import functools

import torch
import torch.nn.functional as F

EPS = 1e-6
ROPE_BASE = 10000.0


@functools.lru_cache(maxsize=64)
def rope_cos_sin(height: int, width: int, channels: int, device: torch.device):
    """cos and sin of the RoPE angles, each [H * W, C / 2] in float32, computed for the runtime size."""
    freqs = channels // 4
    theta = ROPE_BASE ** -(torch.arange(freqs, dtype=torch.float32, device=device) / freqs)
    rows = torch.arange(height, dtype=torch.float32, device=device)
    cols = torch.arange(width, dtype=torch.float32, device=device)
    angles = torch.cat([
        (rows[:, None, None] * theta).expand(height, width, freqs),
        (cols[None, :, None] * theta).expand(height, width, freqs),
    ], dim=-1).reshape(height * width, 2 * freqs)
    return angles.cos(), angles.sin()


def apply_rope_2d(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Rotate [B, N, C] float32 tokens of an H x W grid by the 2-D RoPE of MLLA."""
    cos, sin = rope_cos_sin(height, width, x.shape[-1], x.device)
    real, imag = x[..., 0::2], x[..., 1::2]
    return torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).flatten(-2)


def linear_attention_reference(qk: torch.Tensor, v: torch.Tensor, hw, *, feature_map: str = 'elu',
                               rope: bool = True, norm: str = 'denominator', gate=None, shortcut=None,
                               lepe_weight=None, lepe_bias=None, shared_qk: bool = False,
                               qk_order: str = 'qk') -> torch.Tensor:
    """Same signature and result as ``mlla_mm.kernels.linear_attention`` (whose docstring describes the arguments);
    computes in float32 and returns v's dtype, under autocast too (whose bmm would otherwise run the einsums in
    bf16/fp16: the state and the normaliser must stay float32)."""
    with torch.autocast(v.device.type, enabled=False):
        return _linear_attention_fp32(qk, v, hw, feature_map, rope, norm, gate, shortcut, lepe_weight, lepe_bias,
                                      shared_qk, qk_order)


def _linear_attention_fp32(qk, v, hw, feature_map, rope, norm, gate, shortcut, lepe_weight, lepe_bias, shared_qk,
                           qk_order):
    batch, tokens, heads, _ = v.shape
    height, width = hw
    dtype = v.dtype
    qk_heads = 1 if shared_qk else heads
    half = qk.shape[-1] // 2
    first, second = qk.float().split(half, dim=-1)
    q, k = (first, second) if qk_order == 'qk' else (second, first)
    if feature_map == 'elu':
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
    q_num, k_num = (apply_rope_2d(q, height, width), apply_rope_2d(k, height, width)) if rope else (q, k)
    head_view = (batch, tokens, qk_heads, half // qk_heads)
    q, k, q_num, k_num = (t.view(head_view) for t in (q, k, q_num, k_num))
    # 'bnhd': a query / key per head; 'bnd': one query / key shared by every value head.
    qk_spec = 'bnhd'
    if shared_qk:
        q, k, q_num, k_num = (t[:, :, 0] for t in (q, k, q_num, k_num))
        qk_spec = 'bnd'
    v = v.float()
    u = v if gate is None else v * (gate.float()[..., None] if gate.dim() == 3 else gate.float())
    kv = torch.einsum(f'{qk_spec},bnhe->bhde', k_num, u)
    if norm in ('denominator', 'mean'):
        kv = kv / tokens
    out = torch.einsum(f'{qk_spec},bhde->bnhe', q_num, kv)
    if norm == 'denominator':
        z = 1.0 / (torch.einsum(f'{qk_spec},b{qk_spec[2:]}->{qk_spec[:-1]}', q, k.mean(dim=1)) + EPS)
        out = out * (z[:, :, None, None] if shared_qk else z[..., None])
    if shortcut is not None:
        out = out + v * (shortcut.float()[:, None] if shortcut.dim() == 1 else shortcut.float())
    if lepe_weight is not None:
        grid = v.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        lepe = F.conv2d(grid, lepe_weight.float(), None if lepe_bias is None else lepe_bias.float(), padding=1,
                        groups=grid.shape[1])
        out = out + lepe.permute(0, 2, 3, 1).reshape(out.shape)
    return out.to(dtype).contiguous()
