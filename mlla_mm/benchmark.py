"""What tools/benchmark.py, tools/benchmark_kernels.py, tools/get_flops.py and the tests share: the timer
(``time_ms``), peak memory, the environment header, the FLOP analyzer, a synthetic mm batch and the benchmark subjects.
mmdet, mmseg, timm and mmengine are imported only inside the functions that need them."""
import importlib.metadata
import inspect
import os
import platform
import threading
from dataclasses import dataclass

import torch

from .models import create_model, get_family, list_families, list_models

REFERENCES = {'swin_t': 'mmdet SwinTransformer, Swin-T', 'convnext_t': 'timm:convnext_tiny',
              'mambaout_t': 'timm:mambaout_tiny'}
VERSIONS = ('torch', 'triton', 'timm', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'mlla_mm', 'psutil')


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
            self.rss = psutil.Process().memory_info
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self.stopped.wait(0.002):
            self.peak = max(self.peak, self.rss().rss)

    def _now(self):
        return torch.cuda.memory_allocated() if self.cuda else self.rss().rss

    def start(self):
        self.base = self._now()
        self.reset()

    def reset(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.peak = self._now()

    def peak_mib(self) -> float:
        return round(((torch.cuda.max_memory_allocated() if self.cuda else self.peak) - self.base) / 2 ** 20, 1)


def environment(device: torch.device) -> dict:
    """mmengine's collect_env, the versions of our stack, the device and the git commit (mmengine's get_git_hash)."""
    from mmengine.utils import get_git_hash
    from mmengine.utils.dl_utils import collect_env
    versions = {d.metadata['Name'].lower(): d.version for d in importlib.metadata.distributions()}
    cpu = next((line.split(':')[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')),
               platform.machine()) if os.path.isfile('/proc/cpuinfo') else platform.machine()
    return dict(device=torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{cpu} ({os.cpu_count()} cores)',
                device_type=device.type, commit=get_git_hash(fallback=None), torch_threads=torch.get_num_threads(),
                versions={**{n: versions.get(n.replace('_', '-'), versions.get(n)) for n in VERSIONS}, 'torch': torch.__version__},
                env={k: str(v) for k, v in collect_env().items() if k != 'PyTorch compiling details'})


def has_kernels(family_name: str) -> bool:
    """Whether a family's models take a kernel ``backend``."""
    return 'backend' in inspect.signature(list_families()[family_name].model_cls).parameters


def synthetic_batch(library: str, batch: int = 2, size=(64, 64), num_classes: int = 3, with_mask: bool = True,
                    device='cpu', seed: int = 0) -> dict:
    """A batch for an mm model's train_step / test_step / data_preprocessor: uint8 images with DetDataSamples
    (mmdet.testing.demo_mm_inputs: random boxes, labels and masks) or SegDataSamples (random label maps)."""
    height, width = (size, size) if isinstance(size, int) else size
    if library == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(batch, image_shapes=(3, height, width), num_classes=num_classes, with_mask=with_mask,
                              device=device)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(seed)
    images, samples = [], []
    for _ in range(batch):
        images.append(torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8).to(device))
        sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             pad_shape=(height, width)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, height, width),
                                                         generator=generator).to(device))
        samples.append(sample)
    return dict(inputs=images, data_samples=samples)


def flop_analyzer(model, shape, library=None):
    """mmengine's FlopAnalyzer (one multiply-add = one FLOP) of one 1 x 3 x H x W image through ``model(x)``
    (library None: a backbone) or an mmdet / mmseg model's tensor forward (``_forward``). Kernel ops count only
    where they run on their PyTorch reference (backend 'torch'), whose matmuls/einsums the tracer sees."""
    from mmengine.analysis import FlopAnalyzer

    class TensorForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.samples = model, None
            if library == 'mmdet':
                from mmdet.structures import DetDataSample
                meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape,
                            scale_factor=(1.0, 1.0))
                self.samples = [DetDataSample(metainfo=meta)]

        def forward(self, x):
            return self.model._forward(x, self.samples)

    analyzer = FlopAnalyzer(model if library is None else TensorForward(), torch.zeros(1, 3, *shape))
    return analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')


