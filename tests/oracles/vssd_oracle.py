"""An independent, functional VSSD forward written from ../shared/reference/mambavision_vssd.md section 2, in the
upstream layout: tokens [B, L, C], NCHW convolutions through reshapes, NC-SSD as the two matmuls KV = B^T (x * s)
and y = C KV per head, and softmax attention written out (scores, softmax, weighted sum). It reads weights straight
from an upstream-layout state dict (``upstream_state_dict``, built from the documented key list and shapes, not from
our model), so agreeing with it checks both the key layout and the maths of mlla_mm.models.vssd.
"""
import torch
import torch.nn.functional as F

from tests.upstream_keys import merging_keys, stem_keys
from tests.upstream_oracle import merging_forward, stem_forward


def upstream_state_dict(embed_dim, depths, num_heads, d_state, layout='classification', num_classes=1000, seed=0):
    """Random weights under upstream's keys (reference section 2.4). layout: 'classification' (trunk, norm, head) or
    'backbone' (MM_VSSD: the trunk plus outnorm0..3, no norm or head)."""
    gen = torch.Generator().manual_seed(seed)
    w = lambda *shape, std=0.05: std * torch.randn(*shape, generator=gen)  # noqa: E731
    sd = stem_keys(embed_dim, w, gen)
    for stage, depth in enumerate(depths):
        c = embed_dim * 2 ** stage
        heads = num_heads[stage]
        inner = 2 * c
        for j in range(depth):
            p = f'layers.{stage}.blocks.{j}'
            for conv in ('cpe1', 'cpe2'):
                sd[f'{p}.{conv}.weight'] = w(c, 1, 3, 3, std=0.2)
                sd[f'{p}.{conv}.bias'] = w(c)
            for norm in ('norm1', 'norm2'):
                sd[f'{p}.{norm}.weight'] = 1.0 + w(c)
                sd[f'{p}.{norm}.bias'] = w(c)
            if stage < len(depths) - 1:  # NC-SSD
                sd[f'{p}.attn.dt_bias'] = w(heads, std=1.0) - 2.0
                sd[f'{p}.attn.A_log'] = w(heads, std=0.5)
                sd[f'{p}.attn.D'] = 1.0 + w(heads, std=0.3)
                sd[f'{p}.attn.in_proj.weight'] = w(2 * inner + 2 * d_state + heads, c, std=0.1)
                sd[f'{p}.attn.conv2d.weight'] = w(inner + 2 * d_state, 1, 3, 3, std=0.2)
                sd[f'{p}.attn.conv2d.bias'] = w(inner + 2 * d_state)
                sd[f'{p}.attn.norm.weight'] = 1.0 + w(inner)
                sd[f'{p}.attn.norm.bias'] = w(inner)
                sd[f'{p}.attn.out_proj.weight'] = w(c, inner, std=0.1)
            else:  # global softmax attention
                sd[f'{p}.attn.to_qkv.weight'] = w(3 * c, c, std=0.1)
                sd[f'{p}.attn.to_out.weight'] = w(c, c, std=0.1)
                sd[f'{p}.attn.to_out.bias'] = w(c)
            sd[f'{p}.mlp.fc1.weight'] = w(4 * c, c, std=0.1)
            sd[f'{p}.mlp.fc1.bias'] = w(4 * c)
            sd[f'{p}.mlp.fc2.weight'] = w(c, 4 * c, std=0.1)
            sd[f'{p}.mlp.fc2.bias'] = w(c)
        if stage < len(depths) - 1:
            sd.update(merging_keys(f'layers.{stage}.downsample.conv', c, w, gen))
    if layout == 'classification':
        sd['norm.weight'] = 1.0 + w(c)
        sd['norm.bias'] = w(c)
        sd['head.weight'] = w(num_classes, c)
        sd['head.bias'] = w(num_classes)
    elif layout == 'backbone':
        for stage in range(len(depths)):
            sd[f'outnorm{stage}.weight'] = 1.0 + w(embed_dim * 2 ** stage)
            sd[f'outnorm{stage}.bias'] = w(embed_dim * 2 ** stage)
    else:
        raise ValueError(layout)
    return sd


