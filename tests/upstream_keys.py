"""Random state dicts in the exact upstream MLLA key layout (../shared/reference/mlla.md §1.7 and §3), built from
the documented key list and shapes rather than from our model, so loading them checks our naming."""
import torch


def bn_keys(prefix, channels, gen):
    """A BatchNorm's five entries, with running statistics away from their init."""
    return {
        f'{prefix}.weight': 1.0 + 0.1 * torch.randn(channels, generator=gen),
        f'{prefix}.bias': 0.1 * torch.randn(channels, generator=gen),
        f'{prefix}.running_mean': 0.1 * torch.randn(channels, generator=gen),
        f'{prefix}.running_var': 0.5 + torch.rand(channels, generator=gen),
        f'{prefix}.num_batches_tracked': torch.tensor(1000),
    }


def stem_keys(embed_dim, w, gen):
    """MLLA's convolutional stem (``patch_embed.conv1/conv2/conv3``), which VSSD and Spatial-Mamba reuse; ``w(*shape,
    std=)`` draws a weight."""
    c, sd = embed_dim, {}
    sd['patch_embed.conv1.conv.weight'] = w(c // 2, 3, 3, 3, std=0.2)
    sd.update(bn_keys('patch_embed.conv1.norm', c // 2, gen))
    for i in (0, 1):
        sd[f'patch_embed.conv2.{i}.conv.weight'] = w(c // 2, c // 2, 3, 3, std=0.1)
        sd.update(bn_keys(f'patch_embed.conv2.{i}.norm', c // 2, gen))
    sd['patch_embed.conv3.0.conv.weight'] = w(4 * c, c // 2, 3, 3, std=0.1)
    sd.update(bn_keys('patch_embed.conv3.0.norm', 4 * c, gen))
    sd['patch_embed.conv3.1.conv.weight'] = w(c, 4 * c, 1, 1, std=0.1)
    sd.update(bn_keys('patch_embed.conv3.1.norm', c, gen))
    return sd


def merging_keys(prefix, c, w, gen):
    """MLLA's patch merging from c to 2c channels (VSSD and Spatial-Mamba reuse it), fan-in scaled."""
    return {f'{prefix}.0.conv.weight': w(8 * c, c, 1, 1, std=c ** -0.5), f'{prefix}.0.conv.bias': w(8 * c),
            f'{prefix}.1.conv.weight': w(8 * c, 1, 3, 3, std=0.3), f'{prefix}.1.conv.bias': w(8 * c),
            f'{prefix}.2.conv.weight': w(2 * c, 8 * c, 1, 1, std=(8 * c) ** -0.5), f'{prefix}.2.conv.bias': w(2 * c),
            **bn_keys(f'{prefix}.2.norm', 2 * c, gen)}


def upstream_state_dict(embed_dim, depths, img_size=224, layout='classification', num_classes=1000, seed=0):
    """layout: 'classification' (stem, layers with RoPE buffers, norm, head) or 'backbone' (the mmdet/mmseg
    backbone: the same trunk, RoPE buffers still present, plus norm0..norm3 and no classifier)."""
    gen = torch.Generator().manual_seed(seed)
    w = lambda *shape, std=0.05: std * torch.randn(*shape, generator=gen)  # noqa: E731
    sd = stem_keys(embed_dim, w, gen)
    res = img_size // 4
    for stage, depth in enumerate(depths):
        c = embed_dim * 2 ** stage
        for j in range(depth):
            p = f'layers.{stage}.blocks.{j}'
            for conv in ('cpe1', 'dwc', 'attn.lepe', 'cpe2'):
                sd[f'{p}.{conv}.weight'] = w(c, 1, 3, 3, std=0.2)
                sd[f'{p}.{conv}.bias'] = w(c)
            for norm in ('norm1', 'norm2'):
                sd[f'{p}.{norm}.weight'] = 1.0 + w(c)
                sd[f'{p}.{norm}.bias'] = w(c)
            for linear in ('in_proj', 'act_proj', 'out_proj'):
                sd[f'{p}.{linear}.weight'] = w(c, c, std=0.1)
                sd[f'{p}.{linear}.bias'] = w(c)
            sd[f'{p}.attn.qk.weight'] = w(2 * c, c, std=0.1)
            sd[f'{p}.attn.qk.bias'] = w(2 * c)
            sd[f'{p}.attn.rope.rotations'] = torch.randn(res, res, c // 2, 2, generator=gen)
            sd[f'{p}.mlp.fc1.weight'] = w(4 * c, c, std=0.1)
            sd[f'{p}.mlp.fc1.bias'] = w(4 * c)
            sd[f'{p}.mlp.fc2.weight'] = w(c, 4 * c, std=0.1)
            sd[f'{p}.mlp.fc2.bias'] = w(c)
        if stage < len(depths) - 1:
            sd.update(merging_keys(f'layers.{stage}.downsample.conv', c, w, gen))
        res //= 2
    if layout == 'classification':
        sd['norm.weight'] = 1.0 + w(c)
        sd['norm.bias'] = w(c)
        sd['head.weight'] = w(num_classes, c)
        sd['head.bias'] = w(num_classes)
    elif layout == 'backbone':
        for stage in range(len(depths)):
            sd[f'norm{stage}.weight'] = 1.0 + w(embed_dim * 2 ** stage)
            sd[f'norm{stage}.bias'] = w(embed_dim * 2 ** stage)
    else:
        raise ValueError(layout)
    return sd
