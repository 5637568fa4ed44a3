"""Write a config that puts one of our backbones into a stock mmdet / mmseg recipe.

    python tools/swap_backbone.py mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py --backbone mlla_t \\
        --pretrained checkpoints/MLLA_T.pth --out configs/faster-rcnn_mlla-t_fpn_1x_coco.py

The file inherits CONFIG with ``_base_`` and states only the changes (see mlla_mm.mm.swap): the backbone with
``_delete_=True``, the consumers' in_channels, the input normalisation and optimizer rules of the backbone family, and
``custom_imports``. Without --out it is printed.
"""
import argparse
import keyword
import os
import sys
import textwrap

from mmengine.config import Config, DictAction

from mlla_mm.mm import BACKBONE_NAMES
from mlla_mm.mm.runner import resolve_config
from mlla_mm.mm.swap import swap_changes

WIDTH = 120


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='recipe: a path, or mmdet::PATH / mmseg::PATH inside the installed library')
    parser.add_argument('--backbone', required=True, help=f'one of: {", ".join(BACKBONE_NAMES)}')
    parser.add_argument('--pretrained', help='backbone checkpoint (init_cfg Pretrained); omitted: random init')
    parser.add_argument('--keep-optimizer', action='store_true',
                        help="keep an SGD recipe's optimizer instead of switching to the family's AdamW")
    parser.add_argument('--backbone-options', nargs='+', action=DictAction, default={},
                        help='backbone arguments, e.g. drop_path_rate=0.2 with_cp=True')
    parser.add_argument('--out', help='file to write; printed when omitted')
    return parser.parse_args(argv)


def load_recipe(spec):
    return Config.fromfile(resolve_config(spec))


def base_reference(spec, out):
    """How the written file names the recipe: package specs as they are, paths relative to the written file."""
    if '::' in spec:
        return spec
    if out is None:
        return os.path.abspath(spec)
    return os.path.relpath(os.path.abspath(spec), os.path.dirname(os.path.abspath(out)))


def render(value, indent=0):
    """A config value as Python source: dict(...) for identifier keys, one item per line when too long."""
    if isinstance(value, dict):
        named = all(isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) for k in value)
        items = [f'{k}={render(v, indent + 4)}' if named else f'{k!r}: {render(v, indent + 4)}'
                 for k, v in value.items()]
        opening, closing = ('dict(', ')') if named else ('{', '}')
    elif isinstance(value, (list, tuple)):
        items = [render(v, indent + 4) for v in value]
        opening, closing = ('[', ']') if isinstance(value, list) else ('(', ',)' if len(value) == 1 else ')')
    else:
        return repr(value)
    flat = opening + ', '.join(items) + closing
    if indent + len(flat) <= WIDTH and '\n' not in flat:
        return flat
    inner = ' ' * (indent + 4)
    return opening + '\n' + ''.join(f'{inner}{item},\n' for item in items) + ' ' * indent + closing.lstrip(',')


def write(spec, name, pretrained=None, keep_optimizer=False, backbone_options=None, out=None, command=None):
    """Swap, and return (and write to ``out`` when given) the config file text."""
    changes, notes = swap_changes(load_recipe(spec), name, pretrained, keep_optimizer, **(backbone_options or {}))
    header = [f'# {spec} with the {name} backbone, written by tools/swap_backbone.py' + (':' if command else '.')]
    header += [f'#   {command}'] * bool(command)
    header.append('# Only what the backbone requires differs from the recipe:')
    for note in notes:
        header += textwrap.wrap(note, WIDTH, initial_indent='# - ', subsequent_indent='#   ')
    body = [f'_base_ = {base_reference(spec, out)!r}']
    body += [f'{key} = {render(value)}' for key, value in changes.items()]
    text = '\n'.join(header) + '\n\n' + '\n\n'.join(body) + '\n'
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, 'w', encoding='utf-8') as f:
            f.write(text)
    return text


def main(argv=None):
    args = parse_args(argv)
    command = ' '.join(['python tools/swap_backbone.py'] + (sys.argv[1:] if argv is None else list(argv)))
    text = write(args.config, args.backbone, args.pretrained, args.keep_optimizer, args.backbone_options, args.out,
                 command)
    if args.out:
        print(f'wrote {args.out}')
    else:
        print(text, end='')


if __name__ == '__main__':
    main()
