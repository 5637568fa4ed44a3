"""MLLA linear attention in plain PyTorch: the ground truth that the Triton kernel is tested against.

Math (upstream MLLA, per batch b and head h, tokens n = 1..N on an H x W grid, N = H * W):
    q, k       = ELU(q) + 1, ELU(k) + 1                     positive feature map
    q~, k~     = RoPE_2d(q), RoPE_2d(k)                      over all C = heads * D channels, before the head split
    z_n        = 1 / (q_n . mean_m(k_m) + 1e-6)               normaliser from the non-RoPE q and k
    kv         = sum_m k~_m v_m^T / N                         (upstream: (k~ * N^-0.5)^T @ (v * N^-0.5))
    out_n      = (q~_n @ kv) * z_n
RoPE pairs channels (2i, 2i+1) as complex numbers; pairs i < C/4 rotate by row * theta_i and pairs i >= C/4 by
col * theta_(i - C/4), with theta_j = 10000^(-j / (C/4)).
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


def linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw) -> torch.Tensor:
    """q, k: [B, N, H, D] before the feature map; v: [B, N, H, D]; hw = (height, width). Returns [B, N, H, D].

    Computes in float32 and returns the input dtype.
    """
    batch, tokens, heads, dim = q.shape
    height, width = hw
    dtype = q.dtype
    q = F.elu(q.float()) + 1.0
    k = F.elu(k.float()) + 1.0
    v = v.float()
    q_rope = apply_rope_2d(q.reshape(batch, tokens, heads * dim), height, width).view(batch, tokens, heads, dim)
    k_rope = apply_rope_2d(k.reshape(batch, tokens, heads * dim), height, width).view(batch, tokens, heads, dim)
    z = 1.0 / (torch.einsum('bnhd,bhd->bnh', q, k.mean(dim=1)) + EPS)
    kv = torch.einsum('bnhd,bnhe->bhde', k_rope, v) / tokens
    out = torch.einsum('bnhd,bhde->bnhe', q_rope, kv) * z[..., None]
    return out.to(dtype).contiguous()
