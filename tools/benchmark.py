#!/usr/bin/env python
"""Throughput and memory of backbones and mm detectors/segmentors against input resolution.

Subjects (--models, comma list; each may end in @BACKEND to pin one kernel backend):
  - a registered mlla_mm model (mlla_mm.list_models(), e.g. mlla_t, vmamba_t), built with num_classes=0 and timed
    through forward_features (all four stages, no classifier), once per backend in --backends;
  - a reference model: swin_t (mmdet's SwinTransformer with Swin-T settings, all four outputs), convnext_t and
    mambaout_t (timm convnext_tiny / mambaout_tiny, forward_features), or timm:NAME for any other timm model; never
    with pretrained weights;
  - an mm config path (detector or segmentor; a file, or mmdet::PATH / mmseg::PATH from the installed library).
    Inference times model.test_step (data preprocessor, forward and post-processing); training times the data
    preprocessor, the model's losses, backward and the optimizer step on synthetic images and targets. When the
    backbone is an mlla_mm one it runs once per backend in --backends.

Every case (subject x size) builds a fresh model, runs --warmup iterations, then --iters timed iterations:
  - time: CUDA events around each timed iteration after a synchronize (CPU: perf_counter); img/s = batch / mean;
  - memory, CUDA: torch.cuda.max_memory_allocated above the allocation at the start of the case (weights, optimizer
    state, activations, workspaces). The peak is reset after warm-up: 'mem_warmup_mib' holds the warm-up peak, which
    includes the first iteration's cuDNN autotuning workspaces (cudnn.benchmark); 'mem_mib' the steady-state peak of
    the timed iterations. CPU: the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs)
    above the resident size at the start of the case; approximate, as freed memory stays resident;
  - params of the timed model; GFLOPs from mmengine.analysis.FlopAnalyzer at batch 1 of that size in fp32, traced
    with every mlla_mm kernel op on its PyTorch reference (see FLOPS_NOTE);
  - an out-of-memory case is recorded as OOM, another failure as 'error' with its message; the run goes on (the exit
    status is 1 when a case failed with an error other than OOM).
Train steps use AdamW (lr 1e-4) for every subject, with a gradient scaler under fp16; the loss of a backbone is the
sum of the means of its outputs.

Writes DIR/benchmark.json (header + rows, rewritten after every case), DIR/benchmark.csv (the header as '# ' lines),
DIR/throughput.png and DIR/memory.png (log-log against pixels per image, one line per model[@backend]).

Examples:
  python tools/benchmark.py --models mlla_test,convnext_t --sizes 64,128 --device cpu --out work_dirs/bench_cpu
  python tools/benchmark.py --models mlla_t,swin_t --backends auto,torch --sizes 224,512,800x1333,1024 \\
      --pixels-per-batch 6422528 --dtype bf16 --mode train --out work_dirs/bench
  python tools/benchmark.py --models configs/mmdet/mask-rcnn_mlla-t_fpn_1x_coco.py --sizes 800x1333 --batch 2
  python tools/benchmark.py --replot work_dirs/bench/benchmark.json
"""
import argparse
import csv
import gc
import json
import os
import re
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

import torch
import torch.nn as nn

import mlla_mm
from mlla_mm.kernels import BACKENDS, backends_used
from mlla_mm.utils.env import environment_report

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
MODES = ('infer', 'train')
REFERENCE_MODELS = {
    'swin_t': "mmdet SwinTransformer, Swin-T (embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7)",
    'convnext_t': 'timm convnext_tiny',
    'mambaout_t': 'timm mambaout_tiny',
}
TIMM_REFERENCES = {'convnext_t': 'convnext_tiny', 'mambaout_t': 'mambaout_tiny'}
FLOPS_NOTE = ('GFLOPs: mmengine.analysis.FlopAnalyzer at batch 1, fp32, one multiply-add = one FLOP; convolutions, '
              'linear layers, matmuls/einsums and norms are counted, other elementwise ops are not. mlla_mm kernel '
              'ops are traced on their PyTorch reference: their matmuls/einsums are counted (MLLA linear attention: '
              'q.mean(k), k^T v, q (k^T v)), their elementwise work is not (VMamba selective scan and cross-scan '
              'count as zero, unlike the analytic scan FLOPs of upstream VMamba).')
