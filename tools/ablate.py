#!/usr/bin/env python
"""Train MLLA ablation presets (mlla_mm/models/mlla_ablation.py) on one recipe and tabulate them.

    python tools/ablate.py --presets baseline,input_gate,forget_gate,shortcut,no_norm,single_head,mlla \\
        --recipe configs/demo/fpn_mlla-test_demo.py --iters 200 --out work_dirs/ablate

For each preset, in this process and one after another:
- the recipe (a config path or mmdet::/mmseg:: name) with its backbone replaced by ``mlla_ablation_<preset>`` through
  ``mlla_mm.mm.swap_backbone`` (the recipe's levels, the neck/head input channels, the family's optimizer rules), at
  ``--size`` ('test': MLLA's tiny test size, 'tiny': MLLA-T), from random weights;
- with ``--iters N`` the schedule is shortened to N iterations (an iteration-based loop; every scheduler's begin, end,
  milestones and T_max scaled by N / the recipe's length, epoch-based ones converted to iterations; iteration-based
  warm-ups of an epoch-based recipe keep their length, capped at N); without it the recipe's own schedule runs;
- trained with the recipe's seed, then evaluated once on the recipe's validation set (the recipe's evaluator).
Measured per variant: the metric (``--metric``; default mIoU for mmseg, coco/bbox_mAP for mmdet; every scalar the
evaluator returns is kept in the JSON), the backbone's parameters, its FLOPs (multiply-adds, mmengine's FlopAnalyzer
with every op on its PyTorch reference, one image at the recipe's input size), its throughput (img/s of the eval
forward on the training device, batch ``--bench-batch``, the fastest of ``--bench-iters`` timed passes after one
warm-up),
the whole model's parameters and the training wall time.

Writes OUT/ablation.json (header: command, recipe, device, versions, commit; one row per variant), OUT/ablation.csv,
OUT/ablation.md and OUT/ablation.png (metric, params, FLOPs and img/s per variant), rewritten after every variant, so
an interrupted run keeps what finished. Each variant's logs and checkpoint are in OUT/<preset>/.
"""
import argparse
import csv
import json
import numbers
import os
import shlex
import sys
import time

import torch
from mmengine.config import DictAction
from mmengine.hooks import Hook

import mlla_mm
from mlla_mm.models.mlla_ablation import ABLATION_MODELS, PRESETS, SIZES
from mlla_mm.benchmark import environment

