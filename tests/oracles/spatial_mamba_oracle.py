"""An independent, functional Spatial-Mamba forward written from ../shared/reference/spatial_mamba.md sections 1-3, in
the upstream layout: channels-last tokens, NCHW convolutions through permutes, the selective scan as a token-by-token
float32 loop, and the state fusion as upstream's *eval* path: the three kernels merged into one 11 x 11 depthwise
kernel (25 non-zero taps, the centre summed) applied to the states replicate-padded by 5 through clamped indices. It
reads weights straight from an upstream-layout state dict (``upstream_state_dict``, built from the documented keys
and shapes, not from our model), so agreeing with it checks the key layout, the scan-as-states trick and the
state-fusion op (which computes the three dilated convolutions separately) of mlla_mm.models.spatial_mamba.
"""
import math

import torch
import torch.nn.functional as F

from tests.upstream_keys import merging_keys, stem_keys
from tests.upstream_oracle import merging_forward, stem_forward


def upstream_state_dict(embed_dim, depths, layout='classification', num_classes=1000, seed=0):
    """Random weights under upstream's keys (reference section 3). layout: 'classification' (trunk, norm, head) or
    'backbone' (MM_SpatialMamba: the trunk plus outnorm0..3, no norm or head). The state-fusion kernels and alpha are
    random (upstream initialises them to ones, which would hide a transposed or flipped kernel)."""
    gen = torch.Generator().manual_seed(seed)
    w = lambda *shape, std=0.05: std * torch.randn(*shape, generator=gen)  # noqa: E731
    sd = stem_keys(embed_dim, w, gen)
    dims = [embed_dim * 2 ** i for i in range(len(depths))]
    for i, (dim, depth) in enumerate(zip(dims, depths)):
        inner, rank = 2 * dim, math.ceil(dim / 16)
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}'
            for cpe in ('cpe1', 'cpe2'):
                sd[f'{p}.{cpe}.weight'] = w(dim, 1, 3, 3, std=0.2)
                sd[f'{p}.{cpe}.bias'] = w(dim)
            for ln in ('ln_1', 'ln_2'):
                sd[f'{p}.{ln}.weight'] = 1.0 + w(dim, std=0.1)
                sd[f'{p}.{ln}.bias'] = w(dim)
            a = f'{p}.self_attention'
            sd[f'{a}.x_proj_weight'] = w(rank + 2, inner, std=inner ** -0.5)
            sd[f'{a}.dt_projs_weight'] = w(inner, rank, std=rank ** -0.5)
            sd[f'{a}.dt_projs_bias'] = -4.0 + w(inner, std=1.0)
            sd[f'{a}.A_logs'] = w(inner, 1, std=0.5)
            sd[f'{a}.Ds'] = 1.0 + w(inner, std=0.2)
            sd[f'{a}.in_proj.weight'] = w(2 * inner, dim, std=dim ** -0.5)
            sd[f'{a}.conv2d.weight'] = w(inner, 1, 3, 3, std=0.3)
            sd[f'{a}.conv2d.bias'] = w(inner)
            for kernel in ('kernel_3', 'kernel_3_1', 'kernel_3_2'):
                sd[f'{a}.state_fusion.{kernel}'] = w(inner, 1, 3, 3, std=0.3)
            sd[f'{a}.state_fusion.alpha'] = 1.0 + w(3, std=0.3)
            sd[f'{a}.out_norm.weight'] = 1.0 + w(inner, std=0.1)
            sd[f'{a}.out_norm.bias'] = w(inner)
            sd[f'{a}.out_proj.weight'] = w(dim, inner, std=0.5 * inner ** -0.5)
            sd[f'{p}.mlp.fc1.weight'] = w(4 * dim, dim, std=dim ** -0.5)
            sd[f'{p}.mlp.fc1.bias'] = w(4 * dim)
            sd[f'{p}.mlp.fc2.weight'] = w(dim, 4 * dim, std=0.5 * (4 * dim) ** -0.5)
            sd[f'{p}.mlp.fc2.bias'] = w(dim)
        if i < len(depths) - 1:
            sd.update(merging_keys(f'layers.{i}.downsample.conv', dim, w, gen))
    if layout == 'classification':
        sd['norm.weight'] = 1.0 + w(dims[-1], std=0.1)
        sd['norm.bias'] = w(dims[-1])
        sd['head.weight'] = w(num_classes, dims[-1])
        sd['head.bias'] = w(num_classes)
    elif layout == 'backbone':
        for i, dim in enumerate(dims):
            sd[f'outnorm{i}.weight'] = 1.0 + w(dim, std=0.1)
            sd[f'outnorm{i}.bias'] = w(dim)
    else:
        raise ValueError(f'unknown layout {layout!r}')
    return sd


