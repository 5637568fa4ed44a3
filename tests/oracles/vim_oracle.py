"""Vim in upstream's layout, written from ../shared/reference/vim_mambaout.md (A3, A5, A6, A7) and not from our
model: the state-dict key list and shapes of upstream's ``VisionMamba`` (classification) and ``VisionMambaSeg``
(segmentation backbone), and a functional forward of each that reads such a state dict.

The forward follows upstream's data path literally: channels-first ``xz = in_proj.weight @ h``, the causal conv1d
as upstream's padded conv truncated to L, the two directions each gated by its own (flipped) z, a token-by-token
selective scan, the fused add + RMSNorm with a float32 residual, and the fpn modules applied to [B, C, Hp, Wp]
maps. The only departure is that the patch grid is read from the patch conv (upstream's segmentation backbone
assumes a square one), so rectangular inputs can be compared.
"""
import math

import torch
import torch.nn.functional as F


def upstream_vim_shapes(embed_dim, depth, grid=(14, 14), layout='classification', num_classes=1000, d_state=16):
    """{key: shape}. layout 'classification': the 415 keys of the released files (7 + 17 per block), pos_embed with
    the middle cls slot; 'segmentation': VisionMambaSeg's (no cls_token, no head, pos_embed of the patches only, plus
    the fpn1/fpn2 weights and BatchNorm buffers)."""
    inner, rank = 2 * embed_dim, math.ceil(embed_dim / 16)
    patches = grid[0] * grid[1]
    shapes = {'patch_embed.proj.weight': (embed_dim, 3, 16, 16), 'patch_embed.proj.bias': (embed_dim,),
              'norm_f.weight': (embed_dim,)}
    for i in range(depth):
        p = f'layers.{i}.'
        shapes.update({
            p + 'mixer.A_log': (inner, d_state), p + 'mixer.D': (inner,),
            p + 'mixer.A_b_log': (inner, d_state), p + 'mixer.D_b': (inner,),
            p + 'mixer.in_proj.weight': (2 * inner, embed_dim),
            p + 'mixer.out_proj.weight': (embed_dim, inner),
            p + 'norm.weight': (embed_dim,),
        })
        for s in ('', '_b'):
            shapes.update({
                p + f'mixer.conv1d{s}.weight': (inner, 1, 4), p + f'mixer.conv1d{s}.bias': (inner,),
                p + f'mixer.x_proj{s}.weight': (rank + 2 * d_state, inner),
                p + f'mixer.dt_proj{s}.weight': (inner, rank), p + f'mixer.dt_proj{s}.bias': (inner,),
            })
    if layout == 'classification':
        shapes.update({'cls_token': (1, 1, embed_dim), 'pos_embed': (1, patches + 1, embed_dim),
                       'head.weight': (num_classes, embed_dim), 'head.bias': (num_classes,)})
    elif layout == 'segmentation':
        shapes['pos_embed'] = (1, patches, embed_dim)
        for key in ('fpn1.0.weight', 'fpn1.3.weight', 'fpn2.0.weight'):
            shapes[key] = (embed_dim, embed_dim, 2, 2)
        for key in ('fpn1.0.bias', 'fpn1.3.bias', 'fpn2.0.bias', 'fpn1.1.weight', 'fpn1.1.bias',
                    'fpn1.1.running_mean', 'fpn1.1.running_var'):
            shapes[key] = (embed_dim,)
        shapes['fpn1.1.num_batches_tracked'] = ()
    else:
        raise ValueError(f'unknown layout {layout!r}')
    return shapes


def upstream_vim_state_dict(embed_dim, depth, grid=(14, 14), layout='classification', num_classes=1000, seed=0):
    """Random weights of plausible scale in upstream's layout (A_log near log(1..16), D near 1, dt biases of
    softplus^-1 of a small dt, positive BatchNorm variances), so the scans neither vanish nor blow up."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in upstream_vim_shapes(embed_dim, depth, grid, layout, num_classes).items():
        noise = torch.randn(shape, generator=generator)
        if key.endswith(('A_log', 'A_b_log')):
            value = torch.log(torch.arange(1, shape[1] + 1, dtype=torch.float32)) + 0.1 * noise
        elif key.endswith(('.D', '.D_b', 'norm.weight', 'norm_f.weight', 'fpn1.1.weight')):
            value = 1.0 + 0.1 * noise
        elif 'dt_proj' in key and key.endswith('bias'):
            dt = 0.01 + 0.05 * torch.rand(shape, generator=generator)
            value = dt + torch.log(-torch.expm1(-dt))
        elif key.endswith('running_var'):
            value = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith('num_batches_tracked'):
            value = torch.tensor(7)
        elif key.endswith(('in_proj.weight', 'x_proj.weight', 'x_proj_b.weight', 'out_proj.weight')):
            value = noise / math.sqrt(shape[-1])
        else:
            value = 0.2 * noise
        state_dict[key] = value
    return state_dict


def _rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _scan(u, delta, A, B, C, D, delta_bias):
    """Token-by-token selective scan. u, delta [b, e, l]; A [e, n]; B, C [b, n, l]; D, delta_bias [e]."""
    delta = F.softplus(delta + delta_bias[:, None])
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        state = torch.exp(delta[:, :, t, None] * A) * state + (delta[:, :, t] * u[:, :, t])[..., None] * \
            B[:, None, :, t]
        ys.append((state * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1) + D[:, None] * u


def _direction(sd, p, xz, suffix):
    """Upstream's mamba_inner_fn_no_out_proj: xz [b, 2e, l] -> SiLU(z) * (scan(...) + D u), [b, e, l]."""
    length = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    conv_w = sd[f'{p}conv1d{suffix}.weight']
    x = F.silu(F.conv1d(x, conv_w, sd[f'{p}conv1d{suffix}.bias'], padding=conv_w.shape[-1] - 1,
                        groups=x.shape[1])[..., :length])
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, x.shape[1]), sd[f'{p}x_proj{suffix}.weight'])  # [(b l), r+2n]
    dt_w = sd[f'{p}dt_proj{suffix}.weight']
    rank, n = dt_w.shape[1], (x_dbl.shape[1] - dt_w.shape[1]) // 2
    delta = (dt_w @ x_dbl[:, :rank].t()).reshape(x.shape[1], -1, length).transpose(0, 1)
    b = x_dbl[:, rank:rank + n].reshape(-1, length, n).transpose(1, 2)
    c = x_dbl[:, -n:].reshape(-1, length, n).transpose(1, 2)
    a_key = 'A_log' if suffix == '' else 'A_b_log'
    y = _scan(x, delta, -torch.exp(sd[p + a_key]), b, c, sd[p + ('D' + suffix)], sd[f'{p}dt_proj{suffix}.bias'])
    return y * F.silu(z)


