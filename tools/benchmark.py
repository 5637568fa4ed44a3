#!/usr/bin/env python
"""Throughput, memory and FLOPs of backbones and mm detectors/segmentors against input size (mlla_mm.benchmark).

Each case builds a fresh model and times --iters iterations after --warmup (mlla_mm.benchmark.time_ms, synchronised).
A config is timed through test_step, or in train mode its preprocessor and losses on synthetic targets; a backbone's
training loss is the sum of its outputs' means (AdamW, a GradScaler under fp16). Memory is the peak above the start
of the case (CUDA allocator, or sampled CPU RSS) in the warm-up (mem_warmup_mib, with cuDNN's autotuning workspaces)
and in the timed iterations (mem_mib). An OOM is recorded and the run goes on (exit 1 only on other errors). Writes
DIR/benchmark.json, DIR/benchmark.csv (device, versions, commit, arguments as '# ' lines), throughput.png, memory.png.

  python tools/benchmark.py --models mlla_t,vmamba_t,swin_t,convnext_t --sizes 224,512,800x1333 --dtype bf16
  python tools/benchmark.py --models configs/mmdet/mask-rcnn_mlla-t_fpn_1x_coco.py --sizes 800x1333 --mode train
  python tools/benchmark.py --replot work_dirs/benchmark/benchmark.json
"""
import argparse
import os
import re
import sys

import torch
from prettytable import PrettyTable

from mlla_mm import benchmark
from mlla_mm.kernels import BACKENDS, backends_used


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
    p.add_argument('--models', type=comma_list, help=f'comma list of {benchmark.known_subjects()}; NAME@BACKEND '
                   'pins a kernel backend. Ours: create_model(NAME, features_only=True); swin_t: mmdet\'s Swin-T')
    p.add_argument('--backends', type=comma_list, default=['auto'], help=f'kernel backends: {", ".join(BACKENDS)}')
    p.add_argument('--sizes', type=lambda t: list(map(parse_size, comma_list(t))), default=[(224, 224)],
                   help='S or HxW list (224)')
    batch = p.add_mutually_exclusive_group()
    batch.add_argument('--batch', type=int, default=1, help='images per batch (1)')
    batch.add_argument('--pixels-per-batch', type=int, help='batch = max(1, round(P / (H * W))) at each size')
    p.add_argument('--dtype', choices=benchmark.DTYPES, default='fp32', help='fp32, or fp16 / bf16 autocast')
    p.add_argument('--channels-last', action='store_true', help='channels_last model and images (not configs)')
    p.add_argument('--mode', choices=('infer', 'train'), default='infer', help='train: forward, backward, AdamW')
    p.add_argument('--warmup', type=int, default=10, help='untimed iterations per case (10)')
    p.add_argument('--iters', type=int, default=20, help='timed iterations per case (20)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--cudnn-benchmark', action=argparse.BooleanOptionalAction, default=True, help='cuDNN autotuning')
    p.add_argument('--no-flops', action='store_true', help="skip the FLOP count (mmengine's FlopAnalyzer at batch 1, "
                   'fp32, kernel ops on their PyTorch reference)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={}, help='overrides for config subjects')
    p.add_argument('--out', default='work_dirs/benchmark', help='output folder (with --replot: beside the JSON)')
    p.add_argument('--replot', metavar='JSON', help='only redraw the plots of a saved benchmark.json')
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replot:
        out = None if args.out == parser.get_default('out') else args.out
        for name, labels in benchmark.replot(args.replot, out).items():
            print(f'{name}: {", ".join(labels) or "no successful case"}')
        return 0
    if not args.models:
        parser.error(f'--models is required; {benchmark.known_subjects()}')
    if min(args.iters, args.warmup + 1, args.batch, args.pixels_per_batch or 1) < 1:
        parser.error('--iters, --batch and --pixels-per-batch must be positive, --warmup not negative')
    if set(args.backends) - set(BACKENDS):
        parser.error(f'unknown backend(s) {sorted(set(args.backends) - set(BACKENDS))}; choose from {BACKENDS}')
    try:
        subjects = benchmark.parse_subjects(args.models, args.backends, args.cfg_options)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.manual_seed(0)
    header = dict(benchmark.environment(device), args=vars(args),
                  command=' '.join(['python tools/benchmark.py', *(argv or sys.argv[1:])]))
    memory, cases, rows = benchmark.PeakMemory(device), [(s, size) for s in subjects for size in args.sizes], []
    for subject, (height, width) in cases:
        batch = max(1, round(args.pixels_per_batch / (height * width))) if args.pixels_per_batch else args.batch
        print(f'{subject.label} {height}x{width} x{batch}', flush=True)
        rows.append(benchmark.run_case(subject, height, width, batch, args, memory))
        benchmark.save(args.out, header, rows)
    memory.stopped.set()
    header['kernel_backends_used'] = backends_used()  # before the FLOP count runs the PyTorch references
    for row, (subject, (height, width)) in zip(rows, cases if not args.no_flops else []):
        try:
            model, library = benchmark.build_subject(subject.name, args.cfg_options, subject.backend and 'torch')
            with torch.no_grad():
                row['gflops'] = round(benchmark.flop_analyzer(model.eval(), (height, width), library).total() / 1e9, 3)
        except Exception as error:  # noqa: BLE001  (a FLOP count that fails leaves the column empty)
            print(f'FLOP count failed for {subject.label} {height}x{width}: {error}', file=sys.stderr)
    benchmark.save(args.out, header, rows)
    drawn = benchmark.plot(rows, header, args.out)
    print(f"\n{header['device']} | torch {header['versions']['torch']} | commit {header['commit']} | "
          f"kernel backends used: {header['kernel_backends_used'] or 'none'}")
    table = PrettyTable(benchmark.COLUMNS)
    table.add_rows([[row[key] for key in benchmark.COLUMNS] for row in rows])
    print(table)
    print(f"wrote {', '.join(os.path.join(args.out, name) for name in ('benchmark.json', 'benchmark.csv', *drawn))}")
    return int(any(row['status'] == 'error' for row in rows))


if __name__ == '__main__':
    sys.exit(main())