def _merged_fusion_kernel(sd, a):
    """Upstream's eval merge: an 11 x 11 kernel with alpha_k * K_k at offsets {-d, 0, d}^2 for d = 1, 3, 5."""
    alpha = sd[f'{a}.state_fusion.alpha']
    kernels = [sd[f'{a}.state_fusion.{name}'] for name in ('kernel_3', 'kernel_3_1', 'kernel_3_2')]
    merged = torch.zeros(kernels[0].shape[0], 1, 11, 11)
    for k, dilation in enumerate((1, 3, 5)):
        for i in range(3):
            for j in range(3):
                merged[:, 0, 5 + (i - 1) * dilation, 5 + (j - 1) * dilation] += alpha[k] * kernels[k][:, 0, i, j]
    return merged


def _clamp_pad(x, pad):
    """Replicate padding written as clamped indices (what upstream's dwconv2d CUDA kernel does)."""
    height, width = x.shape[-2:]
    rows = torch.arange(-pad, height + pad).clamp(0, height - 1)
    cols = torch.arange(-pad, width + pad).clamp(0, width - 1)
    return x[:, :, rows][:, :, :, cols]


def _ssm(sd, a, x):  # x: (b, h, w, c)
    b, h, w, c = x.shape
    inner, length = 2 * c, h * w
    rank = math.ceil(c / 16)
    x, z = (x @ sd[f'{a}.in_proj.weight'].t()).chunk(2, dim=-1)
    x = x.permute(0, 3, 1, 2)
    u = F.silu(F.conv2d(x, sd[f'{a}.conv2d.weight'], sd[f'{a}.conv2d.bias'], 1, 1, 1, inner))
    xs = u.reshape(b, inner, length)
    x_dbl = torch.einsum('cd,bdl->bcl', sd[f'{a}.x_proj_weight'], xs)
    dt, bs, cs = x_dbl[:, :rank], x_dbl[:, rank], x_dbl[:, rank + 1]
    delta = F.softplus(torch.einsum('dr,brl->bdl', sd[f'{a}.dt_projs_weight'], dt)
                       + sd[f'{a}.dt_projs_bias'][:, None])
    a_diag = -torch.exp(sd[f'{a}.A_logs'][:, 0])
    state = torch.zeros(b, inner)
    states = []
    for t in range(length):
        state = torch.exp(delta[:, :, t] * a_diag) * state + delta[:, :, t] * bs[:, None, t] * xs[:, :, t]
        states.append(state)
    hs = torch.stack(states, dim=-1).view(b, inner, h, w)
    fused = F.conv2d(_clamp_pad(hs, 5), _merged_fusion_kernel(sd, a), groups=inner).reshape(b, inner, length)
    y = fused * cs[:, None] + xs * sd[f'{a}.Ds'][:, None]
    y = y.view(b, inner, h, w).permute(0, 2, 3, 1)
    y = F.layer_norm(y, (inner,), sd[f'{a}.out_norm.weight'], sd[f'{a}.out_norm.bias'], 1e-5) * F.silu(z)
    return y @ sd[f'{a}.out_proj.weight'].t()


def _cpe(sd, prefix, x):
    c = x.shape[-1]
    return F.conv2d(x.permute(0, 3, 1, 2), sd[f'{prefix}.weight'], sd[f'{prefix}.bias'], 1, 1, 1, c).permute(0, 2, 3, 1)


def _block(sd, p, x):
    c = x.shape[-1]
    x = x + _cpe(sd, f'{p}.cpe1', x)
    x = x + _ssm(sd, f'{p}.self_attention', F.layer_norm(x, (c,), sd[f'{p}.ln_1.weight'], sd[f'{p}.ln_1.bias'], 1e-5))
    x = x + _cpe(sd, f'{p}.cpe2', x)
    y = F.layer_norm(x, (c,), sd[f'{p}.ln_2.weight'], sd[f'{p}.ln_2.bias'], 1e-5)
    y = F.gelu(y @ sd[f'{p}.mlp.fc1.weight'].t() + sd[f'{p}.mlp.fc1.bias'])
    return x + y @ sd[f'{p}.mlp.fc2.weight'].t() + sd[f'{p}.mlp.fc2.bias']


def _downsample(sd, d, x):
    return merging_forward(sd, d, x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def spatial_mamba_forward(sd, images, depths):
    """images (b, 3, H, W) -> (per-stage maps (b, C_i, h_i, w_i) before downsampling, logits or None)."""
    with torch.no_grad():
        x = stem_forward(sd, images).permute(0, 2, 3, 1)
        maps = []
        for i, depth in enumerate(depths):
            for j in range(depth):
                x = _block(sd, f'layers.{i}.blocks.{j}', x)
            maps.append(x.permute(0, 3, 1, 2))
            if i < len(depths) - 1:
                x = _downsample(sd, f'layers.{i}.downsample.conv', x)
        logits = None
        if 'head.weight' in sd:
            c = x.shape[-1]
            pooled = F.layer_norm(x, (c,), sd['norm.weight'], sd['norm.bias'], 1e-5).mean(dim=(1, 2))
            logits = pooled @ sd['head.weight'].t() + sd['head.bias']
    return maps, logits