FIELDS = ('model', 'kind', 'name', 'backend', 'size', 'height', 'width', 'pixels', 'batch', 'dtype', 'mode',
          'channels_last', 'status', 'ms_per_img', 'img_per_s', 'ms_per_iter', 'ms_per_iter_std', 'mem_mib',
          'mem_warmup_mib', 'params_m', 'gflops', 'error')
JSON_NAME, CSV_NAME = 'benchmark.json', 'benchmark.csv'
DEFAULT_OUT = 'work_dirs/benchmark'
PLOTS = {'throughput.png': ('img_per_s', 'images / s'), 'memory.png': ('mem_mib', None)}


# ----------------------------------------------------------------------------------------------- parsing the CLI
def parse_sizes(text: str):
    """'224,512,800x1333' -> [(224, 224), (512, 512), (800, 1333)] (S is S x S, HxW is height x width)."""
    sizes = []
    for item in text.split(','):
        match = re.fullmatch(r'\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?', item)
        if not match or int(match.group(1)) == 0 or (match.group(2) and int(match.group(2)) == 0):
            raise argparse.ArgumentTypeError(
                f'bad size {item!r} in {text!r}: use a comma list of S or HxW with positive integers, '
                f'e.g. 224,512,800x1333')
        height = int(match.group(1))
        sizes.append((height, int(match.group(2) or height)))
    return sizes


def parse_list(text: str):
    items = [item.strip() for item in text.split(',') if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f'expected a comma list, got {text!r}')
    return items


def parse_backends(text: str):
    backends = parse_list(text)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise argparse.ArgumentTypeError(f'unknown backend(s) {unknown}; choose from {", ".join(BACKENDS)}')
    return backends


def positive_int(text: str):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
    return value


def build_parser():
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', type=parse_list,
                        help='comma list of subjects: registered mlla_mm models (e.g. mlla_t, vmamba_t), reference '
                             f'models ({", ".join(REFERENCE_MODELS)}, timm:NAME) or mm config paths; '
                             'NAME@BACKEND pins one kernel backend')
    parser.add_argument('--backends', type=parse_backends, default=['auto'],
                        help=f'kernel backends ({", ".join(BACKENDS)}) for every subject that has kernels and no '
                             '@BACKEND (default: auto)')
    parser.add_argument('--sizes', type=parse_sizes, default=[(224, 224)],
                        help='comma list of input sizes, S (square) or HxW, e.g. 224,512,800x1333,1024 '
                             '(default: 224)')
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument('--batch', type=positive_int, help='images per batch at every size (default: 1)')
    batch.add_argument('--pixels-per-batch', type=positive_int,
                       help='constant pixels per batch: batch = max(1, round(P / (H * W))) at each size')
    parser.add_argument('--dtype', choices=tuple(DTYPES), default='fp32',
                        help='fp32, or fp16/bf16 autocast (default: fp32)')
    parser.add_argument('--channels-last', action='store_true',
                        help='channels_last model and inputs (backbone and reference subjects; configs keep their '
                             'data preprocessor\'s layout and record channels_last=False)')
    parser.add_argument('--mode', choices=MODES, default='infer',
                        help='infer: no_grad forward (configs: test_step with post-processing); train: forward, '
                             'backward and AdamW step (default: infer)')
    parser.add_argument('--warmup', type=int, default=10,
                        help='untimed iterations per case before timing; their memory peak is reported apart '
                             '(default: 10)')
    parser.add_argument('--iters', type=positive_int, default=20, help='timed iterations per case (default: 20)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='torch device (default: cuda when available, else cpu)')
    parser.add_argument('--cudnn-benchmark', action=argparse.BooleanOptionalAction, default=True,
                        help='torch.backends.cudnn.benchmark; its autotuning workspaces land in the warm-up memory '
                             'peak (default: on)')
    parser.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='key=value overrides for every config subject, e.g. model.backbone.arch=test')
    parser.add_argument('--out',
                        help=f'output folder for {JSON_NAME}, {CSV_NAME} and the PNG plots '
                             f'(default: {DEFAULT_OUT}; with --replot: beside the JSON)')
    parser.add_argument('--replot', metavar='JSON',
                        help='only re-plot a saved benchmark.json, without running anything')
    return parser


# ------------------------------------------------------------------------------------------------------ subjects
@dataclass
class Subject:
    label: str  # model[@backend]: the line in the plots
    kind: str  # 'model' | 'reference' | 'config'
    name: str  # registered name, reference name or config path
    backend: str = None  # kernel backend, None when the subject has no mlla_mm kernels