DEFAULT_METRICS = {'mmseg': 'mIoU', 'mmdet': 'coco/bbox_mAP'}
SCHEDULE_KEYS = ('begin', 'end', 'T_max')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train MLLA ablation presets on one recipe and tabulate them')
    parser.add_argument('--presets', required=True,
                        help=f'comma list of presets, or "all"; known: {", ".join(PRESETS)}')
    parser.add_argument('--recipe', required=True, help='config path, or mmdet::NAME / mmseg::NAME')
    parser.add_argument('--iters', type=int, help='train this many iterations (the schedule scaled to them); '
                        'default: the recipe\'s own schedule')
    parser.add_argument('--size', default='test', choices=SIZES, help='backbone size (default: test)')
    parser.add_argument('--metric', help='metric to tabulate (default: mIoU for mmseg, coco/bbox_mAP for mmdet)')
    parser.add_argument('--out', default='work_dirs/ablate', help='output folder (default: work_dirs/ablate)')
    parser.add_argument('--bench-batch', type=int, default=2, help='batch of the throughput measurement (default 2)')
    parser.add_argument('--bench-iters', type=int, default=10,
                        help='timed passes of the throughput measurement; the fastest counts (default 10)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='recipe overrides, key=value')
    args = parser.parse_args(argv)
    args.presets = list(PRESETS) if args.presets == 'all' else [p.strip() for p in args.presets.split(',') if p.strip()]
    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown or not args.presets:
        parser.error(f'unknown presets {unknown}; known presets: {", ".join(PRESETS)}')
    if args.iters is not None and args.iters <= 0:
        parser.error(f'--iters must be positive, got {args.iters}')
    if args.bench_batch <= 0 or args.bench_iters <= 0:
        parser.error('--bench-batch and --bench-iters must be positive')
    return args


class KeepMetrics(Hook):
    """Keeps the metrics of the last validation."""

    priority = 'VERY_LOW'

    def __init__(self):
        self.metrics = {}

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


def _scaled(value, factor):
    return max(0, round(value * factor))


def shorten_schedule(cfg, iters):
    """Make the recipe an ``iters``-iteration run with its schedule's shape (see the module docstring)."""
    loop = cfg.train_cfg
    epoch_based = 'max_epochs' in loop
    length = loop.max_epochs if epoch_based else loop.max_iters
    schedulers = cfg.get('param_scheduler') or []
    as_list = isinstance(schedulers, (list, tuple))
    shortened = []
    for scheduler in (schedulers if as_list else [schedulers]):
        scheduler = dict(scheduler)
        by_epoch = scheduler.pop('by_epoch', True)
        scheduler.pop('convert_to_iter_based', None)
        if by_epoch or not epoch_based:
            factor = iters / length
            for key in SCHEDULE_KEYS:
                if key in scheduler:
                    scheduler[key] = _scaled(scheduler[key], factor)
            if 'end' in scheduler:  # a short run must not collapse a phase to nothing
                scheduler['end'] = max(scheduler['end'], scheduler.get('begin', 0) + 1)
            if 'milestones' in scheduler:
                scheduler['milestones'] = [_scaled(m, factor) for m in scheduler['milestones']]
        else:  # an iteration-based warm-up of an epoch-based recipe
            for key in SCHEDULE_KEYS:
                if key in scheduler:
                    scheduler[key] = min(scheduler[key], iters)
        shortened.append(dict(scheduler, by_epoch=False))
    cfg.param_scheduler = shortened if as_list else shortened[0]
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters)
    hooks = cfg.get('default_hooks') or {}
    if 'checkpoint' in hooks:
        hooks.checkpoint.update(by_epoch=False, interval=iters)
    if 'logger' in hooks:
        hooks.logger.update(interval=max(1, min(hooks.logger.get('interval', 50), iters // 10)))
    cfg.log_processor = dict(cfg.get('log_processor') or {}, by_epoch=False)


def input_shape(cfg):
    """(H, W) the recipe feeds: the data preprocessor's fixed size, else the test pipeline's Resize scale."""
    size = (cfg.model.get('data_preprocessor') or {}).get('size')
    if size:
        return tuple(size)
    for step in cfg.test_dataloader.dataset.get('pipeline', []):
        if step.get('type') == 'Resize' and step.get('scale'):
            width, height = step['scale']  # mmcv's (w, h)
            return (height, width)
    return (224, 224)


def backbone_costs(name, overrides, shape, device, bench_batch, bench_iters):
    """Backbone params, FLOPs (MACs, PyTorch references traced) and eval img/s."""
    from mmengine.analysis import FlopAnalyzer
    reference = mlla_mm.create_model(name, features_only=True, backend='torch', **overrides).eval()
    with torch.no_grad():
        analyzer = FlopAnalyzer(reference, torch.zeros(1, 3, *shape))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
        flops = analyzer.total()
    params = sum(p.numel() for p in reference.parameters())
    model = mlla_mm.create_model(name, features_only=True, **overrides).to(device).eval()
    images = torch.randn(bench_batch, 3, *shape, device=device)
    times = []
    with torch.no_grad():
        model(images)
        for _ in range(bench_iters):
            if device.type == 'cuda':
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(images)
            if device.type == 'cuda':
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    # The fastest pass: on a shared machine the others measure the neighbours' load as much as the model.
    return params, flops, bench_batch / min(times)


def train_variant(args, preset, index, log=print):
    """Train and evaluate one preset; returns its row."""
    from mlla_mm.mm import swap_backbone
    from mlla_mm.mm.runner import build_runner, detect_library, ensure_demo_data, resolve_config
    from mmengine.config import Config
    name = ABLATION_MODELS[preset]
    cfg = Config.fromfile(resolve_config(args.recipe))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    library = detect_library(cfg)
    cfg = swap_backbone(cfg, name, size=args.size)
    cfg.default_scope = library
    if args.iters:
        shorten_schedule(cfg, args.iters)
    cfg.work_dir = os.path.join(args.out, preset)
    cfg.experiment_name = f'{preset}_{time.strftime("%Y%m%d_%H%M%S")}'
    ensure_demo_data(cfg, log=log)
    iters = cfg.train_cfg.get('max_iters') or f'{cfg.train_cfg.max_epochs} epochs of'
    log(f'[{index}/{len(args.presets)}] {preset}: training {iters} iterations ({name}, size {args.size})', flush=True)
    runner = build_runner(cfg)
    metrics = KeepMetrics()
    runner.register_hook(metrics)
    start = time.perf_counter()
    runner.train()
    train_s = time.perf_counter() - start
    if not metrics.metrics:  # a loop that never validated
        runner.val()
    metric = args.metric or DEFAULT_METRICS.get(library)
    if metric not in metrics.metrics:
        raise KeyError(f'metric {metric!r} is not among the evaluator\'s results {sorted(metrics.metrics)}; '
                       'choose one with --metric')
    model_params = sum(p.numel() for p in runner.model.parameters())
    device = next(runner.model.parameters()).device
    shape = input_shape(cfg)
    params, flops, throughput = backbone_costs(name, dict(size=args.size), shape, device, args.bench_batch,
                                               args.bench_iters)
    switches = {k: v for k, v in mlla_mm.create_model(name).switches().items() if v != getattr(
        PRESETS['baseline'], k)}
    row = dict(preset=preset, model=name, switches=switches, metric=metric, value=float(metrics.metrics[metric]),
               metrics={k: float(v) for k, v in metrics.metrics.items() if isinstance(v, numbers.Real)},
               backbone_params=params, model_params=model_params, backbone_flops=flops, input_shape=list(shape),
               img_per_s=throughput, bench_batch=args.bench_batch, train_s=train_s,
               iters=cfg.train_cfg.get('max_iters'))
    log(f'[{index}/{len(args.presets)}] {preset}: {metric} {row["value"]:.2f}, backbone {params / 1e6:.3f} M params, '
        f'{flops / 1e9:.3f} GFLOPs at {shape[0]}x{shape[1]}, {throughput:.1f} img/s, trained in {train_s:.0f} s',
        flush=True)
    return row


def _switch_text(switches):
    return ', '.join(f'{k}={"+".join(v) if isinstance(v, (list, tuple)) else v}' for k, v in switches.items()) \
        or '(baseline)'


def write_outputs(out, header, rows):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'ablation.json'), 'w') as f:
        json.dump(dict(header=header, rows=rows), f, indent=1)
    columns = ['preset', 'metric', 'value', 'backbone_params', 'backbone_flops', 'img_per_s', 'model_params',
               'train_s', 'iters', 'switches']
    with open(os.path.join(out, 'ablation.csv'), 'w', newline='') as f:
        for key, value in header.items():
            f.write(f'# {key}: {value}\n')
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, switches=_switch_text(row['switches'])))
    with open(os.path.join(out, 'ablation.md'), 'w') as f:
        f.write(markdown(header, rows))
    if rows:
        plot(rows, header, os.path.join(out, 'ablation.png'))