@dataclass
class Subject:
    """One line of the results: a registered model, a reference model or an mm config, with its kernel backend."""
    label: str
    kind: str  # 'model' | 'reference' | 'config'
    name: str
    backend: str = None

    def build(self, device, cfg_options=None, backend=None):
        """(model, library or None, inputs(batch, height, width)) on ``device``; kernels on ``backend``."""
        backend = {'backend': backend or self.backend} if self.backend else {}
        if self.kind == 'model':
            model = create_model(self.name, features_only=True, **backend)
        elif self.name == 'swin_t':
            from mmdet.models.backbones import SwinTransformer
            model = SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
        elif self.kind == 'reference':
            import timm
            model = timm.create_model(REFERENCES.get(self.name, self.name)[5:], features_only=True)
        else:
            cfg = load_config(self.name, cfg_options)
            from mmengine.registry import DefaultScope
            cfg.model.backbone.update(backend)
            if cfg.default_scope == 'mmseg':  # pad each case to its own size, not to the recipe's crop
                cfg.model.data_preprocessor.update(size=None, size_divisor=32)
            with DefaultScope.overwrite_default_scope(cfg.default_scope):
                from mlla_mm.mm import REGISTERED_IN
                model = REGISTERED_IN[cfg.default_scope].build(cfg.model).to(device)
            return model, cfg.default_scope, lambda b, h, w: synthetic_batch(  # labels 0 and 1 fit any model
                cfg.default_scope, b, (h, w), 2, getattr(model, 'with_mask', False), device)
        return model.to(device), None, lambda b, h, w: torch.randn(b, 3, h, w, device=device)


def load_config(path, cfg_options=None):
    import mlla_mm.mm  # noqa: F401  registers the backbones
    from mmengine.config import Config
    from mlla_mm.mm.runner import detect_library, resolve_config
    cfg = Config.fromfile(resolve_config(path))
    cfg.merge_from_dict(cfg_options or {})
    cfg.default_scope = detect_library(cfg)
    cfg.model.backbone.init_cfg = None  # speed and FLOPs do not depend on the weights
    return cfg


def known_subjects() -> str:
    return (f'registered models: {", ".join(list_models())}; reference models: {", ".join(REFERENCES)}, '
            'timm:NAME; or an mm config (FILE.py, mmdet::PATH, mmseg::PATH)')


def parse_subjects(items, backends, cfg_options=None) -> list:
    """Subjects of --models (NAME[@BACKEND]); those with kernels once per backend. ValueError for unknown names."""
    from mlla_mm.kernels import BACKENDS
    subjects = []
    for item in items:
        name, _, pinned = item.partition('@')
        if pinned and pinned not in BACKENDS:
            raise ValueError(f'{item!r}: unknown backend {pinned!r}; choose from {", ".join(BACKENDS)}')
        if name in list_models():
            kind, kernels, label = 'model', has_kernels(get_family(name).name), name
        elif name in REFERENCES or name.startswith('timm:'):
            kind, kernels, label = 'reference', False, name
            timm_name = REFERENCES.get(name, name)[5:]
            if name != 'swin_t' and not __import__('timm').is_model(timm_name):
                raise ValueError(f'{item!r}: timm has no model {timm_name!r} (see timm.list_models())')
        elif name.endswith('.py'):
            backbone = load_config(name, cfg_options).model.backbone.type
            kind, kernels = 'config', backbone in list_families() and has_kernels(backbone)
            label = name.rsplit('/', 1)[-1][:-3]
        else:
            raise ValueError(f'unknown model {name!r}; known: {known_subjects()}')
        if pinned and not kernels:
            raise ValueError(f'{item!r}: {name} has no mlla_mm kernels, so no backend to choose')
        for backend in ([pinned] if pinned else backends) if kernels else [None]:
            subjects.append(Subject(f'{label}@{backend}' if backend else label, kind, name, backend))
    return subjects
