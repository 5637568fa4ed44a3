"""An independent, functional MambaVision forward written from ../shared/reference/mambavision_vssd.md §1, reading
weights straight from an upstream-layout state dict (``patch_embed.conv_down.*``, ``levels.i.blocks.j.*``, ...).

It differs from the model on purpose wherever it can: tokens are cut into windows with reshapes (upstream's
window_partition) or, for masked windows, one window at a time by slicing its real region out of the map; the scan is
the per-token S6 recurrence; attention is an explicit softmax. Agreeing with it checks our key layout, the three
parity traps of §1.3 (dt bias twice, bias-free 'same' conv1d, concatenated z branch) and the window routing.
"""
import math

import torch
import torch.nn.functional as F


def _bn(sd, p, x, eps):
    return F.batch_norm(x, sd[f'{p}.running_mean'], sd[f'{p}.running_var'], sd[f'{p}.weight'], sd[f'{p}.bias'],
                        False, 0.0, eps)


def _ln(sd, p, x):
    return F.layer_norm(x, x.shape[-1:], sd[f'{p}.weight'], sd[f'{p}.bias'], 1e-5)


def _linear(sd, p, x):
    return F.linear(x, sd[f'{p}.weight'], sd.get(f'{p}.bias'))


def _s6(u, dt, A, B, C, D):
    """The S6 recurrence token by token: u, dt [b, d, L]; A [d, N]; B, C [b, N, L]; D [d]."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[:, :, t, None] * A) * h + dt[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


def _mixer(sd, p, h):
    """§1.3 on tokens h [b, L, C]."""
    b, length, c = h.shape
    ci, rank, n = c // 2, math.ceil(c / 16), 8
    xz = F.linear(h, sd[f'{p}.in_proj.weight']).transpose(1, 2)
    x, z = xz[:, :ci], xz[:, ci:]
    x = F.silu(F.conv1d(x, sd[f'{p}.conv1d_x.weight'], None, padding='same', groups=ci))
    z = F.silu(F.conv1d(z, sd[f'{p}.conv1d_z.weight'], None, padding='same', groups=ci))
    x_dbl = F.linear(x.transpose(1, 2), sd[f'{p}.x_proj.weight'])
    dt_low, B, C = x_dbl[..., :rank], x_dbl[..., rank:rank + n], x_dbl[..., rank + n:]
    bias = sd[f'{p}.dt_proj.bias']
    dt = F.softplus(F.linear(dt_low, sd[f'{p}.dt_proj.weight']) + 2 * bias).transpose(1, 2)  # the bias, twice
    y = _s6(x, dt, -torch.exp(sd[f'{p}.A_log']), B.transpose(1, 2), C.transpose(1, 2), sd[f'{p}.D'])
    return F.linear(torch.cat([y, z], dim=1).transpose(1, 2), sd[f'{p}.out_proj.weight'])


def _attention(sd, p, x, num_heads):
    b, length, c = x.shape
    qkv = _linear(sd, f'{p}.qkv', x).reshape(b, length, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = torch.softmax(q @ k.transpose(-2, -1) * (c // num_heads) ** -0.5, dim=-1)
    return _linear(sd, f'{p}.proj', (weights @ v).transpose(1, 2).reshape(b, length, c))


def _blocks(sd, p, x, depth, num_heads):
    """The blocks of a transformer stage on window tokens x [b, L, C]."""
    attention_from = depth // 2 + 1 if depth % 2 else depth // 2
    for j in range(depth):
        q = f'{p}.blocks.{j}'
        y = _ln(sd, f'{q}.norm1', x)
        y = _attention(sd, f'{q}.mixer', y, num_heads) if j >= attention_from else _mixer(sd, f'{q}.mixer', y)
        x = x + sd.get(f'{q}.gamma_1', 1.0) * y
        y = _linear(sd, f'{q}.mlp.fc2', F.gelu(_linear(sd, f'{q}.mlp.fc1', _ln(sd, f'{q}.norm2', x))))
        x = x + sd.get(f'{q}.gamma_2', 1.0) * y
    return x


def _windowed(sd, p, x, depth, num_heads, ws, masked):
    """A transformer stage on a map x [B, C, H, W]."""
    b, c, h, w = x.shape
    if masked:
        out = torch.empty_like(x)
        for r in range(0, h, ws):
            for s in range(0, w, ws):
                region = x[:, :, r:r + ws, s:s + ws]
                rh, rw = region.shape[-2:]
                tokens = _blocks(sd, p, region.flatten(2).transpose(1, 2), depth, num_heads)
                out[:, :, r:r + rh, s:s + rw] = tokens.transpose(1, 2).reshape(b, c, rh, rw)
        return out
    x = F.pad(x, (0, -w % ws, 0, -h % ws))
    hp, wp = x.shape[-2:]
    windows = x.view(b, c, hp // ws, ws, wp // ws, ws).permute(0, 2, 4, 3, 5, 1).reshape(-1, ws * ws, c)
    windows = _blocks(sd, p, windows, depth, num_heads)
    x = windows.reshape(b, hp // ws, wp // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hp, wp)
    return x[:, :, :h, :w]


def mambavision_forward(sd, images, depths, num_heads, window_size, masked=True):
    """Stage outputs (NCHW, before downsampling) and logits (when ``sd`` has ``head.*``) of MambaVision in eval mode.

    ``masked=False`` is upstream's unmasked zero padding; ``masked=True`` runs every window on its real tokens only.
    """
    x = F.relu(_bn(sd, 'patch_embed.conv_down.1', F.conv2d(images, sd['patch_embed.conv_down.0.weight'], None, 2, 1),
                   1e-4))
    x = F.relu(_bn(sd, 'patch_embed.conv_down.4', F.conv2d(x, sd['patch_embed.conv_down.3.weight'], None, 2, 1), 1e-4))
    outs = []
    for i, depth in enumerate(depths):
        p = f'levels.{i}'
        if i < 2:
            for j in range(depth):
                q = f'{p}.blocks.{j}'
                y = _bn(sd, f'{q}.norm1', F.conv2d(x, sd[f'{q}.conv1.weight'], sd[f'{q}.conv1.bias'], 1, 1), 1e-5)
                y = F.gelu(y, approximate='tanh')
                x = x + _bn(sd, f'{q}.norm2', F.conv2d(y, sd[f'{q}.conv2.weight'], sd[f'{q}.conv2.bias'], 1, 1),
                            1e-5)
        else:
            x = _windowed(sd, p, x, depth, num_heads[i], window_size[i], masked)
        outs.append(x)
        if i < len(depths) - 1:
            x = F.conv2d(x, sd[f'{p}.downsample.reduction.0.weight'], None, 2, 1)
    logits = None
    if 'head.weight' in sd:
        logits = _linear(sd, 'head', _bn(sd, 'norm', x, 1e-5).mean(dim=(2, 3)))
    return outs, logits


def upstream_state_dict(dim, in_dim, depths, layer_scale=None, num_classes=1000, seed=0):
    """A random state dict with the keys and shapes of reference §1.5 (classification layout, ``num_classes`` > 0)
    or of the mm backbone (``num_classes=0``: no ``norm``/``head``, ``outnorm{0..3}`` instead), with values spread
    enough that every term matters (BN statistics positive, A_log of any sign)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {}

    def bn(p, c):
        sd.update({f'{p}.weight': 1 + rand(c), f'{p}.bias': rand(c), f'{p}.running_mean': rand(c),
                   f'{p}.running_var': 0.5 + torch.rand(c, generator=g), f'{p}.num_batches_tracked': torch.tensor(7)})

    def ln(p, c):
        sd.update({f'{p}.weight': 1 + rand(c), f'{p}.bias': rand(c)})

    sd['patch_embed.conv_down.0.weight'] = rand(in_dim, 3, 3, 3)
    bn('patch_embed.conv_down.1', in_dim)
    sd['patch_embed.conv_down.3.weight'] = rand(dim, in_dim, 3, 3, scale=0.1)
    bn('patch_embed.conv_down.4', dim)
    for i, depth in enumerate(depths):
        c = dim * 2 ** i
        for j in range(depth):
            q = f'levels.{i}.blocks.{j}'
            if i < 2:
                for k in (1, 2):
                    sd[f'{q}.conv{k}.weight'] = rand(c, c, 3, 3, scale=0.05)
                    sd[f'{q}.conv{k}.bias'] = rand(c)
                    bn(f'{q}.norm{k}', c)
                continue
            ln(f'{q}.norm1', c)
            attention_from = depth // 2 + 1 if depth % 2 else depth // 2
            if j >= attention_from:
                sd.update({f'{q}.mixer.qkv.weight': rand(3 * c, c), f'{q}.mixer.qkv.bias': rand(3 * c),
                           f'{q}.mixer.proj.weight': rand(c, c), f'{q}.mixer.proj.bias': rand(c)})
            else:
                ci, rank = c // 2, math.ceil(c / 16)
                sd.update({f'{q}.mixer.A_log': rand(ci, 8, scale=1.0), f'{q}.mixer.D': rand(ci, scale=1.0),
                           f'{q}.mixer.in_proj.weight': rand(c, c), f'{q}.mixer.x_proj.weight': rand(rank + 16, ci),
                           f'{q}.mixer.dt_proj.weight': rand(ci, rank), f'{q}.mixer.dt_proj.bias': rand(ci),
                           f'{q}.mixer.out_proj.weight': rand(c, c), f'{q}.mixer.conv1d_x.weight': rand(ci, 1, 3),
                           f'{q}.mixer.conv1d_z.weight': rand(ci, 1, 3, scale=0.5)})
            ln(f'{q}.norm2', c)
            sd.update({f'{q}.mlp.fc1.weight': rand(4 * c, c), f'{q}.mlp.fc1.bias': rand(4 * c),
                       f'{q}.mlp.fc2.weight': rand(c, 4 * c, scale=0.1), f'{q}.mlp.fc2.bias': rand(c)})
            if layer_scale is not None:
                sd[f'{q}.gamma_1'] = 1 + rand(c)
                sd[f'{q}.gamma_2'] = 1 + rand(c)
        if i < len(depths) - 1:
            sd[f'levels.{i}.downsample.reduction.0.weight'] = rand(2 * c, c, 3, 3, scale=0.1)
    last = dim * 2 ** (len(depths) - 1)
    if num_classes:
        bn('norm', last)
        sd.update({'head.weight': rand(num_classes, last), 'head.bias': rand(num_classes)})
    else:
        for i in range(len(depths)):
            ln(f'outnorm{i}', dim * 2 ** i)
    return sd