def markdown(header, rows):
    metric = rows[0]['metric'] if rows else 'metric'
    shape = 'x'.join(map(str, rows[0]['input_shape'])) if rows else ''
    lines = [f'| preset | switches vs baseline | {metric} | backbone params (M) | backbone GFLOPs at {shape} | '
             f'img/s (batch {header["bench_batch"]}) | train time (s) |', '|---|---|---|---|---|---|---|']
    for row in rows:
        lines.append(f'| {row["preset"]} | {_switch_text(row["switches"])} | {row["value"]:.2f} | '
                     f'{row["backbone_params"] / 1e6:.3f} | {row["backbone_flops"] / 1e9:.3f} | '
                     f'{row["img_per_s"]:.1f} | {row["train_s"]:.0f} |')
    notes = [f'{key}: {value}' for key, value in header.items()]
    return '\n'.join(lines) + '\n\n' + '\n'.join(f'- {note}' for note in notes) + '\n'


def plot(rows, header, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = [(rows[0]['metric'], [r['value'] for r in rows]),
              ('backbone params (M)', [r['backbone_params'] / 1e6 for r in rows]),
              (f'backbone GFLOPs at {"x".join(map(str, rows[0]["input_shape"]))}',
               [r['backbone_flops'] / 1e9 for r in rows]),
              (f'img/s (batch {header["bench_batch"]}, {header["device"]})', [r['img_per_s'] for r in rows])]
    names = [r['preset'] for r in rows]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 0.45 * len(rows) + 1.8), sharey=True)
    for axis, (title, values) in zip(axes, panels):
        axis.barh(names, values, color='tab:blue')
        axis.set_title(title, fontsize=9)
        for y, value in enumerate(values):
            axis.text(value, y, f' {value:.3g}', va='center', fontsize=7)
        axis.margins(x=0.25)
    axes[0].invert_yaxis()
    figure.suptitle(f'{header["recipe"]}, {header["schedule"]}, commit {header["commit"]}', fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    import mlla_mm.mm  # noqa: F401  registers the backbones
    env = environment(torch.device('cuda' if torch.cuda.is_available() else 'cpu'))
    command = ['python', 'tools/ablate.py'] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
    versions = ', '.join(f'{k} {env["versions"][k]}' for k in ('torch', 'mmengine', 'mmdet', 'mmsegmentation'))
    header = dict(command=' '.join(command), recipe=args.recipe,
                  schedule=f'{args.iters} iterations' if args.iters else 'the recipe\'s schedule',
                  size=args.size, device=env['device'], versions=versions,
                  commit=env['commit'], bench_batch=args.bench_batch)
    rows = []
    for index, preset in enumerate(args.presets, 1):
        rows.append(train_variant(args, preset, index))
        write_outputs(args.out, header, rows)
    print(f'wrote {args.out}/ablation.{{json,csv,md,png}}')
    print(markdown(header, rows))
    return rows


if __name__ == '__main__':
    main()
