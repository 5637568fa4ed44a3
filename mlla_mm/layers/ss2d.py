"""VMamba's channel-first building blocks: LayerNorm2d, Linear2d, the MLP and the SS2D mixer (``v05_noz``).

Parameter names and shapes are upstream's (reference/vmamba.md §1.8), so ImageNet checkpoints load by key.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlla_mm.kernels.cross_scan import cross_merge, cross_scan
from mlla_mm.kernels.selective_scan import selective_scan

K_GROUPS = 4  # scan routes: row-major, column-major and their reverses


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (keys ``weight``, ``bias``), computed in the input's dtype, so
    the scan's float32 output is normalised in float32 even in a half-precision model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight.to(x.dtype),
                         self.bias.to(x.dtype), self.eps)
        return x.permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A Linear applied to the channels of an NCHW map as a 1x1 conv; the weight keeps nn.Linear's [out, in]
    shape, as upstream stores it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class Mlp2d(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout on NCHW maps (keys ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SS2D(nn.Module):
    """2-D selective scan, upstream ``SS2Dv2`` with forward type ``v05_noz``: NCHW [B, C, H, W] -> [B, C, H, W].

    in_proj (C -> d_inner, no gate) -> depthwise 3x3 conv -> SiLU -> cross-scan into 4 routes -> per-route x_proj
    (grouped 1x1 conv) into (dt, B, C) -> dt_proj -> selective scan (softplus(dt + bias), float32 output) ->
    cross-merge -> out_norm -> out_proj.

    Args:
        dim: channels C.
        d_state: SSM state size N (1 in the released v2 models).
        ssm_ratio: d_inner = int(ssm_ratio * C).
        dt_rank: rank R of the time-step projection; 'auto' is ceil(C / 16).
        d_conv: depthwise conv kernel size.
        conv_bias: bias on the depthwise conv.
        dropout: after out_proj.
        backend: kernel backend for the scan ops ('auto' | 'triton' | 'torch'; None reads MLLA_MM_BACKEND).
    """

    def __init__(self, dim, d_state=1, ssm_ratio=1.0, dt_rank='auto', d_conv=3, conv_bias=False, dropout=0.0,
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, backend=None):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.d_inner = d_inner
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else dt_rank
        self.backend = backend
        self.in_proj = Linear2d(dim, d_inner, bias=False)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner,
                                bias=conv_bias)
        self.x_proj_weight = nn.Parameter(torch.empty(K_GROUPS, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K_GROUPS, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(K_GROUPS, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K_GROUPS * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(K_GROUPS * d_inner))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4):
        """Upstream's ``mamba_init`` v0 (reference/vmamba.md §1.5)."""
        # x_proj starts as K nn.Linear layers upstream: their default bound is 1 / sqrt(fan_in).
        nn.init.uniform_(self.x_proj_weight, -self.d_inner ** -0.5, self.d_inner ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        # Bias = inverse softplus of dt ~ logUniform[dt_min, dt_max], so the scan starts with those time steps.
        dt = torch.exp(torch.rand(K_GROUPS, self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(
            K_GROUPS * self.d_inner, 1))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        length = height * width
        rank, n_state = self.dt_rank, self.d_state
        x_inner = self.act(self.conv2d(self.in_proj(x)))
        routes = cross_scan(x_inner, backend=self.backend).view(batch, K_GROUPS * self.d_inner, length)
        # Per-route projections as grouped 1x1 convs (upstream v05 'no_einsum').
        x_dbl = F.conv1d(routes, self.x_proj_weight.view(-1, self.d_inner, 1), groups=K_GROUPS)
        dts, Bs, Cs = x_dbl.view(batch, K_GROUPS, rank + 2 * n_state, length).split([rank, n_state, n_state], dim=2)
        dts = F.conv1d(dts.reshape(batch, K_GROUPS * rank, length), self.dt_projs_weight.view(-1, rank, 1),
                       groups=K_GROUPS)
        y = selective_scan(routes, dts, -torch.exp(self.A_logs.float()), Bs, Cs, self.Ds,
                           delta_bias=self.dt_projs_bias.view(-1), delta_softplus=True, output_fp32=True,
                           backend=self.backend)
        y = cross_merge(y.view(batch, K_GROUPS, self.d_inner, length), height, width, backend=self.backend)
        y = self.out_norm(y).to(x.dtype)
        return self.dropout(self.out_proj(y))

    def extra_repr(self) -> str:
        return f'd_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, backend={self.backend}'
