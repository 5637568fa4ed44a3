"""An independent, functional MLLA backbone forward written from ../shared/reference/mlla.md, in the upstream
layout: tokens [B, N, C], NCHW convolutions with permutes, complex-number RoPE from a (H, W, C/2, 2) rotation table,
and the n^-0.5 scaling of k_rope and v. It reads weights straight from an upstream-layout state dict, so agreeing
with it checks both our key layout and our (channels-last, real-arithmetic) maths.
"""
import torch
import torch.nn.functional as F


def conv_layer(sd, prefix, x, stride=1, padding=0, groups=1, norm=True, act=True):
    """Upstream's ConvLayer (conv, BatchNorm in eval mode, ReLU) on an NCHW map."""
    x = F.conv2d(x, sd[f'{prefix}.conv.weight'], sd.get(f'{prefix}.conv.bias'), stride, padding, 1, groups)
    if norm:
        x = F.batch_norm(x, sd[f'{prefix}.norm.running_mean'], sd[f'{prefix}.norm.running_var'],
                         sd[f'{prefix}.norm.weight'], sd[f'{prefix}.norm.bias'], False, 0.0, 1e-5)
    return F.relu(x) if act else x


def stem_forward(sd, images):
    """MLLA's stem (``patch_embed``; VSSD and Spatial-Mamba reuse it): NCHW images to NCHW maps at stride 4."""
    x = conv_layer(sd, 'patch_embed.conv1', images, stride=2, padding=1)
    x = conv_layer(sd, 'patch_embed.conv2.1', conv_layer(sd, 'patch_embed.conv2.0', x, padding=1), padding=1,
                   act=False) + x
    x = conv_layer(sd, 'patch_embed.conv3.0', x, stride=2, padding=1)
    return conv_layer(sd, 'patch_embed.conv3.1', x, act=False)


def merging_forward(sd, prefix, x):
    """MLLA's patch merging (1x1 conv, 3x3 depthwise stride 2, 1x1 conv + BatchNorm) on an NCHW map."""
    x = conv_layer(sd, f'{prefix}.0', x, norm=False)
    x = conv_layer(sd, f'{prefix}.1', x, stride=2, padding=1, groups=x.shape[1], norm=False)
    return conv_layer(sd, f'{prefix}.2', x, act=False)


def _rotations(h, w, c):
    k_max = c // 4
    theta = 1.0 / (10000 ** (torch.arange(k_max) / k_max))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    angles = torch.cat([rows[..., None] * theta, cols[..., None] * theta], dim=-1)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)  # (h, w, c/2, 2)


def _rope(x, rotations):  # x: (b, h, w, c)
    x = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(torch.view_as_complex(rotations) * x).flatten(-2)


def _dw(sd, prefix, x_tokens, b, h, w, c):
    x = x_tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)
    return F.conv2d(x, sd[f'{prefix}.weight'], sd[f'{prefix}.bias'], 1, 1, 1, c).flatten(2).permute(0, 2, 1)


def _block(sd, p, x, h, w, num_heads):
    b, n, c = x.shape
    d = c // num_heads
    x = x + _dw(sd, f'{p}.cpe1', x, b, h, w, c)
    shortcut = x
    x = F.layer_norm(x, (c,), sd[f'{p}.norm1.weight'], sd[f'{p}.norm1.bias'])
    gate = F.silu(F.linear(x, sd[f'{p}.act_proj.weight'], sd[f'{p}.act_proj.bias']))
    x = F.linear(x, sd[f'{p}.in_proj.weight'], sd[f'{p}.in_proj.bias'])
    x = F.silu(_dw(sd, f'{p}.dwc', x, b, h, w, c))
    # linear attention
    qk = F.linear(x, sd[f'{p}.attn.qk.weight'], sd[f'{p}.attn.qk.bias']).reshape(b, n, 2, c).permute(2, 0, 1, 3)
    q, k, v = F.elu(qk[0]) + 1.0, F.elu(qk[1]) + 1.0, x
    rot = _rotations(h, w, c)
    heads = lambda t: t.reshape(b, n, num_heads, d).permute(0, 2, 1, 3)  # noqa: E731
    q_rope = heads(_rope(q.reshape(b, h, w, c), rot))
    k_rope = heads(_rope(k.reshape(b, h, w, c), rot))
    q, k, v = heads(q), heads(k), heads(v)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k_rope.transpose(-2, -1) * n ** -0.5) @ (v * n ** -0.5)
    attn = (q_rope @ kv * z).transpose(1, 2).reshape(b, n, c)
    attn = attn + _dw(sd, f'{p}.attn.lepe', v.transpose(1, 2).reshape(b, n, c), b, h, w, c)
    x = shortcut + F.linear(attn * gate, sd[f'{p}.out_proj.weight'], sd[f'{p}.out_proj.bias'])
    x = x + _dw(sd, f'{p}.cpe2', x, b, h, w, c)
    y = F.layer_norm(x, (c,), sd[f'{p}.norm2.weight'], sd[f'{p}.norm2.bias'])
    y = F.linear(F.gelu(F.linear(y, sd[f'{p}.mlp.fc1.weight'], sd[f'{p}.mlp.fc1.bias'])),
                 sd[f'{p}.mlp.fc2.weight'], sd[f'{p}.mlp.fc2.bias'])
    return x + y


def upstream_backbone_forward(sd, images, depths, num_heads, out_indices=(0, 1, 2, 3)):
    """NCHW outputs of the upstream det/seg backbone (eval mode) for ``images`` [B, 3, H, W]."""
    _, _, height, width = images.shape
    x = F.pad(images, (0, -width % 4, 0, -height % 4))
    x = stem_forward(sd, x)
    b, c, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    outs = []
    for i, depth in enumerate(depths):
        c = x.shape[-1]
        for j in range(depth):
            x = _block(sd, f'layers.{i}.blocks.{j}', x, h, w, num_heads[i])
        if i in out_indices:
            out = F.layer_norm(x, (c,), sd[f'norm{i}.weight'], sd[f'norm{i}.bias'])
            outs.append(out.reshape(b, h, w, c).permute(0, 3, 1, 2))
        if i < len(depths) - 1:
            y = F.pad(x.reshape(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2)).permute(0, 3, 1, 2)
            y = merging_forward(sd, f'layers.{i}.downsample.conv', y)
            h, w = y.shape[-2:]
            x = y.flatten(2).transpose(1, 2)
    return outs