def known_subjects():
    return (f'registered models: {", ".join(mlla_mm.list_models())}; reference models: '
            f'{", ".join(REFERENCE_MODELS)}, timm:NAME; or an mm config path (FILE.py, mmdet::PATH, mmseg::PATH)')


def load_config(path: str, cfg_options: dict):
    from mmengine.config import Config

    from mlla_mm.mm.runner import resolve_config
    cfg = Config.fromfile(resolve_config(path))
    cfg.merge_from_dict(cfg_options)
    if cfg.get('default_scope') not in ('mmdet', 'mmseg'):
        raise ValueError(f"config {path!r}: default_scope is {cfg.get('default_scope')!r}; the benchmark builds "
                         "mmdet and mmseg models (default_scope='mmdet' or 'mmseg')")
    return cfg


def config_has_kernels(cfg) -> bool:
    import mlla_mm.mm
    return cfg.model.get('backbone', {}).get('type') in mlla_mm.mm.BACKBONES


def resolve_subjects(models, backends, cfg_options):
    """Turn --models into subjects, one per backend for those with kernels; raise ValueError for unknown names."""
    subjects = []
    for item in models:
        name, _, pinned = item.partition('@')
        if pinned and pinned not in BACKENDS:
            raise ValueError(f'{item!r}: unknown backend {pinned!r}; choose from {", ".join(BACKENDS)}')
        if name in mlla_mm.list_models():
            kind, has_kernels = 'model', True
        elif name in REFERENCE_MODELS or name.startswith('timm:'):
            kind, has_kernels = 'reference', False
            if name.startswith('timm:'):
                import timm
                if not timm.is_model(name[len('timm:'):]):
                    raise ValueError(f'{item!r}: timm has no model {name[len("timm:"):]!r} (see timm.list_models())')
        elif name.endswith('.py'):
            kind, has_kernels = 'config', config_has_kernels(load_config(name, cfg_options))
        else:
            raise ValueError(f'unknown model {name!r}; known: {known_subjects()}')
        if pinned and not has_kernels:
            raise ValueError(f'{item!r}: {name} has no mlla_mm kernels, so no backend to choose')
        label = os.path.splitext(os.path.basename(name))[0] if kind == 'config' else name
        for backend in ([pinned] if pinned else backends) if has_kernels else [None]:
            subjects.append(Subject(f'{label}@{backend}' if backend else label, kind, name, backend))
    return subjects


# ------------------------------------------------------------------------------------- models, inputs and steps
class ForwardFeatures(nn.Module):
    """Calls a timm-style model's forward_features: the trunk without the classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def build_reference(name: str) -> nn.Module:
    if name == 'swin_t':
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                               drop_path_rate=0.2, out_indices=(0, 1, 2, 3))
    import timm
    timm_name = TIMM_REFERENCES.get(name, name[len('timm:'):])
    return ForwardFeatures(timm.create_model(timm_name, pretrained=False, num_classes=0))


class BackboneRunner:
    """A backbone or reference model fed random images; the training loss is the sum of its outputs' means."""

    def __init__(self, subject: Subject, backend, device, channels_last):
        if subject.kind == 'model':
            self.model = ForwardFeatures(mlla_mm.create_model(subject.name, backend=backend, num_classes=0))
        else:
            self.model = build_reference(subject.name)
        self.model.to(device)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def inputs(self, batch, height, width):
        return torch.randn(batch, 3, height, width, device=self.device).contiguous(memory_format=self.memory_format)

    def infer(self, images):
        return self.model(images)

    def loss(self, images):
        outputs = self.model(images)
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else outputs
        return sum(output.float().mean() for output in outputs)

    def flop_module(self, images):
        return self.model, images


