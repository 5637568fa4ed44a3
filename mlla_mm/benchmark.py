"""Benchmarks of backbones and mm models (tools/benchmark.py is the CLI): subjects, timing, memory and the report.
tools/benchmark_kernels.py, tools/get_flops.py and tools/ablate.py share its timer, environment header and FLOP
analyzer. mmdet, mmseg, timm and mmengine are imported only inside the functions that need them."""
import csv
import functools
import importlib.metadata
import inspect
import json
import os
import platform
import threading
from collections import namedtuple

import torch

from .models import create_model, get_family, list_families, list_models
from .utils.demo_data import synthetic_batch
from .utils.plot import line_plot

REFERENCES = {'swin_t': 'mmdet SwinTransformer, Swin-T', 'convnext_t': 'timm:convnext_tiny',
              'mambaout_t': 'timm:mambaout_tiny'}
VERSIONS = ('torch', 'triton', 'timm', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'mlla_mm', 'psutil')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
FIELDS = ('model', 'kind', 'backend', 'size', 'pixels', 'batch', 'dtype', 'mode', 'status', 'ms_per_img',
          'img_per_s', 'mem_mib', 'mem_warmup_mib', 'params_m', 'gflops', 'error')
COLUMNS = ('model', 'size', 'batch', 'status', 'ms_per_img', 'img_per_s', 'mem_mib', 'mem_warmup_mib', 'params_m',
           'gflops')
PLOTS = {'throughput.png': ('img_per_s', 'images / s'), 'memory.png': ('mem_mib', 'peak memory above start (MiB)')}


def time_ms(fn, iters: int = 20, warmup: int = 0) -> float:
    """Mean milliseconds per call of ``fn()`` over ``iters`` calls, after ``warmup`` calls, with
    torch.utils.benchmark.Timer (which synchronises the accelerator around the timed loop) on the caller's threads."""
    from torch.utils.benchmark import Timer
    for _ in range(warmup):
        fn()
    return Timer('fn()', globals={'fn': fn}, num_threads=torch.get_num_threads()).timeit(iters).mean * 1e3


