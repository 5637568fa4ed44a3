"""Turn an upstream checkpoint (ImageNet classification, or an upstream mmdet/mmseg run) of any registered family, or
of a timm model, into a backbone checkpoint ``{'state_dict': ...}`` with the keys of the mm backbone, ready for
``init_cfg=dict(type='Pretrained', checkpoint=OUT)``.

    python tools/convert_checkpoint.py MLLA_T.pth checkpoints/MLLA_T.pth --model mlla_t
    python tools/convert_checkpoint.py vssm1_tiny_0230s_ckpt_epoch_264.pth checkpoints/vmamba_t.pth --model vmamba_t
    python tools/convert_checkpoint.py convnext_tiny.pth checkpoints/convnext_t.pth --model timm:convnext_tiny

The file is loaded exactly as the backbone's ``init_cfg`` would load it (the family's checkpoint filter, strictly:
a file that does not fit the model raises with the key lists); what the filter drops (classifier, recomputed tables)
is reported. The backbone's new output norms are not written: they start at their initial values either way.
"""
import argparse
import os

import torch

from mlla_mm.mm import BACKBONE_NAMES, BACKBONES
from mlla_mm.mm.swap import new_backbone_cfg


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Convert an upstream checkpoint to an mm backbone checkpoint')
    parser.add_argument('src', help='upstream checkpoint (.pth, or a URL mmengine can read)')
    parser.add_argument('dst', help='output backbone checkpoint (.pth)')
    parser.add_argument('--model', required=True, metavar='NAME',
                        help=f'the model the checkpoint belongs to: one of {", ".join(BACKBONE_NAMES)}, or timm:NAME')
    return parser.parse_args(argv)


def convert(src, dst, model, log=print):
    """Write the backbone checkpoint; returns the list of written keys."""
    cfg = new_backbone_cfg(model, pretrained=src)
    backbone = BACKBONES[cfg.pop('type')](**cfg)
    missing = backbone.init_weights() or []
    state = {k: v for k, v in backbone.state_dict().items() if k not in missing}
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save({'state_dict': state, 'meta': {'source': os.path.basename(src), 'model': model}}, dst)
    log(f'kept {len(state)} tensors ({sum(v.numel() for v in state.values()) / 1e6:.2f} M values)')
    log(f'new in the backbone (initial values): {", ".join(missing) if missing else "none"}')
    log(f'wrote {dst}')
    return sorted(state)


def main(argv=None):
    args = parse_args(argv)
    convert(args.src, args.dst, args.model)


if __name__ == '__main__':
    main()