class ConfigRunner:
    """An mmdet/mmseg model built from its config, fed synthetic images and targets (DetDataSample / SegDataSample).

    Segmentors pad training batches to a multiple of 32 instead of the config's crop size, so that every case runs
    at its own size.
    """

    channels_last = False

    def __init__(self, subject: Subject, backend, device, cfg_options):
        import mlla_mm.mm  # noqa: F401  (registers the mlla_mm backbones)
        from mmengine.registry import init_default_scope

        cfg = load_config(subject.name, cfg_options)
        self.scope = cfg.default_scope
        if self.scope == 'mmdet':
            from mmdet.registry import MODELS
            from mmdet.utils import register_all_modules
        else:
            from mmseg.registry import MODELS
            from mmseg.utils import register_all_modules
        register_all_modules(init_default_scope=False)
        init_default_scope(self.scope)
        if backend is not None:
            cfg.model.backbone.backend = backend
        if self.scope == 'mmseg':
            cfg.model.data_preprocessor.size = None
            cfg.model.data_preprocessor.size_divisor = 32
        self.num_classes = min(find_values(cfg.model.to_dict(), 'num_classes'), default=2)
        self.model = MODELS.build(cfg.model).to(device)
        self.device = device

    def inputs(self, batch, height, width):
        if self.scope == 'mmdet':
            from mmdet.testing import demo_mm_inputs
            return demo_mm_inputs(batch, image_shapes=(3, height, width), num_classes=max(2, self.num_classes),
                                  with_mask=self.model.with_mask, device=self.device)
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        samples = []
        for _ in range(batch):
            sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width)))
            sample.gt_sem_seg = PixelData(
                data=torch.randint(0, self.num_classes, (1, height, width), device=self.device))
            samples.append(sample)
        images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, device=self.device)
                  for _ in range(batch)]
        return dict(inputs=images, data_samples=samples)

    def infer(self, data):
        return self.model.test_step(data)

    def loss(self, data):
        data = self.model.data_preprocessor(data, True)
        loss, _ = self.model.parse_losses(self.model(**data, mode='loss'))
        return loss

    def flop_module(self, data):
        data = self.model.data_preprocessor(data, False)
        return TensorForward(self.model, data['data_samples']), data['inputs']


class TensorForward(nn.Module):
    """An mm model's raw forward (mode='tensor') on fixed data samples, for the FLOP counter."""

    def __init__(self, model, data_samples):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs):
        return self.model._forward(inputs, self.data_samples)


def find_values(tree, key):
    """Every value of ``key`` in nested dicts/lists."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            if name == key and isinstance(value, int):
                yield value
            else:
                yield from find_values(value, key)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from find_values(value, key)


def build_runner(subject: Subject, backend, device, args):
    if subject.kind == 'config':
        return ConfigRunner(subject, backend, device, args.cfg_options)
    return BackboneRunner(subject, backend, device, args.channels_last)


def make_step(runner, data, mode, dtype, device):
    """One benchmark iteration as a closure: an inference forward, or forward + backward + optimizer step."""
    amp_dtype = DTYPES[dtype]

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)

    if mode == 'infer':
        runner.model.eval()

        def step():
            with torch.no_grad(), autocast():
                runner.infer(data)
        return step

    runner.model.train()
    optimizer = torch.optim.AdamW([p for p in runner.model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step():
        with autocast():
            loss = runner.loss(data)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return step


# ------------------------------------------------------------------------------------------- timing and memory
class PeakMemory:
    """Peak memory of one case above its starting point: the CUDA allocator's peak, or the process's peak RSS."""

    def __init__(self, device: torch.device):
        self.device = device

    def start_case(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = read_proc_status('VmRSS')
        self.reset_peak()

    def reset_peak(self):
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # resets VmHWM to the current RSS

    def peak_mib(self):
        if self.device.type == 'cuda':
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = read_proc_status('VmHWM')
        return round((peak - self.base) / 2 ** 20, 1)


def read_proc_status(field: str) -> int:
    """A memory field of /proc/self/status in bytes."""
    with open('/proc/self/status') as f:
        return int(re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.MULTILINE).group(1)) * 1024


def cpu_memory_unavailable():
    """Why CPU peak memory cannot be measured here, or None."""
    try:
        read_proc_status('VmHWM')
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except (OSError, AttributeError) as error:
        return f'/proc/self/status or /proc/self/clear_refs unusable ({error})'
    return None


def time_iterations(step, iters, device):
    """Per-iteration wall times in ms, synchronised with the device."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ('out of memory' in message or "can't allocate memory" in message)


