"""Turn an upstream MLLA checkpoint (ImageNet classification, or an upstream mmdet/mmseg run) into a backbone
checkpoint ``{'state_dict': ...}`` with the keys of the mm backbone ``MLLA``, ready for
``init_cfg=dict(type='Pretrained', checkpoint=OUT)``.

    python tools/convert_checkpoint.py MLLA_T.pth checkpoints/MLLA_T.pth --arch tiny

It keeps the trunk (stem, stages, downsampling), drops the RoPE tables (recomputed per input size) and the
classifier (``norm.*``, ``head.*``), prints what it kept and dropped, and refuses a file that does not fit the arch.
The backbone's output norms ``norm0..3`` are new and start at their initial values.
"""
import argparse
import os

import torch

from mlla_mm.mm.mlla import MLLABackbone
from mlla_mm.models.mlla import MLLA_ARCHS, checkpoint_filter_fn
from mlla_mm.utils.checkpoint import CheckpointMismatchError, read_state_dict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Convert an upstream MLLA checkpoint to an mm backbone checkpoint')
    parser.add_argument('src', help='upstream checkpoint (.pth)')
    parser.add_argument('dst', help='output backbone checkpoint (.pth)')
    parser.add_argument('--arch', required=True, choices=sorted(MLLA_ARCHS), help='MLLA size of the checkpoint')
    return parser.parse_args(argv)


def convert(src, dst, arch, log=print):
    """Write the backbone checkpoint; returns (kept keys, dropped keys)."""
    source = read_state_dict(src)
    backbone = MLLABackbone(arch=arch)
    kept = checkpoint_filter_fn(source, backbone)
    # checkpoint_filter_fn strips 'module.' / 'backbone.' prefixes; compare by the stripped names.
    stripped = {key.removeprefix('module.').removeprefix('backbone.') for key in source}
    dropped = sorted(stripped - set(kept))
    own = backbone.state_dict()
    unknown = sorted(set(kept) - set(own))
    wrong_shape = [f'{k}: {tuple(kept[k].shape)} vs {tuple(own[k].shape)}'
                   for k in kept if k in own and kept[k].shape != own[k].shape]
    missing = sorted(k for k in own if k not in kept and not k.startswith(('norm0.', 'norm1.', 'norm2.', 'norm3.')))
    if unknown or wrong_shape or missing:
        raise CheckpointMismatchError(
            f'{src} does not fit MLLA arch={arch!r}: {len(unknown)} unknown keys {unknown[:10]}, '
            f'{len(wrong_shape)} shape mismatches {wrong_shape[:10]}, {len(missing)} missing keys {missing[:10]}')
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save({'state_dict': kept, 'meta': {'source': os.path.basename(src), 'arch': arch}}, dst)
    log(f'kept {len(kept)} tensors ({sum(v.numel() for v in kept.values()) / 1e6:.2f} M values) of {len(source)}')
    rope = [k for k in dropped if k.endswith('attn.rope.rotations')]
    other = [k for k in dropped if k not in rope]
    log(f'dropped {len(rope)} RoPE tables (*.attn.rope.rotations: computed per input size)')
    log(f'dropped {len(other)} other keys: {", ".join(other) if other else "none"}')
    new = sorted(k for k in own if k not in kept)
    log(f'new in the backbone (initial values): {", ".join(new) if new else "none"}')
    log(f'wrote {dst}')
    return sorted(kept), dropped


def main(argv=None):
    args = parse_args(argv)
    convert(args.src, args.dst, args.arch)


if __name__ == '__main__':
    main()