def _mixer(sd, p, h):
    length = h.shape[1]
    xz = (sd[p + 'in_proj.weight'] @ h.reshape(-1, h.shape[2]).t()).reshape(-1, h.shape[0], length).transpose(0, 1)
    out = _direction(sd, p, xz, '')
    out_b = _direction(sd, p, xz.flip(-1), '_b')
    return F.linear((out + out_b.flip(-1)).transpose(1, 2) / 2, sd[p + 'out_proj.weight'])


def _blocks(sd, x, depth, taps=()):
    """The 24-block loop (eval): returns (last mixer output, residual, mixer outputs of the blocks in taps)."""
    residual, hidden, tapped = None, x, []
    for i in range(depth):
        residual = hidden.float() if residual is None else residual + hidden
        hidden = _mixer(sd, f'layers.{i}.mixer.', _rms_norm(residual, sd[f'layers.{i}.norm.weight']))
        if i in taps:
            tapped.append(hidden)
    return hidden, residual, tapped


def upstream_classifier_forward(sd, images, depth):
    """Logits of ``VisionMamba`` (middle cls token, eval) for images whose patch grid is the pos_embed's."""
    x = F.conv2d(images, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=16)
    x = x.flatten(2).transpose(1, 2)
    m = x.shape[1]
    position = m // 2
    x = torch.cat([x[:, :position], sd['cls_token'].expand(x.shape[0], -1, -1), x[:, position:]], dim=1)
    x = x + sd['pos_embed']
    hidden, residual, _ = _blocks(sd, x, depth)
    features = _rms_norm(residual + hidden, sd['norm_f.weight'])
    return F.linear(features[:, position], sd['head.weight'], sd['head.bias'])


def upstream_seg_backbone_forward(sd, images, depth, out_indices):
    """The four NCHW maps of ``VisionMambaSeg`` (if_cls_token=False, if_fpn=True, eval; BatchNorm with its running
    statistics) for images whose patch grid is the pos_embed's."""
    x = F.conv2d(images, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=16)
    hp, wp = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2) + sd['pos_embed']
    _, _, tapped = _blocks(sd, x, depth, taps=out_indices)
    maps = [t.permute(0, 2, 1).reshape(x.shape[0], -1, hp, wp) for t in tapped]
    fpn1 = F.conv_transpose2d(maps[0], sd['fpn1.0.weight'], sd['fpn1.0.bias'], stride=2)
    fpn1 = F.batch_norm(fpn1, sd['fpn1.1.running_mean'], sd['fpn1.1.running_var'], sd['fpn1.1.weight'],
                        sd['fpn1.1.bias'], False, 0.0, 1e-5)
    fpn1 = F.conv_transpose2d(F.gelu(fpn1), sd['fpn1.3.weight'], sd['fpn1.3.bias'], stride=2)
    fpn2 = F.conv_transpose2d(maps[1], sd['fpn2.0.weight'], sd['fpn2.0.bias'], stride=2)
    return [fpn1, fpn2, maps[2], F.max_pool2d(maps[3], 2, 2)]


def resample_classifier_pos_embed(pos_embed, grid):
    """The position embedding of a middle-cls classifier for another patch grid, as the reference recommends (A6):
    take out the cls slot at index M // 2, resize the square patch grid bicubically, put the cls slot back at the
    middle of the new grid."""
    m = pos_embed.shape[1] - 1
    side = math.isqrt(m)
    cls = pos_embed[:, m // 2:m // 2 + 1]
    patches = torch.cat([pos_embed[:, :m // 2], pos_embed[:, m // 2 + 1:]], dim=1)
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
    middle = grid[0] * grid[1] // 2
    return torch.cat([patches[:, :middle], cls, patches[:, middle:]], dim=1)
