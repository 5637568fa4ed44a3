"""An independent, functional MambaOut forward written from ../shared/reference/vim_mambaout.md B2/B3, reading weights
straight from a state dict in the original yuweihao/MambaOut layout (``downsample_layers.*``, ``stages.i.j.*``,
``norm``, ``head.fc1/norm/fc2``). It works on NCHW maps throughout (LayerNorm over channels by explicit mean and
variance, linears as 1x1 convs), unlike the model's channels-last modules.
"""
import torch
import torch.nn.functional as F

EPS = 1e-6


def _ln_channels(sd, p, x):
    """LayerNorm over the channels of an NCHW map, written out."""
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS) * sd[f'{p}.weight'][:, None, None] + sd[f'{p}.bias'][:, None, None]


def _pointwise(sd, p, x):
    return F.conv2d(x, sd[f'{p}.weight'][:, :, None, None], sd[f'{p}.bias'])


def _block(sd, p, x):
    c = x.shape[1]
    h = int(8 / 3 * c)
    y = _pointwise(sd, f'{p}.fc1', _ln_channels(sd, f'{p}.norm', x))
    g, i, conv_in = y[:, :h], y[:, h:2 * h - c], y[:, 2 * h - c:]
    conv = F.conv2d(conv_in, sd[f'{p}.conv.weight'], sd[f'{p}.conv.bias'], padding=3, groups=c)
    return x + _pointwise(sd, f'{p}.fc2', F.gelu(g) * torch.cat([i, conv], dim=1))


def mambaout_forward(sd, images, depths):
    """Stage outputs (NCHW) and logits (when ``sd`` has ``head.*``) of MambaOut in eval mode."""
    x = F.conv2d(images, sd['downsample_layers.0.conv1.weight'], sd['downsample_layers.0.conv1.bias'], 2, 1)
    x = F.gelu(_ln_channels(sd, 'downsample_layers.0.norm1', x))
    x = F.conv2d(x, sd['downsample_layers.0.conv2.weight'], sd['downsample_layers.0.conv2.bias'], 2, 1)
    x = _ln_channels(sd, 'downsample_layers.0.norm2', x)
    outs = []
    for s, depth in enumerate(depths):
        if s > 0:
            p = f'downsample_layers.{s}'
            x = _ln_channels(sd, f'{p}.norm', F.conv2d(x, sd[f'{p}.conv.weight'], sd[f'{p}.conv.bias'], 2, 1))
        for j in range(depth):
            x = _block(sd, f'stages.{s}.{j}', x)
        outs.append(x)
    logits = None
    if 'head.fc1.weight' in sd:
        pooled = x.mean(dim=(2, 3))
        pooled = F.layer_norm(pooled, pooled.shape[-1:], sd['norm.weight'], sd['norm.bias'], EPS)
        hidden = F.gelu(F.linear(pooled, sd['head.fc1.weight'], sd['head.fc1.bias']))
        hidden = F.layer_norm(hidden, hidden.shape[-1:], sd['head.norm.weight'], sd['head.norm.bias'], EPS)
        logits = F.linear(hidden, sd['head.fc2.weight'], sd['head.fc2.bias'])
    return outs, logits


def upstream_state_dict(depths, dims, num_classes=1000, seed=0):
    """A random state dict with the keys and shapes of reference B3 (the released files' layout)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def ln(p, c):
        return {f'{p}.weight': 1 + rand(c), f'{p}.bias': rand(c)}

    def conv(p, c_out, c_in, k, groups=1, scale=0.2):
        return {f'{p}.weight': rand(c_out, c_in // groups, k, k, scale=scale), f'{p}.bias': rand(c_out)}

    sd = {**conv('downsample_layers.0.conv1', dims[0] // 2, 3, 3), **ln('downsample_layers.0.norm1', dims[0] // 2),
          **conv('downsample_layers.0.conv2', dims[0], dims[0] // 2, 3, scale=0.1),
          **ln('downsample_layers.0.norm2', dims[0])}
    for s in range(1, len(dims)):
        sd.update(conv(f'downsample_layers.{s}.conv', dims[s], dims[s - 1], 3, scale=0.05))
        sd.update(ln(f'downsample_layers.{s}.norm', dims[s]))
    for s, (depth, c) in enumerate(zip(depths, dims)):
        h = int(8 / 3 * c)
        for j in range(depth):
            p = f'stages.{s}.{j}'
            sd.update(ln(f'{p}.norm', c))
            sd.update({f'{p}.fc1.weight': rand(2 * h, c), f'{p}.fc1.bias': rand(2 * h)})
            sd.update(conv(f'{p}.conv', c, c, 7, groups=c))
            sd.update({f'{p}.fc2.weight': rand(c, h, scale=0.1), f'{p}.fc2.bias': rand(c)})
    if num_classes:
        last = dims[-1]
        sd.update(ln('norm', last))
        sd.update({'head.fc1.weight': rand(4 * last, last), 'head.fc1.bias': rand(4 * last), **ln('head.norm', 4 * last),
                   'head.fc2.weight': rand(num_classes, 4 * last), 'head.fc2.bias': rand(num_classes)})
    return sd