class PeakMemory:
    """Peak memory since ``reset()`` in MiB above the level at ``start()``: the CUDA allocator's, or on a CPU the
    resident set size (psutil) sampled every 2 ms by a thread (approximate: freed memory may stay resident)."""

    def __init__(self, device: torch.device):
        self.cuda, self.peak, self.base, self.stopped = device.type == 'cuda', 0, 0, threading.Event()
        if not self.cuda:
            import psutil
            self.rss = lambda: psutil.Process().memory_info().rss
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self.stopped.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def start(self):
        self.base = torch.cuda.memory_allocated() if self.cuda else self.rss()
        self.reset()

    def reset(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self.rss()

    def peak_mib(self) -> float:
        return round(((torch.cuda.max_memory_allocated() if self.cuda else self.peak) - self.base) / 2 ** 20, 1)


def environment(device: torch.device) -> dict:
    """mmengine's collect_env, the versions of our stack, the device and the git commit (mmengine's get_git_hash)."""
    from mmengine.utils import get_git_hash
    from mmengine.utils.dl_utils import collect_env
    versions = {d.metadata['Name'].lower().replace('-', '_'): d.version for d in importlib.metadata.distributions()}
    cpu = platform.machine()
    if os.path.isfile('/proc/cpuinfo'):
        cpu = next((line.split(':')[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')), cpu)
    device_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{cpu} ({os.cpu_count()} cores)'
    return dict(device=device_name, device_type=device.type, commit=get_git_hash(fallback=None),
                torch_threads=torch.get_num_threads(),
                versions={**{name: versions.get(name) for name in VERSIONS}, 'torch': torch.__version__},
                env={k: str(v) for k, v in collect_env().items() if k != 'PyTorch compiling details'})


def flop_analyzer(model, shape, library=None):
    """mmengine's FlopAnalyzer (one multiply-add = one FLOP) of one 1 x 3 x H x W image through ``model(x)``: a
    backbone, or an mm model's tensor-mode forward (a detector's bound to one data sample, as mmdet's get_flops.py
    does, replacing its ``forward``). Kernel ops count only where they run on their PyTorch reference (backend
    'torch'), whose matmuls/einsums the tracer sees."""
    from mmengine.analysis import FlopAnalyzer
    if library == 'mmdet':
        from mmdet.structures import DetDataSample
        meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape, scale_factor=(1., 1.))
        model.forward = functools.partial(model.forward, data_samples=[DetDataSample(metainfo=meta)])
    analyzer = FlopAnalyzer(model, torch.zeros(1, 3, *shape))
    return analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')


# One line of the results: a registered model, a reference model or an mm config, with its kernel backend or None.
Subject = namedtuple('Subject', 'label kind name backend')


def known_subjects() -> str:
    return (f'registered models: {", ".join(list_models())}; reference models: {", ".join(REFERENCES)}, '
            'timm:NAME; or an mm config (FILE.py, mmdet::PATH, mmseg::PATH)')


def kind_of(name: str) -> str:
    """'model', 'reference' or 'config'; ValueError naming the known subjects."""
    if name in list_models():
        return 'model'
    if name in REFERENCES or name.startswith('timm:'):
        timm_name = REFERENCES.get(name, name)[5:]
        if name != 'swin_t' and not __import__('timm').is_model(timm_name):
            raise ValueError(f'timm has no model {timm_name!r} (see timm.list_models())')
        return 'reference'
    if name.endswith('.py') or '::' in name:
        return 'config'
    raise ValueError(f'unknown model {name!r}; known: {known_subjects()}')


def load_config(path, cfg_options=None):
    """An mm config with --cfg-options applied, its library as default_scope and no pretrained backbone."""
    import mlla_mm.mm  # noqa: F401  registers the backbones
    from mmengine.config import Config
    from mlla_mm.mm.runner import detect_library, resolve_config
    cfg = Config.fromfile(resolve_config(path))
    cfg.merge_from_dict(cfg_options or {})
    cfg.default_scope = detect_library(cfg)
    cfg.model.backbone.init_cfg = None  # speed and FLOPs do not depend on the weights
    return cfg


def build_subject(name, cfg_options=None, backend=None):
    """(model, library: 'mmdet' / 'mmseg' for a config, None for a backbone), for benchmark.py and get_flops.py.
    Registered models and references are built ``features_only``; ``backend`` picks the kernels of ours."""
    kind, backend = kind_of(name), {'backend': backend} if backend else {}
    if kind == 'config':
        from mmengine.model import revert_sync_batchnorm
        from mmengine.registry import DefaultScope
        from mlla_mm.mm import REGISTERED_IN
        cfg = load_config(name, cfg_options)
        cfg.model.backbone.update(backend)
        if cfg.default_scope == 'mmseg':  # pad each case to its own size, not to the recipe's crop
            cfg.model.data_preprocessor.update(size=None, size_divisor=32)
        with DefaultScope.overwrite_default_scope(cfg.default_scope):
            return revert_sync_batchnorm(REGISTERED_IN[cfg.default_scope].build(cfg.model)), cfg.default_scope
    if kind == 'model':
        return create_model(name, features_only=True, **backend), None
    if name == 'swin_t':
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7), None
    return __import__('timm').create_model(REFERENCES.get(name, name)[5:], features_only=True), None


def has_kernels(family_name: str) -> bool:
    """Whether a family's models take a kernel ``backend``."""
    family = list_families().get(family_name)
    return family is not None and 'backend' in inspect.signature(family.model_cls).parameters


def parse_subjects(items, backends, cfg_options=None) -> list:
    """Subjects of --models (NAME[@BACKEND]); those with kernels once per backend. ValueError for unknown names."""
    from mlla_mm.kernels import BACKENDS
    subjects = []
    for item in items:
        name, _, pinned = item.partition('@')
        if pinned and pinned not in BACKENDS:
            raise ValueError(f'{item!r}: unknown backend {pinned!r}; choose from {", ".join(BACKENDS)}')
        kind, label = kind_of(name), name
        if kind == 'config':
            kernels, label = has_kernels(load_config(name, cfg_options).model.backbone.type), name[:-3].split('/')[-1]
        else:
            kernels = kind == 'model' and has_kernels(get_family(name).name)
        if pinned and not kernels:
            raise ValueError(f'{item!r}: {name} has no mlla_mm kernels, so no backend to choose')
        for backend in ([pinned] if pinned else backends) if kernels else [None]:
            subjects.append(Subject(f'{label}@{backend}' if backend else label, kind, name, backend))
    return subjects


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
    """CUDA's OutOfMemoryError, Python's MemoryError or the CPU allocator's RuntimeError."""
    return isinstance(error, MemoryError) or isinstance(error, RuntimeError) and any(
        text in str(error).lower() for text in ('out of memory', "can't allocate memory"))


def run_case(subject, height, width, batch, args, memory):
    """Time one subject at one size: its row, with status 'ok', 'OOM' or 'error'."""
    row = dict.fromkeys(FIELDS) | dict(model=subject.label, kind=subject.kind, backend=subject.backend,
                                       size=f'{height}x{width}', pixels=height * width, batch=batch,
                                       dtype=args.dtype, mode=args.mode, status='ok')
    model = None
    try:
        memory.start()
        model, library = build_subject(subject.name, args.cfg_options, subject.backend)
        model = model.to(args.device)
        row['params_m'] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
        data = (synthetic_batch(library, batch, (height, width), 2, getattr(model, 'with_mask', False), args.device)
                if library else torch.randn(batch, 3, height, width, device=args.device))  # labels 0, 1 fit any model
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


def save(out, header, rows):
    """DIR/benchmark.json, and DIR/benchmark.csv with the header as '# key: value' lines."""
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
    os.makedirs(out, exist_ok=True)
    title = (f"{header['args']['mode']} {header['args']['dtype']}, {header['device']}, torch "
             f"{header['versions']['torch']}, commit {str(header['commit'])[:10]}")
    drawn = {}
    for name, (key, y_label) in PLOTS.items():
        series = {label: sorted((r['pixels'], r[key]) for r in rows if r['model'] == label and r.get(key))
                  for label in dict.fromkeys(row['model'] for row in rows)}
        drawn[name] = line_plot(os.path.join(out, name), series, 'pixels per image (H x W)', y_label, title, log=True)
    return drawn


def replot(json_path, out=None):
    """Redraw the plots of a saved benchmark.json (beside it, or into ``out``)."""
    with open(json_path) as f:
        saved = json.load(f)
    return plot(saved['results'], saved['header'], out or os.path.dirname(os.path.abspath(json_path)))