def release_memory(device):
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def run_case(subject: Subject, height, width, batch, args, device, memory):
    """Time one subject at one size; returns its row (status 'ok', 'OOM' or 'error')."""
    row = dict.fromkeys(FIELDS)
    row.update(model=subject.label, kind=subject.kind, name=subject.name, backend=subject.backend,
               size=f'{height}x{width}', height=height, width=width, pixels=height * width, batch=batch,
               dtype=args.dtype, mode=args.mode, channels_last=args.channels_last and subject.kind != 'config',
               status='ok')
    runner = step = None
    release_memory(device)
    try:
        if memory is not None:
            memory.start_case()
        runner = build_runner(subject, subject.backend, device, args)
        row['params_m'] = round(sum(p.numel() for p in runner.model.parameters()) / 1e6, 3)
        step = make_step(runner, runner.inputs(batch, height, width), args.mode, args.dtype, device)
        for _ in range(args.warmup):
            step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if memory is not None:
            row['mem_warmup_mib'] = memory.peak_mib() if args.warmup else None
            memory.reset_peak()
        times = time_iterations(step, args.iters, device)
        if memory is not None:
            row['mem_mib'] = memory.peak_mib()
        mean = sum(times) / len(times)
        row.update(ms_per_iter=round(mean, 3), ms_per_img=round(mean / batch, 3),
                   img_per_s=round(batch * 1e3 / mean, 2),
                   ms_per_iter_std=round((sum((t - mean) ** 2 for t in times) / len(times)) ** 0.5, 3))
    except Exception as error:  # noqa: BLE001  (recorded in the row; the run goes on)
        row['status'] = 'OOM' if is_out_of_memory(error) else 'error'
        row['error'] = f'{type(error).__name__}: {error}'.splitlines()[0][:500]
    del runner, step
    release_memory(device)
    return row


def count_gflops(subject: Subject, height, width, device, args):
    """GFLOPs of one image of that size (see FLOPS_NOTE); kernel ops run on their PyTorch reference."""
    from mmengine.analysis import FlopAnalyzer

    backend = 'torch' if subject.backend else None
    runner = build_runner(subject, backend, device, args)
    runner.model.eval()
    module, inputs = runner.flop_module(runner.inputs(1, height, width))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        analyzer = FlopAnalyzer(module, inputs)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return round(analyzer.total() / 1e9, 3)


# ------------------------------------------------------------------------------------------------------ outputs
def memory_note(device: torch.device):
    if device.type == 'cuda':
        return ('mem_mib: torch.cuda.max_memory_allocated during the timed iterations above the allocation at the '
                'start of the case (weights, optimizer state, activations); mem_warmup_mib: the same during warm-up, '
                'including the cuDNN autotuning workspaces of the first iteration')
    return ('mem_mib: peak resident set size (VmHWM) of the process during the timed iterations above its resident '
            'size at the start of the case; mem_warmup_mib: the same during warm-up; approximate (freed memory '
            'stays resident and is reused)')


