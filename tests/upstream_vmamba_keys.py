"""The upstream VMamba v2 state-dict layout (../shared/reference/vmamba.md §1.8 and §4.3), built from the documented
key list and shapes rather than from our model, so loading it checks our naming."""
import math

import torch


def upstream_vmamba_shapes(embed_dim, depths, ssm_ratio, d_state=1, layout='classification', num_classes=1000):
    """{key: shape}. layout: 'classification' (``VSSM``: trunk + classifier.norm/head) or 'backbone'
    (``Backbone_VSSM``: trunk + outnorm0..3, no classifier)."""
    half = embed_dim // 2
    shapes = {
        'patch_embed.0.weight': (half, 3, 3, 3), 'patch_embed.0.bias': (half,),
        'patch_embed.2.weight': (half,), 'patch_embed.2.bias': (half,),
        'patch_embed.5.weight': (embed_dim, half, 3, 3), 'patch_embed.5.bias': (embed_dim,),
        'patch_embed.7.weight': (embed_dim,), 'patch_embed.7.bias': (embed_dim,),
    }
    for i, depth in enumerate(depths):
        dim = embed_dim * 2 ** i
        inner, rank = int(ssm_ratio * dim), math.ceil(dim / 16)
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}.'
            shapes.update({
                p + 'norm.weight': (dim,), p + 'norm.bias': (dim,),
                p + 'op.x_proj_weight': (4, rank + 2 * d_state, inner),
                p + 'op.A_logs': (4 * inner, d_state),
                p + 'op.Ds': (4 * inner,),
                p + 'op.dt_projs_weight': (4, inner, rank),
                p + 'op.dt_projs_bias': (4, inner),
                p + 'op.out_norm.weight': (inner,), p + 'op.out_norm.bias': (inner,),
                p + 'op.in_proj.weight': (inner, dim),
                p + 'op.conv2d.weight': (inner, 1, 3, 3),
                p + 'op.out_proj.weight': (dim, inner),
                p + 'norm2.weight': (dim,), p + 'norm2.bias': (dim,),
                p + 'mlp.fc1.weight': (4 * dim, dim), p + 'mlp.fc1.bias': (4 * dim,),
                p + 'mlp.fc2.weight': (dim, 4 * dim), p + 'mlp.fc2.bias': (dim,),
            })
        if i < len(depths) - 1:
            p = f'layers.{i}.downsample.'
            shapes.update({p + '1.weight': (2 * dim, dim, 3, 3), p + '1.bias': (2 * dim,),
                           p + '3.weight': (2 * dim,), p + '3.bias': (2 * dim,)})
    last = embed_dim * 2 ** (len(depths) - 1)
    if layout == 'classification':
        shapes.update({'classifier.norm.weight': (last,), 'classifier.norm.bias': (last,),
                       'classifier.head.weight': (num_classes, last), 'classifier.head.bias': (num_classes,)})
    else:
        for i in range(len(depths)):
            shapes.update({f'outnorm{i}.weight': (embed_dim * 2 ** i,), f'outnorm{i}.bias': (embed_dim * 2 ** i,)})
    return shapes


def upstream_vmamba_state_dict(*args, seed=0, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    return {k: 0.05 * torch.randn(shape, generator=gen)
            for k, shape in upstream_vmamba_shapes(*args, **kwargs).items()}
