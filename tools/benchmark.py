#!/usr/bin/env python
"""Throughput, memory and FLOPs of backbones and mm detectors/segmentors against input size (mlla_mm.benchmark).

--models: registered models (mlla_mm.list_models(); create_model(NAME, features_only=True)), references (swin_t:
mmdet's Swin-T; convnext_t, mambaout_t, timm:NAME: timm, features_only) or mm configs (FILE.py, mmdet::PATH,
mmseg::PATH; infer = test_step, train = preprocessor + losses on synthetic targets); NAME@BACKEND pins a kernel
backend. Each case builds a fresh model, runs --warmup then --iters timed iterations (mlla_mm.benchmark.time_ms:
torch.utils.benchmark, synchronised). Memory: peak above the start of the case (CUDA allocator, or sampled CPU RSS),
in the warm-up (mem_warmup_mib, with the cuDNN autotuning workspaces) and the timed iterations (mem_mib). GFLOPs:
mmengine's FlopAnalyzer at batch 1 in fp32, kernel ops on their PyTorch reference. Train: AdamW, a GradScaler under
fp16; a backbone's loss is the sum of its outputs' means. OOM is recorded and the run goes on (exit 1 only on other
errors). Writes DIR/benchmark.json, DIR/benchmark.csv (device, versions, commit, arguments as '# ' lines),
DIR/throughput.png and DIR/memory.png.

  python tools/benchmark.py --models mlla_t,vmamba_t,swin_t,convnext_t --sizes 224,512,800x1333 --dtype bf16
  python tools/benchmark.py --models configs/mmdet/mask-rcnn_mlla-t_fpn_1x_coco.py --sizes 800x1333 --mode train
  python tools/benchmark.py --replot work_dirs/benchmark/benchmark.json
"""
import argparse
import csv
import json
import os
import re
import sys

import torch

from mlla_mm.benchmark import PeakMemory, environment, flop_analyzer, known_subjects, parse_subjects, time_ms
from mlla_mm.kernels import BACKENDS, backends_used

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
FIELDS = ('model', 'kind', 'backend', 'size', 'pixels', 'batch', 'dtype', 'mode', 'status', 'ms_per_img',
          'img_per_s', 'mem_mib', 'mem_warmup_mib', 'params_m', 'gflops', 'error')
COLUMNS = ('model', 'size', 'batch', 'status', 'ms_per_img', 'img_per_s', 'mem_mib', 'mem_warmup_mib', 'params_m',
           'gflops')
PLOTS = {'throughput.png': ('img_per_s', 'images / s'), 'memory.png': ('mem_mib', 'peak memory above start (MiB)')}


def comma_list(text):
    return [item.strip() for item in text.split(',') if item.strip()]


def parse_size(text):
    match = re.fullmatch(r'([1-9]\d*)(?:[xX]([1-9]\d*))?', text)
    if not match:
        raise argparse.ArgumentTypeError(f'bad size {text!r}: use S or HxW with positive integers, e.g. 800x1333')
    return int(match[1]), int(match[2] or match[1])


def build_parser():
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', type=comma_list, help=f'comma list of subjects: {known_subjects()}; NAME@BACKEND')
    p.add_argument('--backends', type=comma_list, default=['auto'], help=f'kernel backends: {", ".join(BACKENDS)}')
    p.add_argument('--sizes', type=lambda t: list(map(parse_size, comma_list(t))), default=[(224, 224)],
                   help='S or HxW list (224)')
    batch = p.add_mutually_exclusive_group()
    batch.add_argument('--batch', type=int, default=1, help='images per batch (1)')
    batch.add_argument('--pixels-per-batch', type=int, help='batch = max(1, round(P / (H * W))) at each size')
    p.add_argument('--dtype', choices=DTYPES, default='fp32', help='fp32, or fp16 / bf16 autocast')
    p.add_argument('--channels-last', action='store_true', help='channels_last model and images (not configs)')
    p.add_argument('--mode', choices=('infer', 'train'), default='infer', help='train: forward, backward, AdamW')
    p.add_argument('--warmup', type=int, default=10, help='untimed iterations per case (10)')
    p.add_argument('--iters', type=int, default=20, help='timed iterations per case (20)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={}, help='overrides for config subjects')
    p.add_argument('--out', default='work_dirs/benchmark', help='output folder (with --replot: beside the JSON)')
    p.add_argument('--replot', metavar='JSON', help='only redraw the plots of a saved benchmark.json')
    return p


def make_step(model, library, data, args):
    """One iteration as a closure: inference, or forward + backward + AdamW step, under autocast."""
    dtype, train = DTYPES[args.dtype], args.mode == 'train'
    autocast = torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype != torch.float32)
    optimizer = torch.optim.AdamW([p for p in model.train(train).parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)

    def step():
        with torch.set_grad_enabled(train), autocast:
            if not train:
                return model.test_step(data) if library else model(data)
            loss = (model.parse_losses(model(**model.data_preprocessor(data, True), mode='loss'))[0] if library
                    else sum(out.float().mean() for out in model(data)))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return step


def is_out_of_memory(error: BaseException) -> bool:
    message = str(error).lower()
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and ('out of memory' in message or "can't allocate memory" in message))