def save_results(out_dir, header, rows):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, JSON_NAME), 'w') as f:
        json.dump(dict(header=header, results=rows), f, indent=1)
    with open(os.path.join(out_dir, CSV_NAME), 'w', newline='') as f:
        for key, value in header.items():
            f.write(f'# {key}: {json.dumps(value)}\n')
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows):
    columns = (('model', 'model'), ('size', 'size'), ('batch', 'batch'), ('status', 'status'),
               ('ms_per_img', 'ms/img'), ('img_per_s', 'img/s'), ('mem_mib', 'mem MiB'),
               ('mem_warmup_mib', 'warm-up MiB'), ('params_m', 'params M'), ('gflops', 'GFLOPs'))
    cells = [[title for _, title in columns]]
    for row in rows:
        cells.append(['' if row.get(key) is None else str(row[key]) for key, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ['  '.join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells]
    lines.insert(1, '  '.join('-' * width for width in widths))
    return '\n'.join(lines)


def plot_results(rows, header, out_dir):
    """Write the PNG plots; returns {file name: labels of the lines drawn}."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    args = header.get('args', {})
    memory_label = ('peak CUDA memory, steady state (MiB)' if header.get('device_type') == 'cuda'
                    else 'peak RSS increase, steady state (MiB)')
    drawn = {}
    os.makedirs(out_dir, exist_ok=True)
    for file_name, (key, y_label) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 5))
        labels = []
        for label in dict.fromkeys(row['model'] for row in rows):
            points = sorted((row['pixels'], row[key]) for row in rows
                            if row['model'] == label and row['status'] == 'ok' and row.get(key))
            if points:
                ax.plot(*zip(*points), marker='o', label=label)
                labels.append(label)
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('pixels per image (H x W)')
        ax.set_ylabel(y_label or memory_label)
        ax.set_title(f"{args.get('mode')} {args.get('dtype')}, {header.get('device')}", fontsize=9)
        commit = (header.get('commit') or 'unknown')[:10] + (' (dirty)' if header.get('dirty') else '')
        fig.text(0.01, 0.01, f'commit {commit}, torch {header.get("versions", {}).get("torch")}', fontsize=7)
        ax.grid(True, which='both', alpha=0.3)
        if labels:
            ax.legend(fontsize=8)
        fig.savefig(os.path.join(out_dir, file_name), dpi=120, bbox_inches='tight')
        plt.close(fig)
        drawn[file_name] = labels
    return drawn


def replot(json_path, out_dir):
    with open(json_path) as f:
        saved = json.load(f)
    return plot_results(saved['results'], saved['header'], out_dir or os.path.dirname(os.path.abspath(json_path)))


# ---------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replot:
        if not os.path.isfile(args.replot):
            parser.error(f'--replot: {args.replot!r} not found')
        for file_name, labels in replot(args.replot, args.out).items():
            print(f'{file_name}: {", ".join(labels) or "no successful case"}')
        return 0
    if not args.models:
        parser.error(f'--models is required; {known_subjects()}')
    if args.warmup < 0:
        parser.error('--warmup must be >= 0')
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f'--device: {error}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: CUDA is not available on this machine')
    try:
        subjects = resolve_subjects(args.models, args.backends, args.cfg_options)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    args.out = args.out or DEFAULT_OUT
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.manual_seed(0)

    from tqdm import tqdm

    reason = cpu_memory_unavailable() if device.type == 'cpu' else None
    memory = None if reason else PeakMemory(device)
    command = shlex.join(['python', 'tools/benchmark.py', *(sys.argv[1:] if argv is None else argv)])
    header = dict(environment_report(device), args=vars(args), command=command,
                  date=datetime.now(timezone.utc).isoformat(timespec='seconds'),
                  memory_note=memory_note(device) if memory else f'memory not measured: {reason}',
                  flops_note=FLOPS_NOTE if not args.no_flops else 'FLOPs not counted (--no-flops)')
    cases = [(subject, size) for subject in subjects for size in args.sizes]
    rows = []
    with tqdm(cases, desc='benchmark', unit='case', dynamic_ncols=True) as bar:
        for subject, (height, width) in bar:
            batch = (max(1, round(args.pixels_per_batch / (height * width))) if args.pixels_per_batch
                     else args.batch or 1)
            bar.set_postfix_str(f'{subject.label} {height}x{width} x{batch}')
            row = run_case(subject, height, width, batch, args, device, memory)
            if row['status'] != 'ok':
                bar.write(f"{subject.label} {height}x{width}: {row['status']}: {row['error']}")
            rows.append(row)
            save_results(args.out, header, rows)
    # Taken before the FLOP count, which runs every kernel op on its PyTorch reference.
    header['kernel_backends_used'] = backends_used()
    if not args.no_flops:
        gflops = {}
        for row, (subject, (height, width)) in zip(tqdm(rows, desc='FLOPs', unit='case', dynamic_ncols=True), cases):
            key = (subject.kind, subject.name, height, width)
            if key not in gflops:
                try:
                    gflops[key] = count_gflops(subject, height, width, device, args)
                except Exception as error:  # noqa: BLE001  (a FLOP count that fails leaves the column empty)
                    print(f'FLOP count failed for {subject.label} {height}x{width}: {type(error).__name__}: {error}',
                          file=sys.stderr)
                    gflops[key] = None
                release_memory(device)
            row['gflops'] = gflops[key]
    save_results(args.out, header, rows)
    drawn = plot_results(rows, header, args.out)

    commit = (header['commit'] or 'unknown') + (' (dirty)' if header['dirty'] else '')
    print(f"\n{header['device']} | torch {header['versions']['torch']} | {args.dtype} {args.mode} | "
          f"commit {commit}\n{header['memory_note']}\n{header['flops_note']}\n"
          f"kernel backends used: {header['kernel_backends_used'] or 'none'}\n")
    print(format_table(rows))
    print(f"\nwrote {', '.join(os.path.join(args.out, name) for name in (JSON_NAME, CSV_NAME, *drawn))}")
    return 1 if any(row['status'] == 'error' for row in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