def _dw(sd, prefix, tokens, h, w):
    b, _, c = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, c, h, w)
    return F.conv2d(x, sd[f'{prefix}.weight'], sd[f'{prefix}.bias'], 1, 1, 1, c).flatten(2).transpose(1, 2)


def _layer_norm(sd, prefix, x):
    return F.layer_norm(x, (x.shape[-1],), sd[f'{prefix}.weight'], sd[f'{prefix}.bias'], 1e-5)


def _nc_ssd(sd, p, u, h, w, heads, d_state):
    b, n, c = u.shape
    inner = 2 * c
    proj = u @ sd[f'{p}.in_proj.weight'].t()
    z, xbc, dt = proj[..., :inner], proj[..., inner:2 * inner + 2 * d_state], proj[..., 2 * inner + 2 * d_state:]
    xbc = F.silu(_dw(sd, f'{p}.conv2d', xbc, h, w))
    x, key, query = xbc[..., :inner], xbc[..., inner:inner + d_state], xbc[..., inner + d_state:]
    weight = F.softplus(dt + sd[f'{p}.dt_bias']) * torch.exp(sd[f'{p}.A_log'])          # (b, n, heads)
    v = x.reshape(b, n, heads, inner // heads).permute(0, 2, 1, 3)                     # (b, heads, n, P)
    kv = key[:, None].transpose(-2, -1) @ (v * weight.transpose(1, 2)[..., None])       # (b, heads, N, P)
    y = query[:, None] @ kv + v * sd[f'{p}.D'][None, :, None, None]
    y = y.permute(0, 2, 1, 3).reshape(b, n, inner)
    return (_layer_norm(sd, f'{p}.norm', y) * z) @ sd[f'{p}.out_proj.weight'].t()


def _softmax_attention(sd, p, u, heads):
    b, n, c = u.shape
    q, k, v = (u @ sd[f'{p}.to_qkv.weight'].t()).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
    return out @ sd[f'{p}.to_out.weight'].t() + sd[f'{p}.to_out.bias']


def _block(sd, p, x, h, w, heads, d_state, softmax):
    x = x + _dw(sd, f'{p}.cpe1', x, h, w)
    u = _layer_norm(sd, f'{p}.norm1', x)
    x = x + (_softmax_attention(sd, f'{p}.attn', u, heads) if softmax
             else _nc_ssd(sd, f'{p}.attn', u, h, w, heads, d_state))
    x = x + _dw(sd, f'{p}.cpe2', x, h, w)
    y = _layer_norm(sd, f'{p}.norm2', x)
    y = F.gelu(y @ sd[f'{p}.mlp.fc1.weight'].t() + sd[f'{p}.mlp.fc1.bias'])
    return x + y @ sd[f'{p}.mlp.fc2.weight'].t() + sd[f'{p}.mlp.fc2.bias']


def vssd_forward(sd, images, depths, num_heads, d_state):
    """Eval-mode forward of an upstream-layout state dict on ``images`` [B, 3, H, W].

    Returns (stage outputs before downsampling as NCHW maps, normalised by ``outnorm{i}`` when the state dict has
    them; logits when it has a head, else None)."""
    x = stem_forward(sd, images)
    b, _, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    outs = []
    for i, depth in enumerate(depths):
        last = i == len(depths) - 1
        for j in range(depth):
            x = _block(sd, f'layers.{i}.blocks.{j}', x, h, w, num_heads[i], d_state, softmax=last)
        out = _layer_norm(sd, f'outnorm{i}', x) if f'outnorm{i}.weight' in sd else x
        outs.append(out.transpose(1, 2).reshape(b, -1, h, w))
        if not last:
            y = merging_forward(sd, f'layers.{i}.downsample.conv', x.transpose(1, 2).reshape(b, -1, h, w))
            h, w = y.shape[-2:]
            x = y.flatten(2).transpose(1, 2)
    logits = None
    if 'head.weight' in sd:
        logits = _layer_norm(sd, 'norm', x).mean(dim=1) @ sd['head.weight'].t() + sd['head.bias']
    return outs, logits