def run_case(subject, height, width, batch, args, memory):
    """Time one subject at one size: its row, with status 'ok', 'OOM' or 'error'."""
    row = dict.fromkeys(FIELDS) | dict(model=subject.label, kind=subject.kind, backend=subject.backend,
                                       size=f'{height}x{width}', pixels=height * width, batch=batch,
                                       dtype=args.dtype, mode=args.mode, status='ok')
    device, model = torch.device(args.device), None
    try:
        memory.start()
        model, library, inputs = subject.build(device, args.cfg_options)
        row['params_m'] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
        data = inputs(batch, height, width)
        if args.channels_last and not library:
            model, data = model.to(memory_format=torch.channels_last), data.to(memory_format=torch.channels_last)
        step = make_step(model, library, data, args)
        for _ in range(args.warmup):
            step()
        row['mem_warmup_mib'] = memory.peak_mib() if args.warmup else None
        memory.reset()
        ms = time_ms(step, iters=args.iters)
        row.update(mem_mib=memory.peak_mib(), ms_per_img=round(ms / batch, 3), img_per_s=round(1e3 * batch / ms, 2))
    except Exception as error:  # noqa: BLE001  (recorded in the row; the run goes on)
        row.update(status='OOM' if is_out_of_memory(error) else 'error', error=f'{type(error).__name__}: {error}'[:500])
    del model
    torch.cuda.empty_cache()
    return row


def count_gflops(subject, height, width, args):
    model, library, _ = subject.build(torch.device('cpu'), args.cfg_options, backend='torch')
    with torch.no_grad():
        return round(flop_analyzer(model.eval(), (height, width), library).total() / 1e9, 3)


def save(out, header, rows):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'benchmark.json'), 'w') as f:
        json.dump(dict(header=header, results=rows), f, indent=1)
    with open(os.path.join(out, 'benchmark.csv'), 'w', newline='') as f:
        f.writelines(f'# {key}: {json.dumps(value)}\n' for key, value in header.items())
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows, header, out):
    """Write the PNG plots (log-log against pixels, one line per model); returns {file: labels drawn}."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    drawn = {}
    for name, (key, y_label) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 5))
        drawn[name] = []
        for label in dict.fromkeys(row['model'] for row in rows):
            points = sorted((r['pixels'], r[key]) for r in rows if r['model'] == label and r.get(key))
            if points:
                ax.plot(*zip(*points), marker='o', label=label)
                drawn[name].append(label)
        ax.set(xscale='log', yscale='log', xlabel='pixels per image (H x W)', ylabel=y_label)
        ax.set_title(f"{header['args']['mode']} {header['args']['dtype']}, {header['device']}, torch "
                     f"{header['versions']['torch']}, commit {str(header['commit'])[:10]}", fontsize=8)
        ax.grid(True, which='both', alpha=0.3)
        if drawn[name]:
            ax.legend(fontsize=8)
        fig.savefig(os.path.join(out, name), dpi=120, bbox_inches='tight')
        plt.close(fig)
    return drawn


def replot(json_path, out=None):
    with open(json_path) as f:
        saved = json.load(f)
    out = out or os.path.dirname(os.path.abspath(json_path))
    os.makedirs(out, exist_ok=True)
    return plot(saved['results'], saved['header'], out)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replot:
        for name, labels in replot(args.replot, None if args.out == parser.get_default('out') else args.out).items():
            print(f'{name}: {", ".join(labels) or "no successful case"}')
        return 0
    if not args.models:
        parser.error(f'--models is required; {known_subjects()}')
    if min(args.iters, args.warmup + 1, args.batch, args.pixels_per_batch or 1) < 1:
        parser.error('--iters, --batch and --pixels-per-batch must be positive, --warmup not negative')
    if set(args.backends) - set(BACKENDS):
        parser.error(f'unknown backend(s) {sorted(set(args.backends) - set(BACKENDS))}; choose from {BACKENDS}')
    try:
        subjects = parse_subjects(args.models, args.backends, args.cfg_options)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    header = dict(environment(device), command=' '.join(['python tools/benchmark.py', *(argv or sys.argv[1:])]),
                  args=vars(args))
    memory, rows = PeakMemory(device), []
    for subject in subjects:
        for height, width in args.sizes:
            batch = max(1, round(args.pixels_per_batch / (height * width))) if args.pixels_per_batch else args.batch
            print(f'{subject.label} {height}x{width} x{batch}', flush=True)
            rows.append(run_case(subject, height, width, batch, args, memory))
            save(args.out, header, rows)
    memory.stopped.set()
    header['kernel_backends_used'] = backends_used()  # before the FLOP count runs the PyTorch references
    for row, (subject, (height, width)) in zip(rows, [(s, size) for s in subjects for size in args.sizes]):
        if not args.no_flops:
            try:
                row['gflops'] = count_gflops(subject, height, width, args)
            except Exception as error:  # noqa: BLE001  (a FLOP count that fails leaves the column empty)
                print(f'FLOP count failed for {subject.label} {height}x{width}: {error}', file=sys.stderr)
    save(args.out, header, rows)
    drawn = plot(rows, header, args.out)
    print(f"\n{header['device']} | torch {header['versions']['torch']} | commit {header['commit']} | "
          f"kernel backends used: {header['kernel_backends_used'] or 'none'}")
    table = [COLUMNS] + [[str(row[key]) for key in COLUMNS] for row in rows]
    widths = [max(map(len, column)) for column in zip(*table)]
    print('\n'.join('  '.join(cell.ljust(width) for cell, width in zip(line, widths)) for line in table))
    print(f"wrote {', '.join(os.path.join(args.out, name) for name in ('benchmark.json', 'benchmark.csv', *drawn))}")
    return int(any(row['status'] == 'error' for row in rows))


if __name__ == '__main__':
    sys.exit(main())
